"""Containers owned by the suite: labelled, created and removed in ``try/finally``, swept.

Every container runs with ``network_mode="none"`` and is never privileged. Failures of the
daemon to start a GPU container are mapped to the layer that is broken (toolkit missing,
runtime not registered, CDI not enabled, stale spec, driver too old for the image).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.criteria.toolkit_pitfalls import diagnose_toolkit_error
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.errors import (
    DaemonFault,
    cleanup,
    daemon_faults,
    diagnose,
    is_timeout,
    mapped,
    mark_hung,
    require_answer,
)
from pytest_gpuhost.docker.images import ImageUnavailable
from pytest_gpuhost.docker.images import ensure_image as ensure_present
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import Host, pid_alive

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

LABEL_OWNER = "io.pytest-gpuhost"
LABEL_SESSION = "io.pytest-gpuhost.session"
LABEL_HOSTNAME = "io.pytest-gpuhost.hostname"
LABEL_PID = "io.pytest-gpuhost.pid"
LABEL_CHECK = "io.pytest-gpuhost.check"

# Where the "devices" mode finds the driver's user-space files on the host, and where they go.
DRIVER_ROOT = "/usr/local/nvidia"
DRIVER_LIBRARIES = (
    "libnvidia-ml.so.1",
    "libcuda.so.1",
    "libnvidia-ptxjitcompiler.so.1",
    "libnvidia-nvvm.so.4",
    "libcudadebugger.so.1",
)
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit (https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/"
    "latest/install-guide.html), then `sudo nvidia-ctk runtime configure --runtime=docker && "
    "sudo systemctl restart docker`"
)


class ContainerFailure(Exception):
    """A container could not be created or started; carries the diagnosis."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


@dataclass(frozen=True)
class ContainerResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class GpuRequest:
    """Which GPUs a container asks for: all of them, some, or none (``gpus=()``)."""

    gpus: tuple[GpuInfo, ...] | None = None  # None: all GPUs

    @property
    def none(self) -> bool:
        return self.gpus == ()


ALL_GPUS = GpuRequest()
NO_GPUS = GpuRequest(gpus=())


def session_labels(check: str) -> dict[str, str]:
    return {
        LABEL_OWNER: "1",
        LABEL_SESSION: f"{socket.gethostname()}:{os.getpid()}",
        LABEL_HOSTNAME: socket.gethostname(),
        LABEL_PID: str(os.getpid()),
        LABEL_CHECK: check,
    }


def parse_volume(spec: str) -> tuple[str, dict[str, str]]:
    """``SRC:DST[:MODE]`` as the SDK's volumes entry."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"--gpuhost-volume {spec!r}: use SRC:DST or SRC:DST:ro")
    return parts[0], {"bind": parts[1], "mode": parts[2] if len(parts) == 3 else "rw"}


def parse_env(spec: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise ValueError(f"--gpuhost-env {spec!r}: use KEY=VALUE")
    return key, value


def _device_ids(request: GpuRequest) -> list[str]:
    assert request.gpus is not None
    return [g.uuid or str(g.index) for g in request.gpus]


def driver_file_mounts(host: Host) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Read-only mounts and environment that give a container the host's driver without the toolkit."""
    env = {
        "LD_LIBRARY_PATH": f"{DRIVER_ROOT}/lib64:{DRIVER_ROOT}/lib",
        "PATH": f"{DRIVER_ROOT}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    if host.exists(DRIVER_ROOT):
        return {DRIVER_ROOT: {"bind": DRIVER_ROOT, "mode": "ro"}}, env
    volumes: dict[str, dict[str, str]] = {}
    smi = host.run(["sh", "-c", "command -v nvidia-smi"], timeout=10)
    if smi.ok and smi.stdout.strip():
        volumes[smi.stdout.strip()] = {"bind": f"{DRIVER_ROOT}/bin/nvidia-smi", "mode": "ro"}
    cache = host.run(["ldconfig", "-p"], timeout=10)
    for line in cache.stdout.splitlines() if cache.ok else []:
        # "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1": 64-bit entries only.
        entry, _, path = line.strip().partition(" => ")
        name, _, flags = entry.partition(" ")
        if name in DRIVER_LIBRARIES and any(arch in flags for arch in ("x86-64", "AArch64", "64bit")):
            volumes.setdefault(path.strip(), {"bind": f"{DRIVER_ROOT}/lib64/{name}", "mode": "ro"})
    return volumes, env


def gpu_create_kwargs(mode: str, request: GpuRequest, host: Host) -> dict[str, Any]:
    """The SDK arguments that ask the daemon for ``request``'s GPUs in access ``mode``."""
    if request.none:
        return {}
    import docker.types

    if mode == "gpus":  # what `docker run --gpus` sends: a DeviceRequest with driver ""
        if request.gpus is None:
            return {"device_requests": [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]}
        ids = _device_ids(request)
        return {"device_requests": [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]}
    if mode == "cdi":  # what `docker run --device nvidia.com/gpu=...` sends on Docker 25+
        names = (
            ["nvidia.com/gpu=all"]
            if request.gpus is None
            else [f"nvidia.com/gpu={g.index}" for g in request.gpus]
        )
        return {"device_requests": [docker.types.DeviceRequest(driver="cdi", device_ids=names)]}
    if mode == "runtime":
        visible = "all" if request.gpus is None else ",".join(_device_ids(request))
        return {
            "runtime": "nvidia",
            "environment": {
                "NVIDIA_VISIBLE_DEVICES": visible,
                "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            },
        }
    if mode == "devices":
        nodes = [n for n in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools") if host.exists(n)]
        gpus = request.gpus if request.gpus is not None else None
        if gpus is None:
            minors = sorted(
                int(n.removeprefix("nvidia"))
                for n in host.listdir("/dev")
                if n.removeprefix("nvidia").isdigit() and n.startswith("nvidia")
            )
        else:
            minors = [g.minor_number if g.minor_number is not None else g.index for g in gpus]
        nodes += [f"/dev/nvidia{m}" for m in minors]
        volumes, env = driver_file_mounts(host)
        return {"devices": [f"{n}:{n}:rwm" for n in nodes], "volumes": volumes, "environment": env}
    raise ValueError(f"unknown GPU access mode {mode!r}")


def diagnose_daemon_error(message: str, mode: str, image: str) -> Diagnosis:
    """The layer a daemon's refusal points at, from the daemon's exact words."""
    pitfall = diagnose_toolkit_error(message, mode)  # the toolkit's access-mode pitfalls first
    if pitfall is not None:
        return pitfall
    lowered = message.lower()
    if 'could not select device driver "" with capabilities: [[gpu]]' in lowered:
        return Diagnosis(
            f"the daemon cannot give containers GPUs: {message}",
            "the NVIDIA Container Toolkit is not installed, or Docker was not restarted after installing it",
            TOOLKIT_FIX,
        )
    if 'could not select device driver "cdi"' in lowered or ("cdi" in lowered and "not enabled" in lowered):
        return Diagnosis(
            f"the daemon does not support CDI devices: {message}",
            "CDI needs Docker 25 or newer, with the `cdi` feature enabled before Docker 28",
            'upgrade Docker; on Docker 25-27 add `"features": {"cdi": true}` to /etc/docker/daemon.json; '
            "generate the spec with `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`; restart docker",
        )
    if "unresolvable cdi devices" in lowered:
        return Diagnosis(
            f"the CDI spec does not name the requested devices: {message}",
            "no CDI spec for the GPUs, or a stale one from before a driver upgrade",
            "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`, then `nvidia-ctk cdi list`",
        )
    if "unknown or invalid runtime name: nvidia" in lowered or "unknown runtime specified nvidia" in lowered:
        return Diagnosis(
            f"the daemon has no `nvidia` runtime: {message}",
            "the toolkit is not installed or not registered with Docker, or Docker was not restarted",
            "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`",
        )
    if "unsatisfied condition: cuda>=" in lowered or "cuda driver version is insufficient" in lowered:
        return Diagnosis(
            f"the image {image} needs a newer driver: {message}",
            "the driver's CUDA version is older than the image's NVIDIA_REQUIRE_CUDA",
            "upgrade the driver, or use an image built for this driver's CUDA version",
        )
    if "error gathering device information" in lowered or (
        "no such file or directory" in lowered and "/dev/" in lowered
    ):
        return Diagnosis(
            f"a GPU device node is missing: {message}",
            "the driver did not create /dev/nvidia* nodes for this GPU",
            "`sudo nvidia-modprobe -u -c=0`; `sudo systemctl enable --now nvidia-persistenced`",
        )
    if "nvidia-container-cli" in lowered:
        return Diagnosis(
            f"the toolkit's hook failed: {message}",
            "the toolkit cannot reach the driver (driver not loaded, or a mismatch after an upgrade)",
            "`nvidia-container-cli -k -d /dev/tty info` shows the cause; reboot after a driver upgrade",
        )
    return Diagnosis(
        f"the daemon refused the container ({mode} mode, image {image}): {message}",
        "see the daemon's message",
        "`docker run --rm` the same image by hand; `sudo journalctl -u docker`",
    )


def diagnose_output(text: str) -> Diagnosis | None:
    """Errors that appear inside a started container, e.g. lost GPU access after a daemon-reload."""
    if "Failed to initialize NVML: Unknown Error" in text:
        return Diagnosis(
            "inside the container: Failed to initialize NVML: Unknown Error",
            "the container lost its GPU device access: systemd cgroup driver with the toolkit's legacy hook "
            "after `systemctl daemon-reload`",
            "use CDI (`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` and CDI device requests), "
            'or the cgroupfs driver (`"exec-opts": ["native.cgroupdriver=cgroupfs"]` in daemon.json)',
        )
    return diagnose_version_mismatch(text)


def diagnose_version_mismatch(text: str) -> Diagnosis | None:
    """The driver upgraded without a reboot, as any container runtime's output shows it."""
    if "Driver/library version mismatch" in text:
        return Diagnosis(
            "inside the container: Driver/library version mismatch",
            "the driver was upgraded without a reboot",
            "reboot, or reload the nvidia kernel modules",
        )
    return None


def ensure_image(client: docker.DockerClient, image: str, policy: str) -> None:
    """Make ``image`` present per the pull policy, or explain how to provide it (``images.py``)."""
    try:
        ensure_present(client, image, policy)
    except ImageUnavailable as exc:
        raise ContainerFailure(exc.diagnosis) from None
    except daemon_faults() as exc:
        raise ContainerFailure(diagnose(exc, f"docker image {image}")) from None


@dataclass
class RunningContainer:
    """A started container; the context manager that made it removes it."""

    container: Container
    started: float = field(default_factory=time.monotonic)
    client: docker.DockerClient | None = None

    def wait(self, timeout: float) -> ContainerResult:
        """The container's outcome; a daemon that dies or hangs meanwhile is a ContainerFailure."""
        timed_out = False
        exit_code: int | None = None
        try:
            status = self.container.wait(timeout=timeout)
            exit_code = int(status.get("StatusCode", -1))
        except daemon_faults() as exc:
            if not is_timeout(exc):
                raise ContainerFailure(diagnose(exc, "docker wait")) from None
            timed_out = True
            if not self.try_kill():  # the container outlived its deadline, or the daemon is hung: ask it
                raise ContainerFailure(diagnose(exc, "docker wait")) from None
        return ContainerResult(
            exit_code=exit_code,
            stdout=self.logs(stdout=True),
            stderr=self.logs(stdout=False),
            timed_out=timed_out,
            seconds=time.monotonic() - self.started,
        )

    def logs(self, stdout: bool = True) -> str:
        try:
            with mapped("docker logs", client=self.client):
                raw = self.container.logs(stdout=stdout, stderr=not stdout)
        except DaemonFault as fault:
            raise ContainerFailure(fault.diagnosis) from None
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def kill(self) -> None:
        """Kill the container, within a bounded wait; a daemon that does not answer is left be."""
        self.try_kill()

    def try_kill(self) -> bool:
        """Kill the container; False when the daemon did not answer (hung or gone)."""
        import docker

        def kill() -> bool:
            with contextlib.suppress(docker.errors.APIError):  # already stopped
                self.container.kill()
            return True

        if self.client is None:
            return kill()
        return bool(cleanup(self.client, kill, "docker kill"))


class Containers:
    """Creates the suite's containers and guarantees their removal."""

    def __init__(
        self,
        client: docker.DockerClient,
        host: Host,
        access_mode: str,
        pull: str,
        volumes: Mapping[str, Mapping[str, str]] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.host = host
        self.access_mode = access_mode
        self.pull = pull
        # The operator's --gpuhost-volume / --gpuhost-env, applied to every container of the suite.
        self.gpu_volumes = dict(volumes or {})
        self.gpu_environment = dict(environment or {})
        self._images_ready: set[str] = set()

    @contextmanager
    def started(
        self,
        image: str,
        command: Sequence[str],
        *,
        check: str,
        gpus: GpuRequest = NO_GPUS,
        volumes: Mapping[str, Mapping[str, str]] | None = None,
        environment: Mapping[str, str] | None = None,
        files: bytes | None = None,
        **extra: Any,
    ) -> Iterator[RunningContainer]:
        """A started container; ``files`` is a tar archive copied to ``/`` before it starts."""
        import docker

        try:
            require_answer(self.client, "docker create")
        except DaemonFault as fault:
            raise ContainerFailure(fault.diagnosis) from None
        if image not in self._images_ready:
            ensure_image(self.client, image, self.pull)
            self._images_ready.add(image)
        gpu_kwargs = gpu_create_kwargs(self.access_mode, gpus, self.host)
        merged_env = {**gpu_kwargs.pop("environment", {}), **self.gpu_environment, **(environment or {})}
        merged_volumes = {**gpu_kwargs.pop("volumes", {}), **self.gpu_volumes, **(volumes or {})}
        container = None
        try:
            try:
                container = self.client.containers.create(
                    image,
                    list(command),
                    labels=session_labels(check),
                    network_mode="none",
                    privileged=False,
                    security_opt=["no-new-privileges"],
                    environment=merged_env,
                    volumes=merged_volumes,
                    **gpu_kwargs,
                    **extra,
                )
                if files is not None:
                    container.put_archive("/", files)
                container.start()
            except docker.errors.APIError as exc:
                raise ContainerFailure(
                    diagnose_daemon_error(str(exc.explanation or exc), self.access_mode, image)
                ) from None
            except daemon_faults() as exc:  # the daemon died or hung: not the container's fault
                stage = "docker start" if container is not None else "docker create"
                if is_timeout(exc):
                    mark_hung(self.client)
                raise ContainerFailure(diagnose(exc, stage)) from None
            yield RunningContainer(container, client=self.client)
        finally:
            if container is not None:
                # Bounded and silent: the error (or Ctrl-C) that ended the block is what is reported;
                # a container left behind carries the labels the next session's sweep goes by.
                interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
                cleanup(self.client, lambda: _remove(container), "docker rm", 3.0 if interrupted else 10.0)

    def run(
        self, image: str, command: Sequence[str], *, check: str, timeout: float, **kwargs: Any
    ) -> ContainerResult:
        """Run ``command`` to completion (or ``timeout``) in a fresh container and remove it."""
        with self.started(image, command, check=check, **kwargs) as running:
            return running.wait(timeout)


def _remove(container: Container) -> bool:
    """Remove, tolerating another remover: gone already (404) or a removal in progress (409).
    True when this call removed it."""
    import docker

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        return False
    return True


def session_is_live(hostname: str | None, pid: str | None, running: bool) -> bool:
    """Whether another session may still own something labelled with ``hostname`` and ``pid``.

    On this machine a live pid says so. From another control machine (a fleet checked from two
    places) liveness cannot be seen: what still runs is kept; a workload ends at its own deadline.
    """
    if hostname == socket.gethostname():
        return bool(pid and pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)))
    return running


def sweep(client: docker.DockerClient, own_session_only: bool = False) -> list[str]:
    """Remove the suite's leftover containers; keep those of other live sessions on this machine,
    and the running ones that another machine started.

    Another session may remove the same containers meanwhile: a container gone between the list
    and its inspect is skipped (``ignore_removed``), and 404 / 409 answers to the removal are too.
    """

    removed: list[str] = []
    me = f"{socket.gethostname()}:{os.getpid()}"
    containers = client.containers.list(all=True, filters={"label": LABEL_OWNER}, ignore_removed=True)
    for container in containers:
        labels = container.labels or {}
        session = labels.get(LABEL_SESSION, "")
        if own_session_only and session != me:
            continue
        if session != me and session_is_live(
            labels.get(LABEL_HOSTNAME), labels.get(LABEL_PID), container.status == "running"
        ):
            continue
        if _remove(container):
            removed.append(str(container.name))
    return removed
