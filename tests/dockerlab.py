"""Helpers for tests that use the real Docker daemon: a client, a busybox image, a second daemon.

Everything made here is removed by the context manager that made it, in a ``finally``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

BUSYBOX = "/bin/busybox"
SUITES = Path(__file__).resolve().parent.parent / "suites"
APPLETS = ("sh", "echo", "cat", "sleep", "true", "false", "ls", "env")


def client_or_skip() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        if os.environ.get("CI"):
            raise  # CI starts dockerd: a missing daemon there is a failure, not a skip
        pytest.skip(f"no Docker daemon answers: {exc}")
    return client


def busybox_rootfs_tar() -> bytes:
    """A root file system with a static busybox and a few applet links, as a tar archive."""
    if not os.path.exists(BUSYBOX):
        pytest.skip(f"{BUSYBOX} is not installed (apt-get install busybox-static)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buffer.getvalue()


@contextmanager
def busybox_image(client: docker.DockerClient, prefix: str = "gpuhost-test-busybox") -> Iterator[str]:
    """Import a busybox image under a unique tag; remove it afterwards."""
    repository = f"{prefix}-{secrets.token_hex(4)}"
    tag = f"{repository}:latest"
    client.api.import_image_from_data(busybox_rootfs_tar(), repository=repository, tag="latest")
    try:
        yield tag
    finally:
        with suppress(docker.errors.NotFound):
            client.images.remove(tag, force=True)


@dataclass(frozen=True)
class SecondDaemon:
    socket: str
    docker_host: str
    config_file: str
    pid: int


def _kill_group(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def second_dockerd(config: Mapping[str, object], start_timeout: float = 30) -> Iterator[SecondDaemon]:
    """A throw-away dockerd with its own socket, data root, exec root and daemon.json.

    Needs root and ``dockerd`` on PATH; skips otherwise. Short paths under /tmp keep the unix
    socket names within the kernel's 108-byte limit.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("dockerd is not installed")
    if os.geteuid() != 0:
        pytest.skip("starting a second dockerd needs root")
    base = Path(tempfile.mkdtemp(prefix="ghd-", dir="/tmp"))
    config_file = base / "daemon.json"
    config_file.write_text(json.dumps(config))
    socket = base / "docker.sock"
    argv = [
        dockerd,
        "-H",
        f"unix://{socket}",
        "--data-root",
        str(base / "data"),
        "--exec-root",
        str(base / "exec"),
        "--pidfile",
        str(base / "docker.pid"),
        "--config-file",
        str(config_file),
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--log-level=warn",
    ]
    log = open(base / "dockerd.log", "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"the second dockerd exited: {(base / 'dockerd.log').read_text()[-2000:]}")
            try:
                docker.DockerClient(base_url=f"unix://{socket}", timeout=10).close()
                break
            except docker.errors.DockerException:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the second dockerd did not answer: {(base / 'dockerd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)
        yield SecondDaemon(str(socket), f"unix://{socket}", str(config_file), process.pid)
    finally:
        _kill_group(process)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def run_suite(pytester: pytest.Pytester, *suites: str, args: tuple[str, ...] = ()) -> pytest.RunResult:
    """Run shipped suite modules under ``--gpuhost``, copied into pytester's folder."""
    for name in suites:
        (pytester.path / name).write_text((SUITES / name).read_text())
    return pytester.runpytest(
        "--gpuhost", "-p", "pytest_gpuhost.fixtures.docker", "-p", "no:cacheprovider", "-rA", *args, *suites
    )
