"""The lifeline: a workload ends within 2 s of the pytest that started it, however pytest ends.

The container case runs on CI's real daemon with no GPU: a pytest starts a long-running workload
through the runner and is SIGKILLed (what a CI runner does at a job's timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from docker_support import busybox_image, docker_client_or_skip

from pytest_gpuhost.compute.runner import lifeline_path

ROOT = Path(__file__).resolve().parent.parent
HOST_PYTHON = "/usr/bin/python3"
PROMISE_S = 2.0


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], seconds: float = 120.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            raise AssertionError(f"the runner ended early: {proc.communicate()[0]!r}")
        time.sleep(0.05)
    raise AssertionError("the workload did not start")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):  # ESRCH: it exited while we read
        return True
    return state == "Z"


INNER_CONTAINER = """
from pathlib import Path

import docker

from pytest_gpuhost.docker.containers import Containers
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.compute.runner import LIFELINE_SCRIPT, MOUNT_POINT, started_workload, with_lifeline

VOLUMES = {"/usr": {"bind": "/usr", "mode": "ro"}, "/usr/lib": {"bind": "/lib", "mode": "ro"},
           "/usr/lib64": {"bind": "/lib64", "mode": "ro"}}


def test_long_workload():
    containers = Containers(docker.from_env(), LocalHost(), "devices", "never", volumes=VOLUMES)
    busy = ["PY", "-c", "import time; print('busy', flush=True); time.sleep(600)"]
    argv = with_lifeline("PY", f"{MOUNT_POINT}/{LIFELINE_SCRIPT}", busy)
    with started_workload(containers, "IMAGE", argv, check="CHECK") as running:
        Path("started").write_text(running.container.id)
        running.wait(600)
"""


def test_a_sigkilled_pytest_leaves_no_running_workload_container(pytester: pytest.Pytester) -> None:
    client = docker_client_or_skip()
    image = busybox_image(client)
    check = f"lifeline-test-{os.getpid()}"
    source = INNER_CONTAINER.replace("PY", HOST_PYTHON).replace("IMAGE", image).replace("CHECK", check)
    pytester.makepyfile(test_inner=textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    container_id = ""
    try:
        container_id = wait_for_file(pytester.path / "started", inner)
        container = client.containers.get(container_id)
        time.sleep(1.0)
        container.reload()
        assert container.status == "running"  # armed: the workload runs while pytest lives
        assert container.attrs["Config"]["StdinOnce"] is True  # the daemon closes stdin when we go
        inner.kill()
        inner.wait()
        killed = time.monotonic()
        while time.monotonic() - killed < 10:
            container.reload()
            if container.status != "running":
                break
            time.sleep(0.05)
        stopped_after = time.monotonic() - killed
        assert container.status != "running"
        assert stopped_after < PROMISE_S, f"the workload outlived pytest by {stopped_after:.2f} s"
        assert "the runner is gone" in container.logs().decode()
    finally:
        if inner.poll() is None:
            inner.kill()
        for leftover in client.containers.list(
            all=True, filters={"label": f"io.pytest-gpuhost.check={check}"}
        ):
            leftover.remove(force=True)


HOST_RUNNER = """
import sys
from pytest_gpuhost.burn.run import host_process

busy = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"]
with host_process(busy) as (lines, stop):
    for line in lines:
        if line.strip().isdigit():
            open(sys.argv[1], "w").write(line)
"""


def test_a_sigkilled_runner_leaves_no_host_workload(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    runner = subprocess.Popen(
        [sys.executable, "-c", HOST_RUNNER, str(pid_file)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        workload_pid = int(wait_for_file(pid_file, runner))
        assert not gone(workload_pid)
        runner.kill()
        runner.wait()
        killed = time.monotonic()
        while not gone(workload_pid) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        assert gone(workload_pid)
        assert time.monotonic() - killed < PROMISE_S
    finally:
        runner.kill()


def run_lifeline(stdin: int, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(lifeline_path()), *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_lifeline_never_armed_ends_the_workload() -> None:
    read, write = os.pipe()
    try:
        started = time.monotonic()
        done = run_lifeline(
            read, "--arm-timeout", "0.5", "--", sys.executable, "-c", "import time; time.sleep(60)"
        )
        assert done.returncode == 125
        assert "never took hold of the lifeline" in done.stderr
        assert time.monotonic() - started < 10
    finally:
        os.close(read)
        os.close(write)


def test_without_a_lifeline_the_workload_runs_to_its_end_and_says_so() -> None:
    done = run_lifeline(
        subprocess.DEVNULL, "--", sys.executable, "-c", "print('result'); raise SystemExit(3)"
    )
    assert (done.returncode, done.stdout.strip()) == (3, "result")
    assert "stdin is no lifeline" in done.stderr


def test_a_signal_to_the_watchdog_reaches_the_workload() -> None:
    """docker stop and the guard's SIGTERM go to the watchdog; the workload must get them."""
    read, write = os.pipe()
    os.write(write, b"1")
    handler = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, str(lifeline_path()), "--", sys.executable, "-c", handler],
        stdin=read,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 7
    finally:
        proc.kill()
        os.close(read)
        os.close(write)


REMOTE_RUNNER = """
import sys
import docker
from pytest_gpuhost.docker.containers import Containers
from pytest_gpuhost.hosts.tunnel import DockerTunnel
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.compute.runner import LIFELINE_SCRIPT, MOUNT_POINT, started_workload, with_lifeline

VOLUMES = {"/usr": {"bind": "/usr", "mode": "ro"}, "/usr/lib": {"bind": "/lib", "mode": "ro"},
           "/usr/lib64": {"bind": "/lib64", "mode": "ro"}}
master = None
if len(sys.argv) > 5:  # the forwarding on a control master that outlives this runner
    master = ["ssh", "-o", "ControlMaster=no", "-o", f"ControlPath={sys.argv[5]}", "-F", sys.argv[1], "node1"]
tunnel = DockerTunnel(LocalHost(name="node1"), ["ssh", "-F", sys.argv[1], "node1"], "/var/run/docker.sock", master)
tunnel.open(timeout=10)
assert tunnel.on_master == (master is not None)
client = docker.DockerClient(base_url=tunnel.url, timeout=30)
containers = Containers(client, LocalHost(), "devices", "never", volumes=VOLUMES)
busy = ["PY", "-c", "import time; time.sleep(600)"]
with started_workload(containers, sys.argv[2], with_lifeline("PY", f"{MOUNT_POINT}/{LIFELINE_SCRIPT}", busy),
                      check=sys.argv[3]) as running:
    open(sys.argv[4], "w").write(running.container.id)
    running.wait(600)
"""


@pytest.mark.parametrize("on_master", [False, True], ids=["own-connection", "on-control-master"])
def test_over_the_ssh_tunnel_a_sigkilled_runner_leaves_no_running_container(
    tmp_path: Path, on_master: bool
) -> None:
    """A remote host's workload: the attach runs through the tunnel, which ends with the runner.
    On a control master, which outlives the runner, its channel closes with the runner's socket."""
    from sshd_support import SshLab, sshd_or_skip

    client = docker_client_or_skip()
    sshd_or_skip()
    image = busybox_image(client)
    check = f"lifeline-remote-{os.getpid()}"
    lab = SshLab(tmp_path / "sshlab")
    started = tmp_path / "started"
    runner: subprocess.Popen[bytes] | None = None
    try:
        lab.start("node1")
        master = []
        if on_master:
            control = tmp_path / "ctl"
            master = [str(control)]
            lab.start_master("node1", control)
        runner = subprocess.Popen(
            [
                sys.executable,
                "-c",
                REMOTE_RUNNER.replace("PY", HOST_PYTHON),
                str(lab.ssh_config()),
                image,
                check,
                str(started),
                *master,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        container = client.containers.get(wait_for_file(started, runner))
        container.reload()
        assert container.status == "running"
        runner.kill()
        runner.wait()
        killed = time.monotonic()
        while container.status == "running" and time.monotonic() - killed < 10:
            time.sleep(0.05)
            container.reload()
        stopped_after = time.monotonic() - killed
        assert container.status != "running"
        assert stopped_after < PROMISE_S, f"the remote workload outlived its runner by {stopped_after:.2f} s"
        if on_master:  # the channel closed, not the connection: the master still runs
            assert lab.master_alive("node1", Path(master[0]))
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
        lab.stop()
        for leftover in client.containers.list(
            all=True, filters={"label": f"io.pytest-gpuhost.check={check}"}
        ):
            leftover.remove(force=True)
