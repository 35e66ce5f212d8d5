"""Fleet runs against real OpenSSH servers on loopback: the remote path of the facts, ids that
name hosts, an unreachable host, a refused identity file, and a parallel run with pytest-xdist.

This machine has no GPU, so through SSH each host fails ``test_nvidia_gpus_on_pci_bus`` with
"no NVIDIA GPU" and skips what depends on it: the diagnosis of a GPU-less node, per host.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from docker_support import busybox_image, docker_client_or_skip
from faultproxy import Rule, fault_proxy
from pytester_support import GpuhostPytester
from sshd_support import SshLab

from pytest_gpuhost.facts.system import SYS_MODULE_SCRIPT, SYS_MODULES, loaded_modules
from pytest_gpuhost.hosts.host import CommandResult
from pytest_gpuhost.hosts.remote import LIST_SCRIPT, TestinfraHost, diagnose_connection
from pytest_gpuhost.hosts.scheduler import host_in_nodeid
from pytest_gpuhost.hosts.tunnel import (
    DockerTunnel,
    TunnelError,
    diagnose_remote_socket,
    remove_stale_tunnels,
    ssh_base_argv,
)
from pytest_gpuhost.reporting.terminal import render_fleet_table

FLEET_CHECKS = "test_fleet or test_step_1_1_hardware or test_step_2_1_driver or test_daemon_json_parses"
NO_GPU = "no NVIDIA GPU"


def run_fleet(gp: GpuhostPytester, *args: str) -> pytest.RunResult:
    return gp.runpytest(
        "-p", "testinfra.plugin", "--gpuhost", "--gpuhost-tier", "quick", "-k", FLEET_CHECKS, "-rs", *args
    )


def outcomes_by_id(result: pytest.RunResult) -> dict[str, str]:
    """``test_x[node1]`` (or ``test_x`` without parameters) to PASSED/FAILED/SKIPPED, from ``-v`` lines."""
    found = {}
    for line in result.outlines:
        match = re.search(r"::(\w+(?:\[[^\]]+\])?)(?:@\S+)? (PASSED|FAILED|SKIPPED|ERROR)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_two_hosts_over_ssh_name_their_hosts_and_fail_without_gpu(
    gpuhost_pytester: GpuhostPytester, lab: SshLab, tmp_path: Path
) -> None:
    lab.start("node1")
    lab.start("node2")
    report = tmp_path / "fleet.json"
    result = run_fleet(gpuhost_pytester, *lab.args("node1", "node2"), "-v", f"--gpuhost-json={report}")
    seen = outcomes_by_id(result)
    for node in ("node1", "node2"):
        assert seen[f"test_host_reachable[{node}]"] == "PASSED"
        assert seen[f"test_nvidia_gpus_on_pci_bus[{node}]"] == "FAILED"
        assert seen[f"test_nvidia_smi_runs[{node}]"] == "SKIPPED"
        assert seen[f"test_gpu_device_node[{node}-no-gpu]"] == "SKIPPED"
        assert seen[f"test_daemon_json_parses[{node}]"] == "PASSED"  # through the host's Docker tunnel
    result.stdout.fnmatch_lines(
        [
            f"FAILED test_nvidia_gpus_on_pci_bus[[]node1[]]: {NO_GPU}*",
            f"FAILED test_nvidia_gpus_on_pci_bus[[]node2[]]: {NO_GPU}*",
        ]
    )
    result.stdout.fnmatch_lines(["*gpuhost: fleet (passed/failed/skipped)*", "host*fleet*", "node1  1/0/0*"])
    document = json.loads(report.read_text())
    assert [h["host"] for h in document["hosts"]] == ["node1", "node2"]
    assert set(document["summary"]["table"]) == {"node1", "node2"}


def test_unreachable_host_fails_only_its_own_check(gpuhost_pytester: GpuhostPytester, lab: SshLab) -> None:
    lab.start("node1")
    lab.closed("down")
    result = run_fleet(gpuhost_pytester, *lab.args("node1", "down"), "-v")
    seen = outcomes_by_id(result)
    assert seen["test_host_reachable[down]"] == "FAILED"
    assert seen["test_host_reachable[node1]"] == "PASSED"
    down = {k: v for k, v in seen.items() if k.endswith("[down]") or "[down-" in k}
    assert {v for k, v in down.items() if not k.startswith("test_host_reachable")} == {"SKIPPED"}
    assert seen["test_nvidia_gpus_on_pci_bus[node1]"] == "FAILED"  # node1's own diagnosis, unaffected
    result.stdout.fnmatch_lines(["FAILED test_host_reachable[[]down[]]: down: SSH connection refused*"])
    result.stdout.fnmatch_lines(
        ["*needs reachable: test_host_reachable failed: down: SSH connection refused*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_identity_file_that_ssh_refuses_is_diagnosed(gpuhost_pytester: GpuhostPytester, lab: SshLab) -> None:
    lab.start("node1")
    key = lab.root / "loose_key"
    key.write_bytes(lab.client_key.read_bytes())
    key.chmod(0o644)
    args = [*lab.args("node1", identity=False), f"--ssh-identity-file={key}"]
    result = run_fleet(gpuhost_pytester, *args, "-k", "test_host_reachable")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"FOUND: node1: SSH refuses the identity file {key}: its permissions are too open",
            f"FIX:   `chmod 600 {key}`",
        ]
    )


def test_a_fleet_prefetches_nothing_for_checks_that_skip(
    gpuhost_pytester: GpuhostPytester, lab: SshLab, tmp_path: Path
) -> None:
    """The driver-module check needs a driver; on these GPU-less hosts it skips, so the prefetch
    must not run its `modinfo` (a logging stand-in first on the hosts' PATH) for either host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "modinfo.log"
    modinfo = bin_dir / "modinfo"
    modinfo.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    modinfo.chmod(0o755)
    for node in ("node1", "node2"):
        lab.start(node, SetEnv=f"PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    select = "test_host_reachable or test_loaded_driver_matches_installed"
    result = gpuhost_pytester.runpytest(
        "-p", "testinfra.plugin", "--gpuhost", "--gpuhost-tier", "quick", "-k", select, "-v",
        *lab.args("node1", "node2"),
    )  # fmt: skip
    seen = outcomes_by_id(result)
    assert seen["test_loaded_driver_matches_installed[node1]"] == "SKIPPED"
    assert seen["test_loaded_driver_matches_installed[node2]"] == "SKIPPED"
    assert not log.exists(), log.read_text()


def test_parallel_run_keeps_each_host_on_one_worker(
    gpuhost_pytester: GpuhostPytester, lab: SshLab, tmp_path: Path
) -> None:
    docker_client_or_skip()
    lab.start("node1")
    lab.start("node2")
    junit = tmp_path / "fleet.xml"
    result = gpuhost_pytester.runpytest(
        "-p",
        "xdist.plugin",
        "-p",
        "testinfra.plugin",
        "--gpuhost",
        "--gpuhost-tier",
        "quick",
        "-k",
        f"{FLEET_CHECKS} or test_docker_versions",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "-v",
        f"--junitxml={junit}",
        *lab.args("node1", "node2"),
    )
    workers: dict[str, set[str]] = {}
    for line in result.outlines:
        # The host is in the test id (pytest 9.2 no longer shows xdist's "@group" suffix here).
        match = re.search(r"\[(gw\d)\] .*\[(node\d)[\]-]", line)
        if match:
            workers.setdefault(match.group(2), set()).add(match.group(1))
    assert set(workers) == {"node1", "node2"}, result.stdout.str()
    assert all(len(w) == 1 for w in workers.values()), workers
    assert result.parseoutcomes()["failed"] == 2  # test_nvidia_gpus_on_pci_bus on each host
    # The workers' suite properties reach the controller's JUnit report, named by host.
    properties = dict(re.findall(r'<property name="([^"]+)" value="([^"]*)"', junit.read_text()))
    engine = docker_client_or_skip().version()["Version"]
    for node in ("node1", "node2"):
        assert properties[f"gpuhost.host[{node}]"] == node
        assert properties[f"gpuhost.driver[{node}]"] == "none"
        assert properties[f"gpuhost.docker.engine[{node}]"] == engine  # from test_docker_versions


# Checks of the Docker daemon: through the SSH tunnel they must see what a local run sees, since
# both reach the same daemon here.
DOCKER_CHECKS = (
    "test_step_2_2_docker or test_container_shm_size or test_container_memlock_ulimit "
    "or test_docker_access_path or test_container_sees_all_gpus"
)


def outcomes_by_check(result: pytest.RunResult) -> dict[str, str]:
    """``test_x`` (host parameter dropped) to its outcome, from ``-v`` lines."""
    return {test_id.split("[", 1)[0]: outcome for test_id, outcome in outcomes_by_id(result).items()}


def test_docker_checks_agree_locally_and_over_ssh(gpuhost_pytester: GpuhostPytester, lab: SshLab) -> None:
    image = busybox_image(docker_client_or_skip())
    lab.start("node1")
    args = ["--gpuhost", "--gpuhost-tier", "container", "--gpuhost-image", image, "--gpuhost-pull", "never"]
    args += ["-k", DOCKER_CHECKS, "-v"]
    local = gpuhost_pytester.runpytest(*args)
    remote = gpuhost_pytester.runpytest("-p", "testinfra.plugin", *args, "-rP", *lab.args("node1"))
    seen_locally, seen_remotely = outcomes_by_check(local), outcomes_by_check(remote)
    seen_remotely.pop("test_host_reachable", None)
    assert seen_remotely == seen_locally, remote.stdout.str()
    assert seen_remotely["test_container_sees_all_gpus"] == "SKIPPED"  # no GPU on this machine
    for check in ("test_docker_daemon_answers", "test_docker_versions", "test_container_shm_size"):
        assert seen_remotely[check] == "PASSED"
    remote.stdout.fnmatch_lines(["*gpuhost.metric docker.engine=*"])
    remote.stdout.no_fnmatch_line("*Traceback*")
    assert not list(Path(tempfile.gettempdir()).glob("gpuhost-docker-*")), "a tunnel outlived the run"


def test_a_remote_daemon_that_hangs_is_diagnosed_within_the_timeout(
    gpuhost_pytester: GpuhostPytester, lab: SshLab
) -> None:
    """A daemon that accepts the tunnel's connection and never answers: the hung-daemon diagnosis
    in about the timeout, not the generic "does not answer" after the SDK's own version query."""
    docker_client_or_skip()
    with fault_proxy("/var/run/docker.sock") as proxy:
        proxy.rules.append(Rule("GET", "", "hang"))  # every query: the ping and the version
        lab.start("node1", SetEnv=f"DOCKER_HOST={proxy.docker_host}")  # the host's CLI context
        started = time.monotonic()
        result = gpuhost_pytester.runpytest(
            "-p", "testinfra.plugin", "--gpuhost", "--gpuhost-tier", "quick",
            "-k", "test_docker_daemon_answers", "--gpuhost-timeout", "4", *lab.args("node1"),
        )  # fmt: skip
        elapsed = time.monotonic() - started
    result.stdout.fnmatch_lines(
        ["*node1: the Docker daemon at /tmp/ghp-*accepted the connection*did not answer*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert elapsed < 45, f"{elapsed:.0f} s for a 4 s timeout"
    assert not list(Path(tempfile.gettempdir()).glob("gpuhost-docker-*")), "a tunnel outlived the run"


def test_an_ansible_group_is_checked_host_by_host_with_docker_through_its_tunnel(
    gpuhost_pytester: GpuhostPytester, lab: SshLab
) -> None:
    if shutil.which("ansible-inventory") is None:
        pytest.skip("needs ansible-core (the test extra installs it)")
    docker_client_or_skip()
    lab.start("gpu01")
    lab.start("gpu02")
    inventory = lab.inventory("gpu_nodes", "gpu01", "gpu02")
    result = run_fleet(
        gpuhost_pytester,
        "--hosts=ansible://gpu_nodes",
        f"--ansible-inventory={inventory}",
        "-k",
        "test_host_reachable or test_nvidia_gpus_on_pci_bus or test_docker_daemon_answers",
        "-v",
    )
    seen = outcomes_by_id(result)
    for node in ("gpu01", "gpu02"):  # ids name the inventory hosts, not their addresses
        assert seen[f"test_host_reachable[{node}]"] == "PASSED"
        assert seen[f"test_nvidia_gpus_on_pci_bus[{node}]"] == "FAILED"
        assert seen[f"test_docker_daemon_answers[{node}]"] == "PASSED"
    result.stdout.no_fnmatch_line("*Traceback*")


def test_sshd_that_forbids_socket_forwarding_is_diagnosed(
    gpuhost_pytester: GpuhostPytester, lab: SshLab
) -> None:
    docker_client_or_skip()
    lab.start("node1", AllowStreamLocalForwarding="no")
    result = run_fleet(gpuhost_pytester, *lab.args("node1"), "-k", "test_docker_daemon_answers", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "FOUND: node1: the Docker daemon does not answer through the SSH tunnel to /var/run/docker.sock*",
            "FIX:*AllowStreamLocalForwarding yes*",
        ]
    )


# -- units: no SSH server needed -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodeid", "host"),
    [
        ("suites/test_a.py::test_x[gpu1]", "gpu1"),
        ("suites/test_a.py::test_x[gpu1-b-gpu0-1a2b3c4d]", "gpu1-b"),
        ("suites/test_a.py::test_x[gpu1-gpu0-1a2b3c4d]", "gpu1"),
        ("suites/test_a.py::test_x[float32-gpu1-gpu0-1a2b3c4d]", "gpu1"),
        ("suites/test_a.py::test_x[node:2222]@node:2222", "node:2222"),
        ("suites/test_a.py::test_x[gpu10]", None),
        ("suites/test_a.py::test_x", None),
    ],
)
def test_host_in_nodeid_finds_the_longest_matching_host(nodeid: str, host: str | None) -> None:
    assert host_in_nodeid(nodeid, ["gpu1", "gpu1-b", "node:2222"]) == host


class FakeBackend:
    def get_connection_type(self) -> str:
        return "ssh"


class FakeResult:
    def __init__(self, rc: int, stdout: str = "", stderr: str = "") -> None:
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


class FakeTestinfra:
    """What ``testinfra.get_host`` returns, answering from a table of commands."""

    backend = FakeBackend()

    def __init__(self, answers: dict[str, FakeResult]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command: str) -> FakeResult:
        self.commands.append(command)
        for suffix, result in self.answers.items():
            if command.endswith(suffix):
                return result
        raise RuntimeError(FakeResult(255, "", "ssh: connect to host gpu01 port 22: Connection refused"))


def test_every_remote_command_is_bounded_by_a_remote_timeout() -> None:
    fake = FakeTestinfra(
        {
            "cat -- /proc/modules": FakeResult(0, "nvidia 1 0 - Live\n"),
            "cat -- /nope": FakeResult(1, "", "cat: /nope: No such file or directory"),
            "cat -- /secret": FakeResult(1, "", "cat: /secret: Permission denied"),
            shlex.join(["sh", "-c", LIST_SCRIPT, "sh", "/dev"]): FakeResult(0, "nvidiactl\nnvidia0\n"),
            "nvidia-smi -q -x": FakeResult(124),
            "nvidia-bug-report.sh": FakeResult(127, "", "timeout: failed to run command 'x': No such file"),
        }
    )
    host = TestinfraHost(fake, "gpu01", "ssh://gpu01")
    assert host.remote and host.name == "gpu01"
    assert host.read_text("/proc/modules") == "nvidia 1 0 - Live\n"
    assert host.read_text("/nope") is None
    with pytest.raises(PermissionError):
        host.read_text("/secret")
    assert host.listdir("/dev") == ["nvidia0", "nvidiactl"]
    assert host.run(["nvidia-smi", "-q", "-x"], timeout=7).timed_out
    assert host.run(["nvidia-bug-report.sh"]).missing
    assert all(c.startswith("timeout -k 5 ") for c in fake.commands)
    assert "timeout -k 5 7 nvidia-smi -q -x" in fake.commands
    down = host.run(["true"])
    assert down.unreachable and "Connection refused" in down.stderr and not down.ok


def test_a_remote_host_s_modules_take_one_command_not_two_per_module() -> None:
    fake = FakeTestinfra(
        {
            "cat -- /proc/modules": FakeResult(0, "nvidia_uvm 1 0 - Live\n"),
            f"sh {' '.join(SYS_MODULES)}": FakeResult(0, "nvidia\nnvidia_drm\n"),
        }
    )
    host = TestinfraHost(fake, "gpu01", "ssh://gpu01")
    assert loaded_modules(host) == {"nvidia", "nvidia_uvm", "nvidia_drm"}
    assert len(fake.commands) == 2


def test_the_module_script_finds_what_exists_asks_file_by_file() -> None:
    """On this machine's /sys/module: modules with initstate, with only version, with neither."""
    sys_module = Path("/sys/module")
    if not sys_module.is_dir():
        pytest.skip("no /sys/module here")
    names = [*sorted(p.name for p in sys_module.iterdir())[:200], "gpuhost_no_such_module"]
    expected = [
        n for n in names if any(os.path.lexists(sys_module / n / f) for f in ("initstate", "version"))
    ]
    for shell in ("dash", "bash", "sh"):
        if shutil.which(shell) is None:
            continue
        out = subprocess.run([shell, "-c", SYS_MODULE_SCRIPT, "sh", *names], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.split() == expected, shell
    assert expected and len(expected) < len(names)  # the comparison had both kinds


def test_connection_diagnoses_name_the_fix() -> None:
    host = TestinfraHost(FakeTestinfra({}), "gpu01", "ssh://ops@gpu01")
    wrong_user = diagnose_connection(host, "ops@gpu01: Permission denied (publickey).")
    assert "check the user" in wrong_user.fix and "Permission denied (publickey)" in wrong_user.found
    loose = diagnose_connection(
        host,
        "Permissions 0644 for '/home/ops/.ssh/id' are too open.\nThis private key will be ignored.\n"
        "ops@gpu01: Permission denied (publickey).",
    )
    assert loose.fix == "`chmod 600 /home/ops/.ssh/id`"
    assert "does not resolve" in diagnose_connection(host, "ssh: Could not resolve hostname gpu01").found
    assert (
        "no answer" in diagnose_connection(host, "ssh: connect to host x port 22: Connection timed out").found
    )
    assert CommandResult(("true",), None, "", "refused", unreachable=True).describe().endswith("refused")


def test_fleet_table_counts_errors_as_failures() -> None:
    table = {
        "gpu01": {"test_step_1_1_hardware": {"passed": 1, "failed": 0, "error": 1, "skipped": 2}},
        "gpu02": {},
    }
    lines = render_fleet_table(table, ["gpu01", "gpu02"])
    assert lines == ["host   1_1_hardware", "gpu01  1/1/2", "gpu02  -"]


FAKE_FLEET = """
_one_host = pytest_gpuhost_make_host


def pytest_gpuhost_make_host(config):
    one = _one_host(config)
    return [LocalHost(root=one.root, env=one.env, name=name) for name in ("gpu01", "gpu02")]
"""


def test_fake_fleet_ids_name_host_and_gpu(gpuhost_pytester: GpuhostPytester, tmp_path: Path) -> None:
    """Several hosts from ``pytest_gpuhost_make_host``: per-GPU ids are host-gpu, facts per host."""
    gpuhost_pytester.setup("h100", extra_conftest=FAKE_FLEET)
    report = tmp_path / "fleet.json"
    result = gpuhost_pytester.run(
        "-k", "test_fleet or test_step_2_1_driver", "-v", f"--gpuhost-json={report}"
    )
    seen = outcomes_by_id(result)
    assert seen["test_gpu_device_node[gpu01-gpu0-042f1913]"] == "PASSED"
    assert seen["test_gpu_device_node[gpu02-gpu0-042f1913]"] == "PASSED"
    assert seen["test_nvidia_smi_runs[gpu02]"] == "PASSED"
    assert seen["test_host_reachable[gpu01]"] == "PASSED"
    result.stdout.fnmatch_lines(["gpuhost: host gpu01, *", "gpuhost: host gpu02, *"])
    document = json.loads(report.read_text())
    assert {r["host"] for r in document["results"]} == {"gpu01", "gpu02"}
    result.assert_outcomes(passed=len(seen))


def test_the_docker_tunnel_uses_testinfras_ssh_options_after_its_own() -> None:
    import testinfra

    backend_host = testinfra.get_host(
        "ssh://alice@gpu01:2222",
        ssh_config="/etc/fleet/ssh_config",
        ssh_identity_file="/etc/fleet/id",
        ssh_extra_args="-o ControlPath=/tmp/shared",
    )
    argv = ssh_base_argv(TestinfraHost(backend_host, "gpu01:2222", "ssh://alice@gpu01:2222"))
    assert argv is not None and argv[0] == "ssh" and argv[-1] == "gpu01"
    joined = " ".join(argv)
    for expected in ("-F /etc/fleet/ssh_config", "-o User=alice", "-o Port=2222", "-i /etc/fleet/id"):
        assert expected in joined
    # ssh keeps an option's first value: the tunnel's own connection wins over a shared master.
    assert joined.index("ControlPath=none") < joined.index("ControlPath=/tmp/shared")
    local = testinfra.get_host("local://")
    assert ssh_base_argv(TestinfraHost(local, "here", "local://")) is None


@pytest.mark.parametrize(
    ("probe", "found", "fix"),
    [
        (
            FakeResult(3),
            "gpu01: no Docker daemon socket at /var/run/docker.sock",
            "systemctl enable --now docker",
        ),
        (
            FakeResult(4),
            "gpu01: ops may not use the Docker socket /var/run/docker.sock",
            "sudo usermod -aG docker ops",
        ),
        (
            FakeResult(0),
            "the Docker daemon does not answer through the SSH tunnel",
            "AllowStreamLocalForwarding",
        ),
    ],
)
def test_a_daemon_that_does_not_answer_through_the_tunnel_is_diagnosed_on_the_host(
    probe: FakeResult, found: str, fix: str
) -> None:
    fake = FakeTestinfra({"sh /var/run/docker.sock": probe, "id -un": FakeResult(0, "ops\n")})
    diagnosis = diagnose_remote_socket(
        TestinfraHost(fake, "gpu01", "ssh://gpu01"), "/var/run/docker.sock", 10, "Connection aborted"
    )
    assert found in diagnosis.found
    assert fix in diagnosis.fix


def test_a_tunnel_that_cannot_connect_is_an_ssh_diagnosis(lab: SshLab) -> None:
    lab.closed("down")
    config = lab.ssh_config()
    fake = FakeTestinfra({})
    tunnel = DockerTunnel(
        TestinfraHost(fake, "down", "ssh://down"), ["ssh", "-F", str(config), "down"], "/x.sock"
    )
    with pytest.raises(TunnelError) as failure:
        tunnel.open(timeout=10)
    assert "down: SSH connection refused" in failure.value.diagnosis.found
    assert not Path(tunnel.directory).exists()  # nothing left behind


TUNNEL_CHILD = """
import sys, time
from pytest_gpuhost.hosts.tunnel import DockerTunnel
from pytest_gpuhost.hosts.host import LocalHost

tunnel = DockerTunnel(LocalHost(name="node1"), ["ssh", "-F", sys.argv[1], "node1"], "/var/run/docker.sock")
tunnel.open(timeout=10)
print(tunnel.process.pid, tunnel.directory, flush=True)
time.sleep(120)
"""


def exited(pid: str) -> bool:
    """Gone or a zombie; a process that exits while its stat is read is gone (ESRCH)."""
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_the_tunnel_ends_when_pytest_is_killed(lab: SshLab, tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the tunnel ends because its stdin closes with the killed process."""
    lab.start("node1")
    child = subprocess.Popen(
        [sys.executable, "-c", TUNNEL_CHILD, str(lab.ssh_config())], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    ssh_pid, directory = child.stdout.readline().split()
    child.kill()
    child.wait()
    deadline = time.monotonic() + 10
    while not exited(ssh_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exited(ssh_pid)
    # The next session removes the killed one's folder: its socket no longer answers.
    assert directory in remove_stale_tunnels(str(Path(directory).parent))
    assert not Path(directory).exists()


def refused_socket_folder(parent: Path, pid: int) -> Path:
    """A tunnel folder of ``pid`` whose socket is bound and not listening: what a probe meets
    between the bind and the listen of a tunnel that is opening."""
    folder = Path(tempfile.mkdtemp(prefix=f"gpuhost-docker-{pid}-", dir=parent))
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(folder / "docker.sock"))
    bound.close()  # the file stays; a connect to it is refused
    return folder


def test_a_sweep_leaves_an_opening_tunnel_of_a_live_process(tmp_path: Path) -> None:
    """32 hosts open their tunnels at once; a sweep must not take one that is not listening yet."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        mine = refused_socket_folder(tmp_path, os.getpid())
        other = refused_socket_folder(tmp_path, sleeper.pid)
        assert remove_stale_tunnels(str(tmp_path)) == []
        assert mine.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_tunnels(str(tmp_path)) == [str(other)]  # its maker is gone now
    assert mine.exists()


def test_a_tunnel_whose_folder_vanishes_is_a_diagnosis(lab: SshLab) -> None:
    lab.start("node1")
    fake = FakeTestinfra({})
    tunnel = DockerTunnel(
        TestinfraHost(fake, "node1", "ssh://node1"),
        ["ssh", "-F", str(lab.ssh_config()), "node1"],
        "/var/run/docker.sock",
    )
    shutil.rmtree(tunnel.directory)  # a tmp cleaner, between the folder and the tunnel's start
    with pytest.raises(TunnelError) as failure:
        tunnel.open(timeout=10)
    assert f"node1: the tunnel's folder {tunnel.directory} was removed" in failure.value.diagnosis.found


def test_a_tunnel_without_an_ssh_client_is_a_diagnosis() -> None:
    fake = FakeTestinfra({})
    tunnel = DockerTunnel(
        TestinfraHost(fake, "node1", "ssh://node1"), ["/nonexistent/ssh", "node1"], "/var/run/docker.sock"
    )
    with pytest.raises(TunnelError) as failure:
        tunnel.open(timeout=5)
    assert failure.value.diagnosis.found.startswith("node1: the SSH client cannot start")
    assert "openssh-client" in failure.value.diagnosis.fix
    assert not Path(tunnel.directory).exists()
