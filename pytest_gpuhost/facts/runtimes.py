"""Facts of guide steps 3.4 and 3.5: resource limits, shared and locked memory, the user's path
to the daemon, and the other container runtimes (enroot, Podman with CDI).

Probes inside containers are small shell scripts whose output is split into named sections and
parsed here, so that the parsing is tested on the texts of cgroup v1 and v2 without a container.
enroot and Podman are driven as commands through a ``Host``; what they print on failure is
mapped to a diagnosis like the Docker daemon's refusals are.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.containers import diagnose_version_mismatch
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.toolkit import ToolInfo, probe_tool
from pytest_gpuhost.hosts.host import CommandResult, Host

SECTION = "== gpuhost:"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# v1 writes "no limit" as the largest page-aligned signed 64-bit number; anything this big is unlimited.
UNLIMITED_BYTES = 1 << 62
SHM_MINIMUM = GIB
DOCKER_DEFAULT_SHM = 64 * MIB
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp])?i?b?\s*$", re.IGNORECASE)
_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


def section(name: str) -> str:
    """The shell line that starts section ``name`` of a probe's output."""
    return f"echo '{SECTION}{name}'"


def split_sections(text: str) -> dict[str, str]:
    """A probe's output by section; text before the first marker is dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(SECTION):
            current = sections.setdefault(line.removeprefix(SECTION).strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def parse_size(text: str) -> int | None:
    """Docker's sizes (``64m``, ``8G``, ``1.5g``, ``268435456``): binary units, as the daemon reads them."""
    match = _SIZE.match(text)
    if not match:
        return None
    scale = 1024 ** "bkmgtp".index((match.group(2) or "b").lower())
    return int(float(match.group(1)) * scale)


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value} B"


# -- cgroup limits ----------------------------------------------------------------------------

CGROUP_V2_CPU = "/sys/fs/cgroup/cpu.max"
CGROUP_V2_MEMORY = "/sys/fs/cgroup/memory.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"
CGROUP_V1_MEMORY = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
CGROUP_FILES = (CGROUP_V2_CPU, CGROUP_V2_MEMORY, CGROUP_V1_QUOTA, CGROUP_V1_PERIOD, CGROUP_V1_MEMORY)
# Only sh and cat: it runs in busybox as well as in CUDA images. A missing file prints nothing.
LIMITS_SCRIPT = (
    f"{section('limits')}; for f in {' '.join(CGROUP_FILES)}; do "
    'v=$(cat "$f" 2>/dev/null) && echo "$f=$v"; done'
)


@dataclass(frozen=True)
class LimitRequest:
    """The limits a check asks the daemon for, as ``docker run --cpus 1 --memory 256m`` would."""

    cpus: float = 1.0
    memory: str = "256m"

    @property
    def nano_cpus(self) -> int:
        return round(self.cpus * 1e9)

    @property
    def memory_bytes(self) -> int:
        value = parse_size(self.memory)
        assert value is not None, self.memory
        return value

    def create_kwargs(self) -> dict[str, Any]:
        """The SDK's arguments for these limits."""
        return {"nano_cpus": self.nano_cpus, "mem_limit": self.memory}


DEFAULT_LIMITS = LimitRequest()


@dataclass(frozen=True)
class CgroupLimits:
    """The limits a container sees in its own cgroup files. ``None`` limits are unlimited."""

    version: int | None  # None: none of the files was readable
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    memory_bytes: int | None = None
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def cpus(self) -> float | None:
        if self.cpu_quota_us is None or not self.cpu_period_us:
            return None
        return self.cpu_quota_us / self.cpu_period_us

    def metrics(self) -> str:
        memory = self.memory_bytes if self.memory_bytes is not None else "unlimited"
        quota = self.cpu_quota_us if self.cpu_quota_us is not None else "max"
        return (
            f"cgroup_version={self.version or 'unknown'} cpu_quota_us={quota} "
            f"cpu_period_us={self.cpu_period_us or 'unknown'} memory_limit_bytes={memory}"
        )


def _int_or_unlimited(text: str) -> int | None:
    """``max`` (v2), ``-1`` (v1 quota) and v1's huge memory sentinel are unlimited."""
    value = int(text)
    return None if value < 0 or value >= UNLIMITED_BYTES else value


def parse_cgroup_limits(text: str) -> CgroupLimits:
    """The ``PATH=VALUE`` lines of ``LIMITS_SCRIPT``; unparseable values stay only in ``files``."""
    files: dict[str, str] = {}
    for line in text.splitlines():
        path, sep, value = line.strip().partition("=")
        if sep and path in CGROUP_FILES:
            files[path] = value.strip()
    try:
        if CGROUP_V2_CPU in files or CGROUP_V2_MEMORY in files:
            quota, _, period = files.get(CGROUP_V2_CPU, "").partition(" ")
            memory = files.get(CGROUP_V2_MEMORY, "")
            return CgroupLimits(
                2,
                cpu_quota_us=None if quota in ("max", "") else _int_or_unlimited(quota),
                cpu_period_us=int(period) if period.isdigit() else None,
                memory_bytes=None if memory in ("max", "") else _int_or_unlimited(memory),
                files=files,
            )
        if files:
            quota = files.get(CGROUP_V1_QUOTA, "")
            period = files.get(CGROUP_V1_PERIOD, "")
            memory = files.get(CGROUP_V1_MEMORY, "")
            return CgroupLimits(
                1,
                cpu_quota_us=_int_or_unlimited(quota) if quota else None,
                cpu_period_us=int(period) if period.isdigit() else None,
                memory_bytes=_int_or_unlimited(memory) if memory else None,
                files=files,
            )
    except ValueError:
        return CgroupLimits(None, files=files)
    return CgroupLimits(None, files=files)


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


def limits_and_smi_script(smi: Sequence[str]) -> str:
    """Limits and the GPU listing from one container: both must hold at the same time."""
    return f"{LIMITS_SCRIPT}; {section('smi')}; {shlex.join(smi)}"


# -- shared memory and locked memory ----------------------------------------------------------

DEFAULTS_SCRIPT = (
    f"{section('memlock')}; ulimit -l; {section('mounts')}; cat /proc/mounts; "
    f"{section('df')}; df -kP /dev/shm 2>/dev/null; true"
)
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


@dataclass(frozen=True)
class ContainerDefaults:
    """/dev/shm and the memlock ulimit that a container gets when it asks for nothing."""

    shm_mounted: bool
    shm_bytes: int | None  # None: mounted without a visible size
    memlock_text: str  # what `ulimit -l` printed
    memlock_kib: int | None  # None: unlimited or unreadable

    @property
    def memlock_unlimited(self) -> bool:
        return self.memlock_text == "unlimited"


def shm_from_mounts(text: str) -> tuple[bool, int | None]:
    """Whether /dev/shm is mounted, and its ``size=`` option in bytes (absent: tmpfs's default)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/dev/shm":
            for option in fields[3].split(","):
                if option.startswith("size="):
                    return True, parse_size(option.removeprefix("size="))
            return True, None
    return False, None


def shm_from_df(text: str) -> int | None:
    """``df -kP /dev/shm``: the size column of the data line, in bytes."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[-1] == "/dev/shm" and fields[1].isdigit():
            return int(fields[1]) * KIB
    return None


def parse_container_defaults(text: str) -> ContainerDefaults:
    sections = split_sections(text)
    memlock = sections.get("memlock", "").strip()
    mounted, size = shm_from_mounts(sections.get("mounts", ""))
    if mounted and size is None:
        size = shm_from_df(sections.get("df", ""))
    return ContainerDefaults(mounted, size, memlock, int(memlock) if memlock.isdigit() else None)


@dataclass(frozen=True)
class DaemonDefaults:
    """What daemon.json sets for every container's /dev/shm and memlock, as written there."""

    shm_size: str | None
    memlock: str | None

    def describe(self) -> str:
        return (
            f"daemon.json default-shm-size: {self.shm_size or 'not set'}, "
            f"default-ulimits memlock: {self.memlock or 'not set'}"
        )


def daemon_defaults(config: Mapping[str, Any] | None) -> DaemonDefaults:
    config = config or {}
    shm = config.get("default-shm-size")
    ulimits = config.get("default-ulimits")
    memlock = ulimits.get("memlock") if isinstance(ulimits, Mapping) else None
    memlock_text = None
    if isinstance(memlock, Mapping):
        memlock_text = f"soft {memlock.get('Soft', '?')}, hard {memlock.get('Hard', '?')}"
    return DaemonDefaults(str(shm) if shm is not None else None, memlock_text)


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


# -- the user's path to the daemon ------------------------------------------------------------


@dataclass(frozen=True)
class AccessPath:
    """How this user may use the daemon: root, rootless, docker-group, remote or other."""

    kind: str
    detail: str


@dataclass(frozen=True)
class LoginUser:
    """Who runs the suite's containers on the host: a uid, its groups, and a name to show."""

    name: str
    uid: int | None
    groups: tuple[int, ...] = ()
    where: str = ""

    def describe(self) -> str:
        place = f" on {self.where}" if self.where else ""
        return f"user {self.name} (uid {self.uid}){place}" if self.uid is not None else self.name + place

    @classmethod
    def of_this_process(cls) -> LoginUser:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = f"uid {os.getuid()}"
        return cls(name, os.getuid(), tuple(sorted({os.getgid(), *os.getgroups()})))

    @classmethod
    def on_host(cls, host: Host, timeout: float) -> LoginUser:
        """The SSH login's ids, from ``id`` on the host."""
        result = host.run(["sh", "-c", "id -un; id -u; id -G"], timeout=timeout)
        lines = result.stdout.split("\n") if result.ok else []
        if len(lines) < 3 or not lines[1].strip().isdigit():
            return cls(f"unknown ({result.describe()})", None, (), host.name)
        groups = tuple(int(g) for g in lines[2].split() if g.isdigit())
        return cls(lines[0].strip(), int(lines[1]), groups, host.name)


def access_path(uid: int, groups: Collection[int], engine: EngineFacts) -> AccessPath:
    if engine.remote:
        return AccessPath("remote", f"DOCKER_HOST={engine.docker_host}: the daemon is on another machine")
    if engine.rootless:
        return AccessPath("rootless", "a rootless daemon run by this user (SecurityOptions name=rootless)")
    if uid == 0:
        return AccessPath("root", "this user is root (uid 0)")
    socket = engine.socket
    if socket is None or not socket.exists or socket.mode is None:
        return AccessPath("other", "the daemon's socket cannot be inspected")
    group = socket.group or str(socket.gid)
    if socket.uid == uid:
        return AccessPath("other", f"this user owns the daemon's socket {socket.describe()}")
    if socket.gid in groups and socket.mode & stat.S_IWGRP:
        return AccessPath(
            "docker-group", f"this user is a member of group `{group}`, which owns {socket.path}"
        )
    if socket.world_writable:
        return AccessPath("other", f"the socket is writable by every user: {socket.describe()}")
    return AccessPath("other", f"neither root nor in group `{group}` of {socket.path}: an ACL on the socket?")


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


# -- other runtimes: enroot and Podman --------------------------------------------------------


# A runtime's command on the host is a tool like the toolkit's: found, its version, or why not.
RuntimeTool = ToolInfo


def parse_runtime_version(text: str) -> str | None:
    """``3.4.1`` (enroot version) or ``podman version 4.3.1``."""
    match = _VERSION.search(text)
    return match.group(1) if match else None


def probe_runtime(host: Host, argv: Sequence[str], timeout: float) -> RuntimeTool:
    """Whether a runtime is installed, through its own version command (``enroot version``)."""
    return probe_tool(host, argv[0], timeout, argv=argv, parse=parse_runtime_version)


@dataclass(frozen=True)
class RuntimeRun:
    """The outcome of a GPU listing through another runtime: the CSV, or the diagnosis."""

    output: str
    diagnosis: Diagnosis | None
    commands: tuple[CommandResult, ...] = ()


def _tail(result: CommandResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else "no output"


def _inside_container(text: str) -> Diagnosis | None:
    """Errors printed inside the container; only NVML's "Unknown Error" means something else here
    than under Docker (no device nodes injected, rather than a cgroup lost after a daemon-reload)."""
    if "Failed to initialize NVML: Unknown Error" in text:
        return Diagnosis(
            "inside the container: Failed to initialize NVML: Unknown Error",
            "the container has the driver's libraries but not the GPUs' device nodes",
            "check that the hook or CDI spec injects /dev/nvidia*; regenerate the CDI spec",
        )
    return diagnose_version_mismatch(text)


@dataclass(frozen=True)
class EnrootPlan:
    """The commands that import, create, start and remove one enroot container."""

    image: str
    workdir: str
    name: str
    env: Mapping[str, str] = field(
        default_factory=lambda: {
            "NVIDIA_VISIBLE_DEVICES": "all",
            "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        }
    )

    @property
    def squashfs(self) -> str:
        return f"{self.workdir.rstrip('/')}/{self.name}.sqsh"

    def import_argv(self) -> list[str]:
        # dockerd:// reads the image from the local Docker daemon: no registry, works offline.
        return ["enroot", "import", "--output", self.squashfs, "--", f"dockerd://{self.image}"]

    def create_argv(self) -> list[str]:
        return ["enroot", "create", "--name", self.name, "--", self.squashfs]

    def start_argv(self, command: Sequence[str]) -> list[str]:
        env = [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        return ["enroot", "start", *env, "--", self.name, *command]

    def remove_argv(self) -> list[str]:
        return ["enroot", "remove", "--force", "--", self.name]


def diagnose_enroot(step: str, result: CommandResult, image: str) -> Diagnosis:
    """What a failed ``enroot <step>`` means, from enroot's words."""
    text = result.stdout + "\n" + result.stderr
    lowered = text.lower()
    command = " ".join(result.argv)
    if result.timed_out:
        return Diagnosis(
            f"`{command}` did not finish in time",
            "a large image on a slow disk, or a hung daemon or driver",
            "run the command by hand; `sudo dmesg | grep -i Xid` for a hung GPU",
        )
    inside = _inside_container(text)
    if inside is not None:
        return inside
    if step == "import":
        if "permission denied" in lowered and "docker" in lowered:
            return Diagnosis(
                f"enroot cannot read {image} from the Docker daemon: {_tail(result)}",
                "`enroot import dockerd://` uses the docker CLI, and this user may not use the daemon's socket",
                "run as a user who may use Docker, or import from a registry (`enroot import docker://IMAGE`)",
            )
        if "mksquashfs" in lowered or "squashfs" in lowered:
            return Diagnosis(
                f"enroot cannot build the image's squashfs: {_tail(result)}",
                "squashfs-tools is missing or too old",
                "`sudo apt-get install squashfs-tools` (or the distribution's package)",
            )
        return Diagnosis(
            f"`{command}` failed: {_tail(result)}",
            f"enroot cannot import {image} from the local Docker daemon",
            f"`docker image inspect {image}`; run `{command}` by hand",
        )
    if "nvidia-container-cli" in lowered or "98-nvidia" in lowered:
        return Diagnosis(
            f"enroot's NVIDIA hook failed: {_tail(result)}",
            "enroot gives containers GPUs through libnvidia-container: nvidia-container-cli is missing, "
            "or cannot reach the driver",
            "install libnvidia-container-tools (NVIDIA's repository) and enroot's `enroot+caps` package; "
            "`nvidia-container-cli info` must list the GPUs",
        )
    if "namespace" in lowered or "unshare" in lowered:
        return Diagnosis(
            f"enroot cannot create its user namespace: {_tail(result)}",
            "unprivileged user namespaces are disabled on this host",
            "`sudo sysctl -w user.max_user_namespaces=65536` (and `kernel.unprivileged_userns_clone=1` on "
            "Debian kernels); `enroot-check` lists what is missing",
        )
    return Diagnosis(
        f"`{command}` failed: {_tail(result)}",
        f"enroot could not {step} the container",
        f"run `{command}` by hand; `enroot-check` lists the kernel features enroot needs",
    )


def run_enroot(
    host: Host, image: str, command: Sequence[str], *, name: str, import_timeout: float, timeout: float
) -> RuntimeRun:
    """Import ``image`` from dockerd, create and start it with every GPU, run ``command``, clean up."""
    made = host.run(["mktemp", "-d", "/tmp/gpuhost-enroot.XXXXXX"], timeout=timeout)
    if not made.ok or not made.stdout.strip():
        return RuntimeRun(
            "",
            Diagnosis(
                f"no temporary folder for enroot's image: {made.describe()}",
                "/tmp is full or not writable",
                "`df -h /tmp`; free space there",
            ),
            (made,),
        )
    plan = EnrootPlan(image, made.stdout.strip(), name)
    commands: list[CommandResult] = [made]
    output, diagnosis = "", None
    created = False
    try:
        steps = (
            ("import", plan.import_argv(), import_timeout),
            ("create", plan.create_argv(), timeout),
            ("start", plan.start_argv(command), timeout),
        )
        for step, argv, limit in steps:
            result = host.run(argv, timeout=limit)
            commands.append(result)
            created = created or step == "create"  # a failed create may leave a partial root file system
            output = result.stdout
            if not result.ok:
                diagnosis = diagnose_enroot(step, result, image)
                break
    finally:
        if created:
            commands.append(host.run(plan.remove_argv(), timeout=timeout))
        commands.append(host.run(["rm", "-rf", "--", plan.workdir], timeout=timeout))
    return RuntimeRun(output, diagnosis, tuple(commands))


def podman_run_argv(
    image: str,
    command: Sequence[str],
    *,
    name: str,
    labels: Mapping[str, str],
    pull: str,
    devices: Sequence[str] = ("nvidia.com/gpu=all",),
    options: Sequence[str] = (),
) -> list[str]:
    """``podman run`` with CDI devices, offline, unprivileged, labelled and removed on exit.

    ``options`` go before the image (the tests pass ``--ulimit`` for a sandbox that refuses rlimits).
    """
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    device_args = [arg for device in devices for arg in ("--device", device)]
    return [
        "podman",
        "run",
        "--rm",
        "--name",
        name,
        *label_args,
        "--network",
        "none",
        "--security-opt",
        "no-new-privileges",
        f"--pull={pull}",
        *device_args,
        *options,
        image,
        *command,
    ]


def podman_remove_argv(name: str) -> list[str]:
    # --time 0: no grace period, a PID 1 that ignores SIGTERM would hold the removal for 10 s.
    return ["podman", "rm", "--force", "--ignore", "--time", "0", name]


def diagnose_podman(result: CommandResult, image: str) -> Diagnosis:
    """What a failed ``podman run`` with CDI devices means, from Podman's words."""
    text = result.stdout + "\n" + result.stderr
    lowered = text.lower()
    command = " ".join(result.argv)
    if result.timed_out:
        return Diagnosis(
            f"`{command}` did not finish in time",
            "a pull from an unreachable registry, or a hung driver",
            "run the command by hand; `--pull=never` with the image loaded into Podman's storage",
        )
    inside = _inside_container(text)
    if inside is not None:
        return inside
    if "unresolvable cdi devices" in lowered:
        return Diagnosis(
            f"Podman cannot resolve the CDI devices: {_tail(result)}",
            "no CDI spec names nvidia.com/gpu=all, or the spec is stale (generated before a driver "
            "upgrade or a GPU change)",
            "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`, then `nvidia-ctk cdi list`",
        )
    if "image not known" in lowered or "short-name" in lowered or "pinging container registry" in lowered:
        return Diagnosis(
            f"{image} is not in Podman's image storage: {_tail(result)}",
            "Podman keeps its own images, apart from Docker's; an offline host cannot pull",
            f"`podman pull {image}`, or copy it from Docker: `docker save {image} | podman load`",
        )
    if "rlimit" in lowered:
        return Diagnosis(
            f"the OCI runtime refuses Podman's resource limits: {_tail(result)}",
            "Podman asks the runtime to set the container's rlimits to this user's hard limits, and the "
            "kernel refuses (a nested container or VM without CAP_SYS_RESOURCE)",
            "run Podman where it is not nested, or lower the limits it passes "
            "(`--ulimit host`, or `default_ulimits` in containers.conf)",
        )
    if "oci runtime" in lowered and "not found" in lowered:
        return Diagnosis(
            f"Podman has no OCI runtime: {_tail(result)}",
            "crun (or runc) is not installed",
            "`sudo apt-get install crun` (or the distribution's package)",
        )
    if "executable file not found" in lowered and "nvidia-smi" in lowered:
        return Diagnosis(
            f"nvidia-smi is not in the Podman container: {_tail(result)}",
            "the CDI spec does not mount the driver's utilities",
            "regenerate the spec with the toolkit: `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
        )
    return Diagnosis(
        f"`{command}` failed: {_tail(result)}",
        "see Podman's message",
        f"run `{command}` by hand; `podman info` shows its runtime and storage",
    )


def run_podman(host: Host, argv: Sequence[str], name: str, image: str, timeout: float) -> RuntimeRun:
    """Run ``argv`` (from ``podman_run_argv``); remove the named container whatever happened."""
    commands: list[CommandResult] = []
    try:
        result = host.run(argv, timeout=timeout)
        commands.append(result)
    finally:
        # --rm removes it on exit; a run killed at its timeout leaves it to this.
        commands.append(host.run(podman_remove_argv(name), timeout=timeout))
    diagnosis = None if result.ok else diagnose_podman(result, image)
    return RuntimeRun(result.stdout, diagnosis, tuple(commands))


def parity_problem(
    runtime: str,
    image: str,
    rows: Sequence[tuple[str, str, str, int]],
    gpus: Sequence[GpuInfo],
    driver_version: str | None,
) -> Diagnosis | None:
    """``rows`` (uuid, name, driver, memory MiB) from inside a container match the host's GPUs."""
    inside = {row[0] for row in rows}
    host = {gpu.uuid for gpu in gpus}
    if inside != host:
        return Diagnosis(
            f"a container of {image} run by {runtime} with all GPUs sees {sorted(inside) or 'none'}; "
            f"the host has {sorted(host)}",
            f"{runtime} does not pass every GPU (NVIDIA_VISIBLE_DEVICES, the CDI spec or the hook hides some)",
            f"compare `nvidia-smi -L` inside a container run by {runtime} with the host's",
        )
    by_uuid = {gpu.uuid: gpu for gpu in gpus}
    for uuid, name, driver, memory in rows:
        gpu = by_uuid[uuid]
        host_view = (gpu.name, driver_version, gpu.memory_total_mib)
        if (name, driver, memory) != host_view:
            return Diagnosis(
                f"GPU {gpu.index} in a container run by {runtime}: name, driver, memory = "
                f"{(name, driver, memory)}; on the host {host_view}",
                "the container mounts another driver's libraries (a stale CDI spec, or a driver in the image)",
                "regenerate CDI specs after driver upgrades; never install a driver inside images",
            )
    return None
