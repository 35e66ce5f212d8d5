"""The CI toolkit daemon: the real NVIDIA Container Toolkit 1.20 with Docker 26 and a mock driver.

The same tests run on a GPU host with recipe A (``../shared/device/README.md``) when an env file
names that daemon instead (``/work/devscripts/toolkit.sh`` writes one): then a real GPU answers.

``.ci/toolkit-daemon.sh start`` brings it up beside the machine's own daemon and writes
``$GPUHOST_TK_DIR/env``. It proves the toolkit's wiring (runtime, hook, CDI injection), never a
GPU: the GPU is a fake NVML and fake device nodes. Without it the tests skip, except under CI,
where ``.ci/run`` starts it and a missing daemon is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from pytest_gpuhost.facts.model import GpuInfo

TK_DIR = Path(os.environ.get("GPUHOST_TK_DIR", "/tmp/gpuhost-tk"))
STALE_DRIVER = "570.124.06"  # what a spec from before a driver upgrade names
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


@contextmanager
def connect_toolkit_daemon() -> Iterator[ToolkitDaemon]:
    """The daemon that ``$GPUHOST_TK_DIR/env`` names, for the ``toolkit_daemon`` fixture of conftest."""
    env_file = TK_DIR / "env"
    if not env_file.exists():
        _unavailable(f"no toolkit daemon: {env_file} does not exist")
    env = read_env(env_file)
    try:  # the SDK asks the daemon for its API version already when the client is made
        client = docker.DockerClient(base_url=env["GPUHOST_TK_DOCKER_HOST"], timeout=60)
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


@contextmanager
def misconfigured_toolkit_daemon(tk: ToolkitDaemon, work: Path) -> Iterator[docker.DockerClient]:
    """A second Docker 26 with the same toolkit, wired the ways users get wrong: no `"features":
    {"cdi": true}`, nvidia-container-runtime-hook not on dockerd's PATH, and a CDI spec generated
    for another driver (what the runtime injects in cdi mode). Stopped and removed at the end."""
    work.mkdir(parents=True, exist_ok=True)
    bindir, cdi = work / "bin", work / "cdi"
    bindir.mkdir(exist_ok=True)
    cdi.mkdir(exist_ok=True)
    for name in ("dockerd", "docker", "containerd", "containerd-shim-runc-v2", "runc"):  # no hook
        link = bindir / name
        if not link.exists():
            link.symlink_to(tk.bin / name)
    spec = (tk.etc / "cdi" / "nvidia.yaml").read_text()
    (cdi / "nvidia.yaml").write_text(spec.replace(tk.driver_version, STALE_DRIVER))
    runtime_config = (tk.etc / "nvidia-container-runtime" / "config.toml").read_text()
    (work / "config.toml").write_text(runtime_config.replace(str(tk.etc / "cdi"), str(cdi)))
    daemon_json = json.loads((tk.etc / "docker" / "daemon.json").read_text())
    daemon_json.pop("features", None)
    daemon_json["cdi-spec-dirs"] = [str(cdi)]
    (work / "daemon.json").write_text(json.dumps(daemon_json))
    sock = work / "d.sock"
    env = {
        "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "NVIDIA_CTK_CONFIG_FILE_PATH": str(work / "config.toml"),
    }
    fallback_libs = tk.bin.parent / "libs-active"  # start-toolkit-docker.sh's libraries the host lacks
    if fallback_libs.is_dir() and any(fallback_libs.iterdir()):
        env["LD_LIBRARY_PATH"] = str(fallback_libs)
    argv = [
        str(bindir / "dockerd"),
        f"--config-file={work / 'daemon.json'}",
        f"--host=unix://{sock}",
        f"--data-root={work / 'data'}",
        f"--exec-root={work / 'exec'}",
        f"--pidfile={work / 'd.pid'}",
    ]
    with open(work / "dockerd.log", "wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    client: docker.DockerClient | None = None
    try:
        deadline = time.monotonic() + 60
        while client is None:
            try:
                client = docker.DockerClient(base_url=f"unix://{sock}", timeout=60)
            except docker.errors.DockerException:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_tail = (work / "dockerd.log").read_text()[-2000:]
                    pytest.fail(f"the second toolkit daemon did not start: {log_tail}")
                time.sleep(0.5)
        rootfs = tk.bin.parent / "rootfs"
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w") as tar:
                tar.add(rootfs, arcname=".")
            tar_file.seek(0)
            client.api.import_image_from_data(tar_file.read(), repository=tk.image, tag="latest")
        yield client
    finally:
        if client is not None:
            client.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)
