"""A real registry (Debian's ``docker-registry``) on a free loopback port, with its own storage.

The shared daemon treats 127.0.0.0/8 registries as insecure-allowed, so it pulls from this one
without any daemon configuration. Images are pushed under the names the suite chooses, below
``127.0.0.1:PORT/`` (what ``--gpuhost-registry 127.0.0.1:PORT`` makes of them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

REGISTRY_BIN = "docker-registry"
LABEL = "io.pytest-gpuhost"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    process: subprocess.Popen[bytes]

    def name(self, image: str) -> str:
        return f"{self.host}/{image}"

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


@contextlib.contextmanager
def loopback_registry(tmp: Path) -> Iterator[Registry]:
    """Start the registry; stop it (resumed first, should a test have paused it) afterwards."""
    binary = shutil.which(REGISTRY_BIN)
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("docker-registry is not installed: .ci/run installs it")
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    config = tmp / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log, start_new_session=True)
    registry = Registry(f"127.0.0.1:{port}", process)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=1).read()
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the registry did not answer: {(tmp / 'registry.log').read_text()[-500:]}")
        yield registry
    finally:
        with contextlib.suppress(ProcessLookupError):
            registry.resume()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def push_image(client: docker.DockerClient, base: str, name: str, tmp: Path, payload_mib: int = 1) -> None:
    """Push ``base`` plus a layer of ``payload_mib`` MiB of random bytes as ``name``; no local copy stays."""
    context = tmp / f"context-{secrets.token_hex(4)}"
    context.mkdir()
    (context / "payload").write_bytes(os.urandom(payload_mib << 20))
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY payload /payload\n")
    client.images.build(path=str(context), tag=name, labels={LABEL: "1"}, rm=True, forcerm=True)
    try:
        for event in client.api.push(name, stream=True, decode=True):
            if "error" in event:
                raise RuntimeError(f"docker push {name}: {event['error']}")
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.images.remove(name, force=True)
        shutil.rmtree(context, ignore_errors=True)


def remove_image(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.images.remove(name, force=True)
