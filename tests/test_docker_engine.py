"""Guide step 2.2: engine facts from captures and from the real daemon, and the suite's checks."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
from dockerlab import client_or_skip, run_suite, second_dockerd
from hosts_support import LocalAsRemote

from pytest_gpuhost.criteria.toolkit import daemon_reload_risk
from pytest_gpuhost.docker.client import Endpoint, diagnose_permission
from pytest_gpuhost.facts.docker_engine import (
    EngineFacts,
    SocketInfo,
    daemon_pids,
    find_daemon_process,
    parse_engine,
    read_socket,
    read_socket_on,
)
from pytest_gpuhost.facts.toolkit import RUNTIME_CONFIG, ConfigFile, ToolInfo, ToolkitFacts
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.versions import version_tuple

DATA = Path(__file__).parent / "data"
SUITE = "test_step_2_2_docker.py"


def h100_engine(**changes: object) -> EngineFacts:
    """The H100 host's `docker info` with this machine's `docker version`."""
    version = json.loads((DATA / "docker" / "version-20.10.24.json").read_text())
    info = json.loads((DATA / "h100" / "docker-info.json").read_text())
    engine = parse_engine(version, info, docker_host=None, sdk_version="7.1.0")
    return dataclasses.replace(engine, **changes)  # type: ignore[arg-type]


def test_engine_facts_from_captures() -> None:
    engine = h100_engine()
    assert engine.engine_version == "20.10.24+dfsg1"
    assert engine.api_version == "1.41"
    assert engine.containerd_version == "1.6.20~ds1"
    assert engine.runc_version == "1.1.5+ds1"
    assert (engine.cgroup_driver, engine.cgroup_version) == ("cgroupfs", "2")
    assert set(engine.runtimes) == {"io.containerd.runc.v2", "io.containerd.runtime.v1.linux", "runc"}
    assert engine.default_runtime == "runc"
    assert not engine.rootless and not engine.remote
    assert engine.cdi_spec_dirs is None  # Docker 20.10 knows no CDI
    props = engine.properties()
    assert props["gpuhost.docker.engine"] == "20.10.24+dfsg1"
    assert props["gpuhost.docker.cgroup_version"] == "2"
    assert props["gpuhost.docker.rootless"] == "false"
    assert "cgroupfs v2" in engine.summary()


def test_engine_versions_fall_back_to_info_commits() -> None:
    info = json.loads((DATA / "h100" / "docker-info.json").read_text())
    engine = parse_engine({}, info, docker_host="tcp://gpu-1:2376", sdk_version=None)
    assert engine.engine_version == "20.10.24+dfsg1"
    assert engine.containerd_version == "1.6.20~ds1-1+deb12u3"
    assert engine.runc_version == "1.1.5+ds1-1+deb12u1"
    assert engine.remote


def test_rootless_and_cdi_from_info() -> None:
    engine = parse_engine(
        {"Version": "28.3.0"},
        {
            "SecurityOptions": ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"],
            "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"],
        },
        docker_host="unix:///run/user/1000/docker.sock",
        sdk_version="7.1.0",
    )
    assert engine.rootless
    assert engine.cdi_spec_dirs == ("/etc/cdi", "/var/run/cdi")
    assert not engine.remote


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20.10.24+dfsg1", (20, 10, 24)),
        ("v19.03", (19, 3)),
        ("28.2.2", (28, 2, 2)),
        ("12.4", (12, 4)),  # a driver's CUDA version (image requirements use the same parser)
        ("580.159.04", (580, 159, 4)),
        ("Docker version 20.10.24, build 297e128", (20, 10, 24)),
        ("dev", None),
        (None, None),
    ],
)
def test_version_tuple(text: str | None, expected: tuple[int, ...] | None) -> None:
    assert version_tuple(text) == expected


@pytest.fixture
def unix_socket() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="ghs-", dir="/tmp")
    path = os.path.join(folder, "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    try:
        yield path
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_socket_mode_666_is_world_writable(unix_socket: str) -> None:
    os.chmod(unix_socket, 0o666)
    info = read_socket(unix_socket)
    assert info.exists and info.is_socket
    assert info.world_writable
    assert info.mode_text == "0666"
    os.chmod(unix_socket, 0o660)
    info = read_socket(unix_socket)
    assert not info.world_writable
    assert info.owner is not None and info.owner in info.describe()


def test_missing_socket() -> None:
    info = read_socket("/nonexistent/docker.sock")
    assert not info.exists and not info.world_writable


def _fake_process(root: Path, pid: int, comm: str, argv: list[str], exe: str | None = None) -> None:
    folder = root / "proc" / str(pid)
    folder.mkdir(parents=True)
    (folder / "comm").write_text(comm + "\n")
    (folder / "cmdline").write_text("\0".join(argv) + "\0")
    if exe:
        (folder / "exe").symlink_to(exe)


def test_snap_daemon_found_through_proc(tmp_path: Path) -> None:
    _fake_process(
        tmp_path, 812, "dockerd", ["dockerd", "--group", "docker"], exe="/snap/docker/3221/bin/dockerd"
    )
    _fake_process(tmp_path, 900, "bash", ["bash"])
    host = LocalHost(root=tmp_path)
    process = find_daemon_process(host, "/var/run/docker.sock")
    assert process is not None and process.pid == 812
    assert process.executable == "/snap/docker/3221/bin/dockerd"
    engine = h100_engine(process=process)
    evidence = engine.snap_evidence()
    assert evidence is not None and "/snap/docker/3221/bin/dockerd" in evidence


def test_snap_root_dir_is_evidence_too() -> None:
    engine = h100_engine(docker_root_dir="/var/snap/docker/common/var-lib-docker")
    assert engine.snap_evidence() == "DockerRootDir is /var/snap/docker/common/var-lib-docker"
    assert h100_engine().snap_evidence() is None


def test_daemon_chosen_by_socket(tmp_path: Path) -> None:
    """Two daemons: the one listening on DOCKER_HOST's socket wins; its --config-file is read."""
    _fake_process(
        tmp_path, 10, "dockerd", ["/usr/bin/dockerd", "-H", "fd://", "--containerd=/run/containerd.sock"]
    )
    _fake_process(
        tmp_path,
        20,
        "dockerd",
        ["/usr/bin/dockerd", "--host=unix:///tmp/x/docker.sock", "--config-file", "/tmp/x/daemon.json"],
    )
    host = LocalHost(root=tmp_path)
    second = find_daemon_process(host, "/tmp/x/docker.sock")
    assert second is not None and second.pid == 20 and second.config_file == "/tmp/x/daemon.json"
    default = find_daemon_process(host, "/var/run/docker.sock")
    assert default is not None and default.pid == 10 and default.config_file is None
    assert find_daemon_process(host, None) is None  # a TCP daemon runs elsewhere


def test_no_daemon_process_visible(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    assert find_daemon_process(LocalHost(root=tmp_path), "/var/run/docker.sock") is None


# -- the suite against real daemons -----------------------------------------------------------


def test_suite_passes_against_this_daemon(pytester: pytest.Pytester) -> None:
    """Versions appear as metric lines and as JUnit testsuite properties."""
    client = client_or_skip()
    result = run_suite(pytester, SUITE, args=("--junitxml=report.xml",))
    result.assert_outcomes(passed=6)
    engine = client.version()["Version"]
    result.stdout.fnmatch_lines(
        [f"*gpuhost.metric docker.engine={engine}", "*gpuhost.metric docker.containerd=*"]
    )
    result.stdout.fnmatch_lines(["*gpuhost.metric docker.socket_mode=0660*"])
    report = ElementTree.parse(pytester.path / "report.xml")
    properties = {p.get("name"): p.get("value") for p in report.iter("property")}
    assert properties["gpuhost.docker.engine"] == engine
    assert properties["gpuhost.docker.rootless"] == "false"
    assert {"gpuhost.docker.runc", "gpuhost.docker.containerd", "gpuhost.docker.sdk"} <= set(properties)


def test_unreachable_daemon_fails_one_check_and_skips_the_rest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only daemon.json is still checked without a daemon: a broken one is why a daemon does not start."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = run_suite(pytester, SUITE)
    result.assert_outcomes(failed=1, passed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: no Docker daemon answers at DOCKER_HOST=unix:///nonexistent/docker.sock*",
            "*CAUSE: DOCKER_HOST points to a daemon that is not running or not there*",
            "*FIX:*`unset DOCKER_HOST` to use the local daemon at unix:///var/run/docker.sock*",
            "*PASSED*test_daemon_json_parses*",
            "*SKIPPED*needs docker: test_docker_daemon_answers failed: no Docker daemon answers*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_broken_daemon_json_is_named_when_the_daemon_is_down(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "etc" / "docker").mkdir(parents=True)
    (root / "etc" / "docker" / "daemon.json").write_text(
        '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}},}'
    )
    pytester.makeconftest(
        f"""
from pytest_gpuhost.hosts.host import LocalHost

def pytest_gpuhost_make_host(config):
    return LocalHost(root={str(root)!r})
"""
    )
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = run_suite(pytester, SUITE, args=("-k", "daemon_json or daemon_answers"))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: /etc/docker/daemon.json is not valid JSON: *line 1*",
            "*CAUSE: a hand edit broke the file: the daemon refuses to start*",
            "*FIX:   fix the JSON (`python3 -m json.tool /etc/docker/daemon.json` shows where)*",
        ]
    )


def test_world_writable_socket_of_a_real_daemon_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A throw-away daemon whose socket is chmod 666: the security check names the fix."""
    with second_dockerd({}) as daemon:
        os.chmod(daemon.socket, 0o666)
        monkeypatch.setenv("DOCKER_HOST", daemon.docker_host)
        result = run_suite(pytester, SUITE)
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: the Docker socket is writable by every user: *docker.sock (mode 0666*",
            "*CAUSE: access to the Docker socket equals root*",
            "*FIX:   `sudo chmod 660 *docker.sock && sudo chown root:docker *",
        ]
    )


def test_systemd_cgroups_with_the_hook_warn() -> None:
    """NVIDIA's known issue: systemd cgroup driver + the legacy hook; cgroupfs or no toolkit is fine."""
    hook = ToolInfo("nvidia-container-runtime-hook", True, "1.17.8")
    toolkit = ToolkitFacts(
        tools={hook.name: hook},
        daemon_config=ConfigFile("/etc/docker/daemon.json", exists=False),
        runtime_config=ConfigFile(
            RUNTIME_CONFIG, exists=True, data={"nvidia-container-runtime": {"mode": "legacy"}}
        ),
    )
    risk = daemon_reload_risk(h100_engine(cgroup_driver="systemd"), toolkit)
    assert risk is not None
    assert "systemd cgroup driver (cgroup v2)" in risk.found and "legacy mode" in risk.found
    assert "Failed to initialize NVML: Unknown Error" in risk.cause
    assert '"exec-opts": ["native.cgroupdriver=cgroupfs"]' in risk.fix
    assert "nvidia-ctk cdi generate" in risk.fix
    assert daemon_reload_risk(h100_engine(), toolkit) is None  # cgroupfs
    no_toolkit = dataclasses.replace(toolkit, tools={hook.name: ToolInfo(hook.name, False)})
    assert daemon_reload_risk(h100_engine(cgroup_driver="systemd"), no_toolkit) is None
    registered = h100_engine(cgroup_driver="systemd", runtimes={"nvidia": "nvidia-container-runtime"})
    assert daemon_reload_risk(registered, no_toolkit) is not None


# -- a user who may not use the daemon --------------------------------------------------------


@pytest.fixture
def unprivileged_user() -> Iterator[tuple[int, int]]:
    """A throw-away user with no docker group; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd and setpriv are needed")
    name = f"ghtest-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        import pwd

        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.mark.parametrize(
    ("in_docker_group", "listed"),
    [(False, False), (True, True), (False, True)],
    ids=["not-in-docker-group", "in-docker-group", "added-but-not-logged-in-again"],
)
def test_user_outside_docker_group_gets_a_diagnosis(
    unprivileged_user: tuple[int, int], in_docker_group: bool, listed: bool
) -> None:
    """pytest --gpuhost as an ordinary user against the real socket (root:docker, mode 660).

    The child keeps CAP_DAC_READ_SEARCH only so that it can run this interpreter, which lives
    under /root; it grants reading files, never writing them, and connecting to a unix socket
    needs write permission, so the daemon's socket is judged by the user's own groups.
    """
    client_or_skip()
    sock = read_socket("/var/run/docker.sock")
    if not sock.exists or sock.world_writable or sock.group is None:
        pytest.skip("needs the default socket, owned by a group and not world-writable")
    import grp
    import pwd

    uid, gid = unprivileged_user
    user = pwd.getpwuid(uid).pw_name
    if listed:  # in /etc/group; without in_docker_group this login session predates it
        subprocess.run(["gpasswd", "-a", user, sock.group], check=True, capture_output=True)
    groups = str(grp.getgrnam(sock.group).gr_gid) if in_docker_group else None
    workdir = Path(tempfile.mkdtemp(prefix="ghu-", dir="/tmp"))
    try:
        workdir.chmod(0o777)
        suite = Path(__file__).resolve().parent.parent / "suites" / SUITE
        shutil.copy(suite, workdir / SUITE)
        argv = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            sys.executable,
            "-m",
            "pytest",
            "--gpuhost",
            "-p",
            "pytest_gpuhost.fixtures.docker",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "-k",
            "test_docker_daemon_answers or test_docker_versions",
            SUITE,
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        }
        proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    output = proc.stdout + proc.stderr
    if in_docker_group:
        assert proc.returncode == 0, output
        assert "2 passed" in output
        return
    assert proc.returncode == 1, output
    assert (
        "FOUND: permission denied on the Docker socket (unix:///var/run/docker.sock): "
        f"/var/run/docker.sock is owner {sock.owner}, group {sock.group}, mode {sock.mode_text}"
    ) in output
    if listed:
        assert (
            f"CAUSE: user {user} was added to group {sock.group}, but this login session started before"
            in output
        )
        assert f"FIX:   log out and in again, or `newgrp {sock.group}`" in output
        assert "usermod" not in output
    else:
        assert f"CAUSE: user {user} is not in the socket's group `{sock.group}`" in output
        assert f"sudo usermod -aG {sock.group} {user}" in output
    assert "needs docker: test_docker_daemon_answers failed: permission denied" in output
    assert "1 failed, 1 skipped" in output
    assert "Traceback" not in output


def test_the_socket_stat_through_a_host_command_matches_the_local_stat(unix_socket: str) -> None:
    os.chmod(unix_socket, 0o660)
    local = read_socket(unix_socket)
    remote = read_socket_on(LocalHost(), unix_socket)
    assert remote == local
    assert not read_socket_on(LocalHost(), "/nonexistent/docker.sock").exists


def testdaemon_pids_of_a_remote_host_match_the_local_scan() -> None:
    assert sorted(daemon_pids(LocalAsRemote())) == sorted(daemon_pids(LocalHost()))


def _socket(mode: int, uid: int, gid: int, owner: str, group: str) -> SocketInfo:
    return SocketInfo(
        "/run/x/docker.sock", exists=True, mode=mode, uid=uid, gid=gid, owner=owner, group=group
    )


@pytest.mark.parametrize(
    ("sock", "cause", "fix"),
    [
        (
            _socket(0o660, 0, 4242, "root", "dockerusers"),
            "is not in the socket's group `dockerusers`",
            "`sudo usermod -aG dockerusers ",
        ),
        (
            _socket(0o660, 0, 0, "root", "root"),
            "no group may open the socket (group root, mode 0660): only root can use Docker",
            "sudo chgrp docker /run/x/docker.sock && sudo chmod 660 /run/x/docker.sock",
        ),
        (
            _socket(0o600, 0, 4242, "root", "docker"),
            "no group may open the socket (group docker, mode 0600)",
            "sudo chmod 660 /run/x/docker.sock",
        ),
        (
            _socket(0o600, 54321, 54321, "alice", "alice"),
            "the socket is a rootless daemon of user alice: only alice may open it",
            "run the suite as alice, or start a rootless daemon of your own",
        ),
    ],
    ids=["other-group", "root-group", "owner-only", "someone-elses-rootless"],
)
def test_permission_diagnosis_follows_from_the_socket(sock: SocketInfo, cause: str, fix: str) -> None:
    """The fix names the socket's real group and mode, not a `docker` group it may not have."""
    diagnosis = diagnose_permission(Endpoint("unix:///run/x/docker.sock"), sock)
    assert "/run/x/docker.sock is owner " in diagnosis.found
    assert f"group {sock.group}, mode {sock.mode:04o}" in diagnosis.found
    assert cause in diagnosis.cause
    assert fix in diagnosis.fix
