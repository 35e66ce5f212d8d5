"""The verdicts of guide step 3.4: cgroup limits that hold, shared and locked memory, the user's path to the daemon."""

from __future__ import annotations

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.limits import (
    KIB,
    SHM_MINIMUM,
    AccessPath,
    CgroupLimits,
    ContainerDefaults,
    DaemonDefaults,
    LimitRequest,
    format_bytes,
)


def limits_problem(limits: CgroupLimits, request: LimitRequest) -> Diagnosis | None:
    """The container's own cgroup files show the requested CPU and memory limits."""
    shown = ", ".join(f"{p}={v!r}" for p, v in limits.files.items()) or "nothing"
    if limits.version is None:
        return Diagnosis(
            f"the container cannot read its cgroup limits (read: {shown})",
            "the container shares the host's cgroup namespace (`--cgroupns=host`, or "
            '`"default-cgroupns-mode": "host"` in daemon.json) or has no /sys/fs/cgroup',
            "use the private cgroup namespace (Docker's default on cgroup v2); "
            "`docker run --rm --cpus 1 IMAGE cat /sys/fs/cgroup/cpu.max` should print `100000 100000`",
        )
    version = f"cgroup v{limits.version}"
    cpus = limits.cpus
    if cpus is None or abs(cpus - request.cpus) > 1e-6:
        return Diagnosis(
            f"a container started with --cpus {request.cpus:g} has no such CPU limit in its {version} "
            f"files: {shown}",
            "the daemon cannot set CPU limits: CFS bandwidth control missing from the kernel, or the cpu "
            "controller not delegated to a rootless daemon",
            "`docker info` names it in its WARNINGs (`No cpu cfs quota support`); rootless: delegate the "
            "controllers (systemd `Delegate=cpu cpuset io memory pids` for user@.service), then restart docker",
        )
    if limits.memory_bytes != request.memory_bytes:
        return Diagnosis(
            f"a container started with --memory {request.memory} ({request.memory_bytes} bytes) has a "
            f"memory limit of {limits.memory_bytes if limits.memory_bytes is not None else 'none'} in its "
            f"{version} files: {shown}",
            "the memory controller is off (kernel started without `cgroup_enable=memory`) or not delegated "
            "to a rootless daemon",
            "`docker info` names it in its WARNINGs (`No memory limit support`); add `cgroup_enable=memory` "
            "to the kernel command line, or delegate the memory controller for rootless Docker",
        )
    return None


def limit_refusal(message: str) -> Diagnosis | None:
    """The daemon's refusal of the limits themselves, which the GPU error mapping does not name."""
    lowered = message.lower()
    if "cpu cfs" in lowered or "nanocpus" in lowered or "memory limit" in lowered:
        return Diagnosis(
            f"the daemon refuses CPU or memory limits: {message}",
            "the kernel or the cgroup setup cannot enforce them (no CFS bandwidth control, memory "
            "controller off, or not delegated to a rootless daemon)",
            "see `docker info` WARNINGs; enable the cpu and memory cgroup controllers, then restart docker",
        )
    return None


SHM_FIX = (
    "per container `docker run --shm-size=8g` (compose: `shm_size: 8gb`) or `--ipc=host`; for every "
    'container `"default-shm-size": "8G"` in /etc/docker/daemon.json, then `sudo systemctl restart docker`'
)


MEMLOCK_FIX = (
    "per container `docker run --ulimit memlock=-1` (compose: `ulimits: {memlock: -1}`); for every "
    'container `"default-ulimits": {"memlock": {"Name": "memlock", "Soft": -1, "Hard": -1}}` in '
    "/etc/docker/daemon.json and `sudo systemctl restart docker`; the daemon's own limit caps both "
    "(`LimitMEMLOCK=infinity` in docker.service)"
)


def shm_warning(defaults: ContainerDefaults, daemon: DaemonDefaults) -> Diagnosis | None:
    if not defaults.shm_mounted:
        return Diagnosis(
            f"a container has no /dev/shm at all ({daemon.describe()})",
            "`--ipc=none` or an image that unmounts it: POSIX shared memory (PyTorch DataLoader workers, "
            "NCCL within a node) cannot work",
            SHM_FIX,
        )
    if defaults.shm_bytes is None or defaults.shm_bytes >= SHM_MINIMUM:
        return None
    return Diagnosis(
        f"containers get a {format_bytes(defaults.shm_bytes)} /dev/shm unless they ask for more "
        f"({daemon.describe()})",
        "PyTorch DataLoader workers and NCCL pass data through /dev/shm: below 1 GiB they die with "
        "`bus error` or `No space left on device`",
        SHM_FIX,
    )


def memlock_warning(defaults: ContainerDefaults, daemon: DaemonDefaults) -> Diagnosis | None:
    if defaults.memlock_unlimited:
        return None
    shown = (
        f"{defaults.memlock_kib} KiB ({format_bytes(defaults.memlock_kib * KIB)})"
        if defaults.memlock_kib is not None
        else repr(defaults.memlock_text or "nothing")
    )
    return Diagnosis(
        f"containers get a memlock ulimit of {shown}, not unlimited ({daemon.describe()})",
        "NCCL, GPUDirect RDMA and InfiniBand verbs lock (pin) host memory: with a small limit memory "
        "registration fails (`Cannot allocate memory`, NCCL `failed to register memory`) or falls back "
        "to slower paths",
        MEMLOCK_FIX,
    )


def access_warning(path: AccessPath, user: str) -> Diagnosis | None:
    if path.kind not in ("root", "docker-group"):
        return None
    return Diagnosis(
        f"{user} reaches the Docker daemon as {path.kind}: {path.detail}",
        "docker group membership equals root on the host: any member can start a container that mounts / "
        "read-write or is privileged, so everyone who runs GPU jobs this way is root",
        "keep the docker group to administrators; give GPU users rootless Docker "
        "(`dockerd-rootless-setuptool.sh install`, with the toolkit's `no-cgroups = true`), Podman with CDI, "
        "or a scheduler (Slurm with enroot/pyxis, Kubernetes) in front of the daemon",
    )
