"""A private dockerd that dies, freezes or misanswers during a run: a diagnosis, never a traceback.

Every daemon here is this module's own (``second_dockerd``): it is killed (SIGKILL), frozen
(SIGSTOP) and resumed, or fronted by ``faultproxy`` that answers 500 / 404 / 409, drops the
connection or never answers. The shared daemon is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from xml.etree import ElementTree

import docker
import pytest
from dockerlab import SecondDaemon, busybox_image, busybox_rootfs_tar, run_suite, second_dockerd
from faultproxy import Rule, fault_proxy

from pytest_gpuhost.docker.client import connect
from pytest_gpuhost.docker.compose import PROJECT_LABEL, host_tag, sweep_projects
from pytest_gpuhost.docker.containers import LABEL_HOSTNAME, LABEL_OWNER, LABEL_PID, LABEL_SESSION, sweep
from pytest_gpuhost.facts.docker_engine import gather_engine
from pytest_gpuhost.hosts.host import LocalHost

SUITE = "test_step_2_2_docker.py"
NOISE = ("Traceback", "urllib3", "requests.exceptions", "INTERNALERROR", "ReadTimeout(", "During handling")

# One check that waits on a container, and checks after it that need no daemon at all.
CONTAINER_CHECKS = """
from pytest_gpuhost.docker.containers import NO_GPUS

def test_a_container(gpuhost_containers):
    result = gpuhost_containers.run({image!r}, ["sleep", "20"], check={check!r}, timeout={wait}, gpus=NO_GPUS)
    assert result.ok, result

def test_b_needs_no_daemon():
    pass

def test_c_last_check():
    pass
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[SecondDaemon, str]]:
    """A private daemon with a busybox image, for the tests that freeze it or put a proxy in front."""
    with second_dockerd({}) as daemon:
        client = docker.DockerClient(base_url=daemon.docker_host, timeout=30)
        try:
            with busybox_image(client) as image:
                yield daemon, image
        finally:
            _resume(daemon.pid)
            client.close()


def _resume(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@contextmanager
def frozen(daemon: SecondDaemon) -> Iterator[None]:
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        _resume(daemon.pid)


def kill_leftovers(socket_path: str) -> None:
    """containerd and its shims outlive a SIGKILLed dockerd, and so do its mounts (the data root,
    the container's overlay, network namespaces): end and unmount those of this daemon's folder."""
    base = os.path.dirname(socket_path)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with suppress(OSError):
            if base.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                os.kill(int(entry), signal.SIGKILL)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(base + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def assert_no_noise(output: str) -> None:
    for noise in NOISE:
        assert noise not in output, output


def start_run(path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--gpuhost", "-p", "no:cacheprovider", "-rA", *args],
        cwd=path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_container(docker_host: str, check: str, seconds: float = 60) -> None:
    client = docker.DockerClient(base_url=docker_host, timeout=10)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if client.api.containers(
                filters={"label": f"io.pytest-gpuhost.check={check}", "status": "running"}
            ):
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise AssertionError(f"no running container of {check}")


def finish(proc: subprocess.Popen[str], seconds: float) -> str:
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the run did not end within {seconds} s:\n{out}") from None
    return out


# -- 1. the daemon is killed during a container check ----------------------------------------


def test_daemon_killed_mid_check_fails_that_check_only(pytester: pytest.Pytester) -> None:
    """The check that waited fails with what happened; later checks and JUnit carry no teardown error."""
    with second_dockerd({}) as daemon:
        try:
            client = docker.DockerClient(base_url=daemon.docker_host, timeout=30)
            image = "gpuhost-test-busybox:killed"  # the daemon dies with it: no removal needed
            client.api.import_image_from_data(
                busybox_rootfs_tar(), repository=image.split(":")[0], tag="killed"
            )
            client.close()
            pytester.makepyfile(test_mid=CONTAINER_CHECKS.format(image=image, check="killed", wait=60))
            env = {**os.environ, "DOCKER_HOST": daemon.docker_host}
            proc = start_run(pytester.path, env, "--junitxml=report.xml", "test_mid.py")
            wait_for_container(daemon.docker_host, "killed")
            os.kill(daemon.pid, signal.SIGKILL)
            started = time.monotonic()
            out = finish(proc, 90)
            elapsed = time.monotonic() - started
        finally:
            kill_leftovers(daemon.socket)
    assert proc.returncode == 1, out
    assert "FOUND: the Docker daemon went away during `docker wait`" in out, out
    assert "CAUSE: the daemon stopped, crashed or restarted mid-run" in out
    assert "FAILED test_mid.py::test_a_container" in out
    assert "PASSED test_mid.py::test_c_last_check" in out
    assert " error" not in out.splitlines()[-1], out  # "1 failed, 2 passed": no teardown error
    assert_no_noise(out)
    assert elapsed < 40, out
    junit = ElementTree.parse(pytester.path / "report.xml")
    assert [c.get("name") for c in junit.iter("testcase") if c.find("error") is not None] == []
    assert [c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None] == [
        "test_a_container"
    ]


# -- 2. the daemon is frozen (SIGSTOP), before and during the run -----------------------------


def test_daemon_frozen_before_the_run_is_the_hung_daemon_diagnosis(
    pytester: pytest.Pytester, lab: tuple[SecondDaemon, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timed ping goes first: the SDK's version negotiation must not be what hangs."""
    daemon, _ = lab
    monkeypatch.setenv("DOCKER_HOST", daemon.docker_host)
    with frozen(daemon):
        started = time.monotonic()
        result = run_suite(pytester, SUITE, args=("--gpuhost-timeout=3",))
        elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1, passed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            f"*FOUND: the Docker daemon at DOCKER_HOST={daemon.docker_host} did not answer within 3 s*",
            "*CAUSE: the daemon is hung or overloaded*",
            "*FIX:   `sudo systemctl restart docker`*",
        ]
    )
    assert_no_noise(result.stdout.str())
    assert elapsed < 20


def test_daemon_frozen_mid_check_ends_that_check_with_the_hung_diagnosis(
    pytester: pytest.Pytester, lab: tuple[SecondDaemon, str]
) -> None:
    daemon, image = lab
    later = f"""

def test_d_another_container(gpuhost_containers):
    gpuhost_containers.run({image!r}, ["true"], check="frozen-later", timeout=30, gpus=NO_GPUS)
"""
    pytester.makepyfile(test_mid=CONTAINER_CHECKS.format(image=image, check="frozen", wait=4) + later)
    env = {**os.environ, "DOCKER_HOST": daemon.docker_host}
    proc = start_run(pytester.path, env, "--gpuhost-timeout=3", "test_mid.py")
    try:
        wait_for_container(daemon.docker_host, "frozen")
        with frozen(daemon):
            started = time.monotonic()
            out = finish(proc, 60)
            elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out
    assert "did not answer `docker wait`" in out, out
    # The next container check asks with a short ping instead of waiting out its own timeouts.
    assert "FAILED test_mid.py::test_d_another_container" in out
    assert "did not answer `docker create`" in out, out
    assert elapsed < 4 + 10 + 10 + 8, out
    assert "CAUSE: the daemon is hung or overloaded" in out
    assert "PASSED test_mid.py::test_c_last_check" in out
    assert " error" not in out.splitlines()[-1], out
    assert_no_noise(out)


# -- 3. Ctrl-C or SIGTERM while the daemon is hung --------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_while_the_daemon_is_hung_wins_at_once(
    pytester: pytest.Pytester, lab: tuple[SecondDaemon, str], signum: int
) -> None:
    daemon, image = lab
    check = f"hung-{signum}"
    pytester.makepyfile(test_mid=CONTAINER_CHECKS.format(image=image, check=check, wait=120))
    env = {**os.environ, "DOCKER_HOST": daemon.docker_host}
    proc = start_run(pytester.path, env, "--gpuhost-timeout=30", "--gpuhost-json=run.json", "test_mid.py")
    try:
        wait_for_container(daemon.docker_host, check)
        with frozen(daemon):
            time.sleep(0.5)  # the run is waiting on the frozen daemon
            proc.send_signal(signum)
            started = time.monotonic()
            out = finish(proc, 60)
            elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert elapsed < 10, out
    assert "KeyboardInterrupt" in out
    assert "test_b_needs_no_daemon" not in out.split("KeyboardInterrupt", 1)[0]  # the run did not go on
    assert "ReadTimeout" not in out and "urllib3" not in out, out
    document = json.loads((pytester.path / "run.json").read_text())
    assert document["interrupted"] is True


# -- 4. `docker info` fails after a good version negotiation -----------------------------------


@pytest.mark.parametrize(
    ("action", "found"),
    [
        ("500", "failed `docker info`: HTTP 500: injected by the test's fault proxy"),
        ("drop", "went away during `docker info`"),
        ("hang", "did not answer `docker info`"),
    ],
)
def test_info_failing_after_a_good_negotiation_fails_the_check_that_owns_it(
    pytester: pytest.Pytester,
    lab: tuple[SecondDaemon, str],
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    found: str,
) -> None:
    """test_docker_daemon_answers fails; daemon.json is still checked; nothing errors; exit 1."""
    daemon, _ = lab
    with fault_proxy(daemon.socket) as proxy:
        proxy.rules.append(Rule("GET", r"/info$", action))
        monkeypatch.setenv("DOCKER_HOST", proxy.docker_host)
        result = run_suite(pytester, SUITE, args=("--gpuhost-timeout=3",))
    result.assert_outcomes(failed=1, passed=1, skipped=4)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            f"*FOUND: the Docker daemon at DOCKER_HOST={proxy.docker_host} {found}*",
            "*PASSED*test_daemon_json_parses*",
            "*SKIPPED*needs docker: test_docker_daemon_answers failed: the Docker daemon at*",
        ]
    )
    assert_no_noise(result.stdout.str())


def test_a_connection_and_its_engine_facts_ask_the_daemon_twice(
    lab: tuple[SecondDaemon, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One unversioned ``/version`` negotiates and is the engine's version; then ``/info``. Each
    request is a round trip over a fleet host's SSH tunnel: there were four (a ping, the SDK's
    negotiation, ``/version`` again and ``/info``)."""
    daemon, _ = lab
    with fault_proxy(daemon.socket) as proxy:
        monkeypatch.setenv("DOCKER_HOST", proxy.docker_host)
        client, version = connect(10)
        try:
            engine = gather_engine(client, LocalHost(), 10, proxy.docker_host, version)
        finally:
            client.close()
    assert proxy.seen == ["GET /version", f"GET /v{version['ApiVersion']}/info"]
    assert engine.engine_version == version["Version"]
    assert engine.api_version == version["ApiVersion"]


# -- 5. sweeps that race another session -------------------------------------------------------


def _labelled(client: docker.DockerClient, image: str, pid: int, hostname: str | None = None) -> str:
    import socket

    host = hostname or socket.gethostname()
    labels = {
        LABEL_OWNER: "1",
        LABEL_SESSION: f"{host}:{pid}",
        LABEL_HOSTNAME: host,
        LABEL_PID: str(pid),
    }
    return str(client.containers.create(image, ["true"], labels=labels, network_mode="none").id)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweep_tolerates_containers_gone_or_being_removed(lab: tuple[SecondDaemon, str]) -> None:
    """Another session removed one between list and inspect (404), and is removing one (409)."""
    daemon, image = lab
    direct = docker.DockerClient(base_url=daemon.docker_host, timeout=30)
    gone = _labelled(direct, image, _dead_pid())
    busy = _labelled(direct, image, _dead_pid())
    try:
        with fault_proxy(daemon.socket) as proxy:
            proxy.rules += [
                Rule("GET", rf"/containers/{gone}/json", "404", f"No such container: {gone}"),
                Rule(
                    "DELETE",
                    rf"/containers/{busy}\b",
                    "409",
                    f"removal of container {busy} is already in progress",
                ),
            ]
            through = docker.DockerClient(base_url=proxy.docker_host, timeout=30)
            removed = sweep(through)
            through.close()
        names = {direct.containers.get(c).name for c in (gone, busy)}
        assert names.isdisjoint(removed), removed
        assert any(f"/containers/{gone}/json" in seen for seen in proxy.seen)
    finally:
        for name in (gone, busy):
            with suppress(docker.errors.NotFound):
                direct.containers.get(name).remove(force=True)
        direct.close()


def test_compose_sweep_spares_a_live_session_project(lab: tuple[SecondDaemon, str]) -> None:
    daemon, image = lab
    client = docker.DockerClient(base_url=daemon.docker_host, timeout=30)
    live_pid = subprocess.Popen(["sleep", "60"])
    projects = {
        "live": f"gpuhost-compose-{host_tag()}-{live_pid.pid}-aaaa0001",
        "dead": f"gpuhost-compose-{host_tag()}-{_dead_pid()}-aaaa0002",
        "mine": f"gpuhost-compose-{host_tag()}-{os.getpid()}-aaaa0003",
        "old": "gpuhost-compose-aaaa0004",
    }
    made = {
        key: str(
            client.containers.create(image, ["true"], labels={PROJECT_LABEL: name}, network_mode="none").name
        )
        for key, name in projects.items()
    }
    try:
        removed = sweep_projects(client)
        assert f"container {made['live']}" not in removed
        for key in ("dead", "mine", "old"):
            assert f"container {made[key]}" in removed
        client.containers.get(made["live"])  # still there
    finally:
        live_pid.kill()
        live_pid.wait()
        for name in made.values():
            with suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)
        client.close()


# -- 6. the endpoint the SDK uses: DOCKER_HOST or the CLI's context ---------------------------


def _context(config_dir: Path, name: str, host: str) -> None:
    """A Docker CLI context store, as `docker context create` writes it, made current."""
    import hashlib

    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    document = {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}
    (meta / "meta.json").write_text(json.dumps(document))
    (config_dir / "config.json").write_text(json.dumps({"currentContext": name}))


def test_socket_checks_look_at_the_current_context(
    pytester: pytest.Pytester, lab: tuple[SecondDaemon, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The SDK follows the live context to the lab daemon: its socket, not the default one, is judged."""
    daemon, _ = lab
    _context(tmp_path, "lab", daemon.docker_host)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    os.chmod(daemon.socket, 0o666)
    try:
        result = run_suite(pytester, SUITE, args=("-k", "world_writable or daemon_answers"))
    finally:
        os.chmod(daemon.socket, 0o660)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [f"*FOUND: the Docker socket is writable by every user: {daemon.socket} (mode 0666*"]
    )


def test_a_dead_context_is_named(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _context(tmp_path, "gone", "unix:///nonexistent/gone.sock")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    result = run_suite(pytester, SUITE, args=("-k", "daemon_answers"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: no Docker daemon answers at unix:///nonexistent/gone.sock (from Docker context 'gone')*",
            "*CAUSE: Docker context 'gone' points to a daemon that is not running or not there*",
            "*FIX:   `docker context use default`*",
        ]
    )


def test_a_tcp_docker_host_with_nothing_listening_is_named(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    result = run_suite(pytester, SUITE, args=("-k", "daemon_answers"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: no Docker daemon answers at DOCKER_HOST=tcp://127.0.0.1:1*",
            "*CAUSE: DOCKER_HOST points to a daemon that is not running or not there*",
        ]
    )
    assert "not installed" not in result.stdout.str()
