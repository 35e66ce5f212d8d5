"""Facts of guide step 3.4: resource limits, shared and locked memory, the user's path to the daemon.

Probes inside containers are small shell scripts whose output is split into named sections and
parsed here, so that the parsing is tested on the texts of cgroup v1 and v2 without a container.
The other runtimes of step 3.5 (enroot, Podman) live in ``pytest_gpuhost.runtimes``.
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

from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.hosts.batch import Reads, command
from pytest_gpuhost.hosts.host import Host

SECTION = "== gpuhost:"
LOGIN_IDS = ("sh", "-c", "id -un; id -u; id -G")  # the SSH login's name, uid and groups
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# v1 writes "no limit" as the largest page-aligned signed 64-bit number; anything this big is unlimited.
UNLIMITED_BYTES = 1 << 62
SHM_MINIMUM = GIB
DOCKER_DEFAULT_SHM = 64 * MIB
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp])?i?b?\s*$", re.IGNORECASE)


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


def limits_and_smi_script(smi: Sequence[str]) -> str:
    """Limits and the GPU listing from one container: both must hold at the same time."""
    return f"{LIMITS_SCRIPT}; {section('smi')}; {shlex.join(smi)}"


# -- shared memory and locked memory ----------------------------------------------------------

DEFAULTS_SCRIPT = (
    f"{section('memlock')}; ulimit -l; {section('mounts')}; cat /proc/mounts; "
    f"{section('df')}; df -kP /dev/shm 2>/dev/null; true"
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
        result = host.run(LOGIN_IDS, timeout=timeout)
        lines = result.stdout.split("\n") if result.ok else []
        if len(lines) < 3 or not lines[1].strip().isdigit():
            return cls(f"unknown ({result.describe()})", None, (), host.name)
        groups = tuple(int(g) for g in lines[2].split() if g.isdigit())
        return cls(lines[0].strip(), int(lines[1]), groups, host.name)


def login_reads(host: Host, timeout: float) -> Reads:
    """What ``LoginUser.on_host`` asks a remote host (nothing of the local one)."""
    from pytest_gpuhost.hosts.remote import is_remote

    return command(LOGIN_IDS, timeout) if is_remote(host) else Reads()


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


# -- other runtimes: enroot and Podman --------------------------------------------------------
