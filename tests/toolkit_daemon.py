"""The CI toolkit daemon: the real NVIDIA Container Toolkit 1.20 with Docker 26 and a mock driver.

``.ci/toolkit-daemon.sh start`` brings it up beside the machine's own daemon and writes
``$GPUHOST_TK_DIR/env``. It proves the toolkit's wiring (runtime, hook, CDI injection), never a
GPU: the GPU is a fake NVML and fake device nodes. Without it the tests skip, except under CI,
where ``.ci/run`` starts it and a missing daemon is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from pytest_gpuhost.facts.model import GpuInfo

TK_DIR = Path(os.environ.get("GPUHOST_TK_DIR", "/tmp/gpuhost-tk"))
WIRING_ONLY = "toolkit daemon with a mock driver: this proves the toolkit's wiring, never a GPU"


@dataclass(frozen=True)
class ToolkitDaemon:
    docker_host: str
    bin: Path
    etc: Path
    driver: Path
    driver_version: str
    uuid: str
    image: str
    client: docker.DockerClient

    @property
    def gpu(self) -> GpuInfo:
        return GpuInfo(index=0, uuid=self.uuid, name="Mock GPU (no hardware)", pci_bus_id="00000000:01:00.0")

    def path_env(self) -> str:
        return f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def _unavailable(reason: str) -> None:
    message = f"{reason}; start it with `bash .ci/toolkit-daemon.sh start` ({WIRING_ONLY})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the toolkit path: {message}", pytrace=False)
    pytest.skip(message)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, _, value in pairs}


@pytest.fixture(scope="session", name="toolkit_daemon")
def toolkit_daemon_fixture() -> Iterator[ToolkitDaemon]:
    env_file = TK_DIR / "env"
    if not env_file.exists():
        _unavailable(f"no toolkit daemon: {env_file} does not exist")
    env = read_env(env_file)
    client = docker.DockerClient(base_url=env["GPUHOST_TK_DOCKER_HOST"], timeout=60)
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"the toolkit daemon at {env['GPUHOST_TK_DOCKER_HOST']} does not answer: {exc}")
    try:
        yield ToolkitDaemon(
            docker_host=env["GPUHOST_TK_DOCKER_HOST"],
            bin=Path(env["GPUHOST_TK_BIN"]),
            etc=Path(env["GPUHOST_TK_ETC"]),
            driver=Path(env["GPUHOST_TK_DRIVER"]),
            driver_version=env["GPUHOST_TK_DRIVER_VERSION"],
            uuid=env["GPUHOST_TK_UUID"],
            image=env["GPUHOST_TK_IMAGE"],
            client=client,
        )
    finally:
        client.close()
