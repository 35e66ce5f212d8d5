"""Facts about the Docker engine (guide step 2.2): versions, configuration, socket and process.

The daemon's own view comes from the SDK (``client.version()``, ``client.info()``); what the
daemon cannot say about itself (who may open its socket, which executable it runs from) comes
from the socket's ``stat`` and from ``/proc``. Each of those may be unreadable to an ordinary
user, so every field degrades to None instead of failing.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.hosts.batch import Reads, batched, builtins_only, command
from pytest_gpuhost.hosts.host import Host
from pytest_gpuhost.timeouts import call_with_timeout

if TYPE_CHECKING:
    import docker

# `docker run --gpus` (a DeviceRequest) arrived with Docker 19.03.
MIN_GPU_ENGINE = (19, 3)
DAEMON_NAMES = ("dockerd", "dockerd-rootless")
DEFAULT_SOCKET = "/var/run/docker.sock"


def socket_path(docker_host: str | None) -> str | None:
    """The unix socket the SDK will use, or None for a TCP or SSH daemon."""
    if not docker_host:
        return DEFAULT_SOCKET
    if docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://")
    return None


@dataclass(frozen=True)
class SocketInfo:
    """The daemon's unix socket as the file system shows it."""

    path: str
    exists: bool
    mode: int | None = None  # permission bits only
    uid: int | None = None
    gid: int | None = None
    owner: str | None = None
    group: str | None = None
    is_socket: bool = True
    error: str | None = None

    @property
    def world_writable(self) -> bool:
        return self.mode is not None and bool(self.mode & stat.S_IWOTH)

    @property
    def mode_text(self) -> str:
        return f"{self.mode:04o}" if self.mode is not None else "?"

    def describe(self) -> str:
        return f"{self.path} (mode {self.mode_text}, owner {self.owner or self.uid}, group {self.group or self.gid})"


def read_socket(path: str, stat_fn: Callable[[str], os.stat_result] = os.stat) -> SocketInfo:
    """Stat the daemon's socket on the machine pytest runs on."""
    try:
        st = stat_fn(path)
    except FileNotFoundError:
        return SocketInfo(path, exists=False)
    except OSError as exc:
        return SocketInfo(path, exists=True, error=f"cannot stat {path}: {exc}")
    try:
        owner: str | None = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = None
    try:
        group: str | None = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = None
    return SocketInfo(
        path,
        exists=True,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        owner=owner,
        group=group,
        is_socket=stat.S_ISSOCK(st.st_mode),
    )


def socket_stat(path: str) -> tuple[str, ...]:
    """coreutils ``stat`` of the socket: mode in hex, ids, names."""
    return ("stat", "-L", "-c", "%f %u %g %U %G", "--", path)


def read_socket_on(host: Host, path: str, timeout: float = 10.0) -> SocketInfo:
    """Stat the daemon's socket on a remote host with coreutils ``stat`` (mode in hex, ids, names)."""
    result = host.run(socket_stat(path), timeout=timeout)
    fields = result.stdout.split() if result.ok else []
    if len(fields) != 5:
        if "No such file" in result.stderr:
            return SocketInfo(path, exists=False)
        return SocketInfo(path, exists=True, error=f"cannot stat {path} on {host.name}: {result.describe()}")
    raw_mode, uid, gid, owner, group = fields
    mode = int(raw_mode, 16)
    return SocketInfo(
        path,
        exists=True,
        mode=stat.S_IMODE(mode),
        uid=int(uid),
        gid=int(gid),
        owner=None if owner == "UNKNOWN" else owner,
        group=None if group == "UNKNOWN" else group,
        is_socket=stat.S_ISSOCK(mode),
    )


@dataclass(frozen=True)
class DaemonProcess:
    """A running ``dockerd``: where its executable is and how it was started."""

    pid: int
    argv: tuple[str, ...]
    executable: str | None  # /proc/PID/exe (root only), else argv[0]

    def option(self, *names: str) -> list[str]:
        """Values of ``--name VALUE`` / ``--name=VALUE`` / ``-H VALUE`` in the daemon's command line."""
        values = []
        args = list(self.argv[1:])
        for i, arg in enumerate(args):
            for name in names:
                if arg == name and i + 1 < len(args):
                    values.append(args[i + 1])
                elif arg.startswith(name + "="):
                    values.append(arg.split("=", 1)[1])
        return values

    @property
    def config_file(self) -> str | None:
        files = self.option("--config-file")
        return files[-1] if files else None

    @property
    def hosts(self) -> list[str]:
        return self.option("-H", "--host")


def _same_socket(a: str, b: str) -> bool:
    """``/var/run`` is a link to ``/run`` on every current distribution."""

    def norm(path: str) -> str:
        path = path.removeprefix("unix://")
        return "/run/" + path.removeprefix("/var/run/") if path.startswith("/var/run/") else path

    return norm(a) == norm(b)


# `read`, a builtin, not `$(cat ...)`: one process per process on the host adds up.
DAEMON_SCAN = (
    "sh",
    "-c",
    builtins_only(
        'for p in /proc/[0-9]*; do c=; read -r c 2>/dev/null <"$p/comm"; '
        f'case "$c" in {"|".join(DAEMON_NAMES)}) echo "${{p#/proc/}}";; esac; done'
    ),
)


def daemon_pids(host: Host) -> list[str]:
    """Pids whose command name is a Docker daemon's. A remote host answers in one command, not
    one per process."""
    from pytest_gpuhost.hosts.remote import is_remote

    if is_remote(host):
        result = host.run(DAEMON_SCAN, timeout=30)
        return result.stdout.split() if result.ok else []
    pids = []
    for entry in host.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = (host.read_text(f"/proc/{entry}/comm") or "").strip()
        except OSError:
            continue  # the process ended, or hidepid
        if comm in DAEMON_NAMES:
            pids.append(entry)
    return pids


def environ_file(pid: int) -> str:
    """Where a process's environment is (root or its owner only)."""
    return f"/proc/{pid}/environ"


def list_daemon_processes(host: Host) -> list[DaemonProcess]:
    """Every ``dockerd`` in ``/proc`` that this user may see."""
    found = []
    pids = daemon_pids(host)
    asked = Reads(
        files=tuple(f"/proc/{p}/cmdline" for p in pids), links=tuple(f"/proc/{p}/exe" for p in pids)
    )
    # The toolkit's facts read the daemon's environment next: asked in the same round trip.
    with batched(host, asked, ahead=Reads(files=tuple(environ_file(int(p)) for p in pids))):
        for entry in pids:
            try:
                raw = host.read_text(f"/proc/{entry}/cmdline") or ""
            except OSError:
                continue  # the process ended, or hidepid
            argv = tuple(arg for arg in raw.split("\0") if arg)
            executable = host.readlink(f"/proc/{entry}/exe") or (argv[0] if argv else None)
            found.append(DaemonProcess(int(entry), argv, executable))
    return found


def find_daemon_process(host: Host, socket: str | None) -> DaemonProcess | None:
    """The ``dockerd`` that serves ``socket``: the one listening there, else the only one."""
    if socket is None:
        return None  # a TCP or SSH daemon runs on another machine
    daemons = list_daemon_processes(host)
    for daemon in daemons:
        if any(_same_socket(h, socket) for h in daemon.hosts if h.startswith("unix://")):
            return daemon
    default = [d for d in daemons if not d.hosts or any(h.startswith("fd://") for h in d.hosts)]
    if _same_socket(socket, "/run/docker.sock") and len(default) == 1:
        return default[0]
    return daemons[0] if len(daemons) == 1 else None


@dataclass(frozen=True)
class EngineFacts:
    """What the daemon says about itself, plus its socket and process."""

    docker_host: str | None
    sdk_version: str | None
    engine_version: str | None
    api_version: str | None
    containerd_version: str | None
    runc_version: str | None
    init_version: str | None
    go_version: str | None
    operating_system: str | None
    kernel_version: str | None
    docker_root_dir: str | None
    cgroup_driver: str | None
    cgroup_version: str | None
    runtimes: Mapping[str, str] = field(default_factory=dict)  # name -> path
    default_runtime: str | None = None
    security_options: tuple[str, ...] = ()
    cdi_spec_dirs: tuple[str, ...] | None = None  # None: the daemon does not report CDI (before Docker 25)
    daemon_warnings: tuple[str, ...] = ()
    socket: SocketInfo | None = None
    process: DaemonProcess | None = None

    @property
    def rootless(self) -> bool:
        return any(
            opt == "name=rootless" or opt.startswith("name=rootless,") for opt in self.security_options
        )

    @property
    def remote(self) -> bool:
        return socket_path(self.docker_host) is None

    @property
    def executable(self) -> str | None:
        return self.process.executable if self.process else None

    @property
    def config_file(self) -> str | None:
        """The daemon's ``--config-file``, when its command line names one."""
        return self.process.config_file if self.process else None

    def snap_evidence(self) -> str | None:
        """Why this looks like Docker from the snap store, or None."""
        if self.executable and "/snap/" in self.executable:
            return f"the daemon runs from {self.executable}"
        if self.docker_root_dir and self.docker_root_dir.startswith("/var/snap/"):
            return f"DockerRootDir is {self.docker_root_dir}"
        return None

    def properties(self) -> dict[str, str]:
        """Versions and configuration as ``gpuhost.docker.*`` JUnit properties / metric lines."""
        values = {
            "sdk": self.sdk_version,
            "engine": self.engine_version,
            "api": self.api_version,
            "containerd": self.containerd_version,
            "runc": self.runc_version,
            "init": self.init_version,
            "cgroup_driver": self.cgroup_driver,
            "cgroup_version": self.cgroup_version,
            "default_runtime": self.default_runtime,
            "runtimes": ",".join(sorted(self.runtimes)),
            "rootless": str(self.rootless).lower(),
            "root_dir": self.docker_root_dir,
            "executable": self.executable,
        }
        return {f"gpuhost.docker.{k}": v for k, v in values.items() if v}

    def summary(self) -> str:
        return (
            f"Docker {self.engine_version or '?'} (API {self.api_version or '?'}), containerd "
            f"{self.containerd_version or '?'}, runc {self.runc_version or '?'}, cgroup "
            f"{self.cgroup_driver or '?'} v{self.cgroup_version or '?'}, runtimes "
            f"{', '.join(sorted(self.runtimes)) or 'none'} (default {self.default_runtime or '?'})"
        )


def _component(version: Mapping[str, Any], name: str) -> str | None:
    for component in version.get("Components") or []:
        if str(component.get("Name", "")).lower() == name.lower():
            value = component.get("Version")
            return str(value) if value else None
    return None


def _commit_version(info: Mapping[str, Any], key: str) -> str | None:
    commit = info.get(key) or {}
    value = commit.get("ID") if isinstance(commit, Mapping) else None
    return str(value) if value and value != "N/A" else None


def parse_engine(
    version: Mapping[str, Any],
    info: Mapping[str, Any],
    *,
    docker_host: str | None,
    sdk_version: str | None,
    socket: SocketInfo | None = None,
    process: DaemonProcess | None = None,
) -> EngineFacts:
    """Engine facts from the daemon's ``/version`` and ``/info`` answers."""
    runtimes = {
        str(name): str((spec or {}).get("path") or (spec or {}).get("runtimeType") or "")
        for name, spec in (info.get("Runtimes") or {}).items()
    }
    cdi_dirs = info.get("CDISpecDirs")
    return EngineFacts(
        docker_host=docker_host,
        sdk_version=sdk_version,
        engine_version=_component(version, "Engine") or version.get("Version") or info.get("ServerVersion"),
        api_version=version.get("ApiVersion"),
        containerd_version=_component(version, "containerd") or _commit_version(info, "ContainerdCommit"),
        runc_version=_component(version, "runc") or _commit_version(info, "RuncCommit"),
        init_version=_component(version, "docker-init"),
        go_version=version.get("GoVersion"),
        operating_system=info.get("OperatingSystem"),
        kernel_version=info.get("KernelVersion") or version.get("KernelVersion"),
        docker_root_dir=info.get("DockerRootDir"),
        cgroup_driver=info.get("CgroupDriver"),
        cgroup_version=str(info["CgroupVersion"]) if info.get("CgroupVersion") else None,
        runtimes=runtimes,
        default_runtime=info.get("DefaultRuntime"),
        security_options=tuple(str(s) for s in info.get("SecurityOptions") or ()),
        cdi_spec_dirs=tuple(str(d) for d in cdi_dirs) if isinstance(cdi_dirs, Sequence) else None,
        daemon_warnings=tuple(str(w) for w in info.get("Warnings") or ()),
        socket=socket,
        process=process,
    )


def engine_reads(path: str | None, timeout: float) -> Reads:
    """What ``gather_engine`` asks the host besides the daemon: the stat of its socket ``path``
    and the pids of the Docker daemons."""
    return command(socket_stat(path), timeout) + command(DAEMON_SCAN, 30) if path else Reads()


def gather_engine(
    client: docker.DockerClient,
    host: Host,
    timeout: float,
    docker_host: str | None = None,
    version: dict[str, Any] | None = None,
) -> EngineFacts:
    """Ask the daemon (its ``/version`` only when the connection's negotiation did not bring
    it), then look at its socket and process on ``host``."""
    import docker as docker_sdk

    from pytest_gpuhost.hosts.remote import is_remote

    if version is None:
        version = call_with_timeout(client.version, timeout, "docker version")
    info = call_with_timeout(client.info, timeout, "docker info")
    path = socket_path(docker_host)
    with batched(
        host, engine_reads(path, timeout)
    ):  # a remote host: the socket and the daemon's pid in one round trip
        return parse_engine(
            version,
            info,
            docker_host=docker_host,
            sdk_version=getattr(docker_sdk, "__version__", None),
            socket=(read_socket_on(host, path, timeout) if is_remote(host) else read_socket(path))
            if path
            else None,
            process=find_daemon_process(host, path),
        )


def docker_host_from_env(env: Mapping[str, str] | None = None) -> str | None:
    return (env if env is not None else os.environ).get("DOCKER_HOST") or None
