"""The container layer against CI's real Docker daemon: isolation, cleanup, and daemon errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_gpuhost.docker.containers import (
    ALL_GPUS,
    LABEL_CHECK,
    LABEL_HOSTNAME,
    LABEL_OWNER,
    LABEL_PID,
    LABEL_SESSION,
    NO_GPUS,
    ContainerFailure,
    Containers,
    GpuRequest,
    ensure_image,
    sweep,
)
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import LocalHost

H100 = GpuInfo(
    index=0, uuid="GPU-042f1913-64c6-43ac-27c6-466e2d9041b0", name="NVIDIA H100", pci_bus_id="0000:00:06.0"
)


def ours(client: docker.DockerClient, check: str | None = None) -> list[str]:
    """Names of this suite's containers that still exist, optionally of one check.

    The low-level list carries the labels: no per-container inspect that could race a removal.
    """
    label = f"{LABEL_CHECK}={check}" if check is not None else LABEL_OWNER
    return [str(c["Names"][0]).lstrip("/") for c in client.api.containers(all=True, filters={"label": label})]


def make(client: docker.DockerClient, mode: str = "gpus") -> Containers:
    return Containers(client, LocalHost(), mode, "never")


def test_container_runs_offline_unprivileged_labelled_and_is_removed(
    client: docker.DockerClient, image: str
) -> None:
    containers = make(client)
    with containers.started(image, ["sleep", "30"], check="isolation") as running:
        attrs = client.api.inspect_container(str(running.container.id))
        assert attrs["HostConfig"]["NetworkMode"] == "none"
        assert attrs["HostConfig"]["Privileged"] is False
        assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"]
        assert attrs["Config"]["Labels"][LABEL_SESSION] == f"{socket.gethostname()}:{os.getpid()}"
        assert ours(client, "isolation")
    assert ours(client, "isolation") == []


def test_run_returns_output_and_exit_code(client: docker.DockerClient, image: str) -> None:
    result = make(client).run(image, ["sh", "-c", "echo out; echo err >&2; exit 3"], check="run", timeout=30)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert ours(client, "run") == []


def test_timeout_kills_and_removes_the_container(client: docker.DockerClient, image: str) -> None:
    started = time.monotonic()
    result = make(client).run(image, ["sleep", "60"], check="timeout", timeout=1)
    assert result.timed_out
    assert time.monotonic() - started < 20
    assert ours(client, "timeout") == []


def test_failure_inside_the_block_still_removes(client: docker.DockerClient, image: str) -> None:
    with pytest.raises(RuntimeError), make(client).started(image, ["sleep", "30"], check="raise"):
        raise RuntimeError("a check failed mid-way")
    assert ours(client, "raise") == []


def test_the_real_gpus_error_is_the_toolkit_diagnosis(client: docker.DockerClient, image: str) -> None:
    with pytest.raises(ContainerFailure) as failure:
        make(client, "gpus").run(image, ["true"], check="gpus", timeout=30, gpus=ALL_GPUS)
    assert 'could not select device driver "" with capabilities: [[gpu]]' in failure.value.diagnosis.found
    assert "NVIDIA Container Toolkit" in failure.value.diagnosis.cause
    assert "nvidia-ctk runtime configure --runtime=docker" in failure.value.diagnosis.fix
    assert ours(client, "gpus") == []


def test_one_gpu_request_gives_the_same_error(client: docker.DockerClient, image: str) -> None:
    with pytest.raises(ContainerFailure, match="NVIDIA Container Toolkit"):
        make(client, "gpus").run(image, ["true"], check="gpus1", timeout=30, gpus=GpuRequest((H100,)))


def test_missing_nvidia_runtime_is_diagnosed(client: docker.DockerClient, image: str) -> None:
    with pytest.raises(ContainerFailure) as failure:
        make(client, "runtime").run(image, ["true"], check="runtime", timeout=30, gpus=ALL_GPUS)
    assert "no `nvidia` runtime" in failure.value.diagnosis.found
    assert "nvidia-ctk runtime configure" in failure.value.diagnosis.fix


def test_cdi_request_is_diagnosed(client: docker.DockerClient, image: str) -> None:
    with pytest.raises(ContainerFailure) as failure:
        make(client, "cdi").run(image, ["true"], check="cdi", timeout=30, gpus=ALL_GPUS)
    assert "CDI" in failure.value.diagnosis.found or "CDI" in failure.value.diagnosis.cause
    assert "nvidia-ctk cdi generate" in failure.value.diagnosis.fix


def test_missing_device_node_is_diagnosed(client: docker.DockerClient, image: str) -> None:
    ghost = GpuInfo(index=7, uuid="GPU-x", name="ghost", pci_bus_id="0000:00:0f.0", minor_number=7)
    with pytest.raises(ContainerFailure) as failure:
        make(client, "devices").run(image, ["true"], check="devices", timeout=30, gpus=GpuRequest((ghost,)))
    assert "/dev/nvidia7" in failure.value.diagnosis.found
    assert "device node is missing" in failure.value.diagnosis.found


def test_no_gpu_request_adds_no_device(client: docker.DockerClient, image: str) -> None:
    result = make(client, "devices").run(image, ["ls", "/dev"], check="nogpu", timeout=30, gpus=NO_GPUS)
    assert result.ok
    assert not [n for n in result.stdout.split() if n.startswith("nvidia")]


def test_image_missing_with_pull_never_says_how_to_provide_it(client: docker.DockerClient) -> None:
    with pytest.raises(ContainerFailure) as failure:
        ensure_image(client, "gpuhost-test/absent:1", "never")
    assert "not on this host" in failure.value.diagnosis.found
    assert "docker load" in failure.value.diagnosis.fix


def test_image_that_cannot_be_pulled_offline_is_diagnosed(client: docker.DockerClient) -> None:
    """CI reaches no registry: the daemon's real pull error becomes a diagnosis."""
    with pytest.raises(ContainerFailure) as failure:
        ensure_image(client, "gpuhost-test/absent:1", "missing")
    assert "cannot be pulled" in failure.value.diagnosis.found
    assert "docker save" in failure.value.diagnosis.fix


def test_pull_always_falls_back_to_the_local_copy_offline(client: docker.DockerClient, image: str) -> None:
    ensure_image(client, image, "always")


def _labelled(
    client: docker.DockerClient, image: str, pid: int, check: str, hostname: str = "", start: bool = False
) -> None:
    hostname = hostname or socket.gethostname()
    container = client.containers.create(
        image,
        ["sleep", "60"],
        network_mode="none",
        labels={
            LABEL_OWNER: "1",
            LABEL_SESSION: f"{hostname}:{pid}",
            LABEL_HOSTNAME: hostname,
            LABEL_PID: str(pid),
            LABEL_CHECK: check,
        },
    )
    if start:
        container.start()


def test_sweep_keeps_what_another_machine_runs_on_this_daemon(
    client: docker.DockerClient, image: str
) -> None:
    """A fleet checked from two control machines: neither removes the other's running workload."""
    _labelled(client, image, 1, "other-running", hostname="controller-b", start=True)
    _labelled(client, image, 1, "other-leftover", hostname="controller-b")
    try:
        sweep(client)
        assert ours(client, "other-running") != []
        assert ours(client, "other-leftover") == []
    finally:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_CHECK}=other-running"}):
            container.remove(force=True)


def test_sweep_removes_leftovers_of_dead_sessions_only(client: docker.DockerClient, image: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _labelled(client, image, dead.pid, "dead-session")
    _labelled(client, image, os.getppid(), "live-session")
    try:
        sweep(client)
        assert ours(client, "dead-session") == []
        assert ours(client, "live-session") != []
    finally:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_CHECK}=live-session"}):
            container.remove(force=True)


LONG_RUNNING_TEST = """
import time
from pytest_gpuhost.docker.containers import NO_GPUS

def test_long(gpuhost_containers):
    with gpuhost_containers.started({image!r}, ["sleep", "300"], check={check!r}, gpus=NO_GPUS):
        time.sleep(300)

def test_after():
    pass
"""


@pytest.fixture
def check_label() -> str:
    """A check name of this test alone: tests running side by side (xdist) never see each other's."""
    return f"interrupt-me-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def long_running(pytester: pytest.Pytester, image: str, check_label: str) -> Iterator[Path]:
    yield pytester.makepyfile(test_interrupt=LONG_RUNNING_TEST.format(image=image, check=check_label))


def _wait_for(client: docker.DockerClient, check: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ours(client, check):
            return
        time.sleep(0.2)
    raise AssertionError(f"no container of check {check!r} appeared")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signal_mid_test_leaves_no_container_and_writes_junit(
    pytester: pytest.Pytester, client: docker.DockerClient, long_running: Path, signum: int, check_label: str
) -> None:
    report = pytester.path / "report.xml"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "--gpuhost",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(long_running),
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(client, check_label)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ours(client, check_label) == [], out
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out
    assert report.exists(), out


def test_pytest_timeout_leaves_no_container(
    pytester: pytest.Pytester, client: docker.DockerClient, long_running: Path, check_label: str
) -> None:
    result = pytester.runpytest_subprocess(
        "--gpuhost", "-p", "no:cacheprovider", "--timeout=3", str(long_running)
    )
    result.stdout.fnmatch_lines(["*Timeout*"])
    assert ours(client, check_label) == []


def test_sigkill_leftover_is_swept_by_the_next_session(
    pytester: pytest.Pytester, client: docker.DockerClient, long_running: Path, check_label: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--gpuhost", "-p", "no:cacheprovider", str(long_running)],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(client, check_label)
    finally:
        proc.kill()
        proc.wait()
    assert ours(client, check_label) != []  # nothing can clean up after SIGKILL itself
    pytester.makepyfile(test_next="def test_uses_containers(gpuhost_containers):\n    pass\n")
    result = pytester.runpytest_subprocess("--gpuhost", "-p", "no:cacheprovider", "test_next.py")
    result.assert_outcomes(passed=1)
    assert ours(client, check_label) == []
