"""A remote host's Docker daemon, reached through an SSH forwarding of its socket.

``ssh -L LOCAL.sock:/var/run/docker.sock`` (OpenSSH 6.7+) makes the remote daemon a local unix
socket, so the SDK talks to it exactly as to a local daemon: engine facts, containers, image
builds and the sweep are the same code for both.

The forwarding goes on the host's control master, the connection its commands already use,
asked over its control socket (``ssh_mux``; ``ssh -O forward`` where that fails): a second connection costs a key exchange, most of what a host costs a
fleet run. Each connection through it is an SSH channel that closes with its socket here, so a
workload's attach still ends with the process that holds it, even one killed with SIGKILL. The
listener itself lives as long as the master: after a SIGKILL, until testinfra's
``ControlPersist`` runs out; it gives no one more than the master's own socket beside it does.

Without a control master of ours (a paramiko host, a ControlPath of the user's own, a master
that is gone), the tunnel opens a connection of its own whose remote side runs ``cat`` on the
tunnel's stdin, so it ends when this process ends, even when pytest is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.hosts import ssh_mux
from pytest_gpuhost.hosts.host import Host, end_process_group, pid_alive

DEFAULT_REMOTE_SOCKET = "/var/run/docker.sock"
SSH_BACKENDS = ("ssh", "safe-ssh", "paramiko")
# ssh keeps the first value it reads for an option: these come before the user's own.
TUNNEL_OPTIONS = (
    "ControlMaster=no",
    "ControlPath=none",
    "ExitOnForwardFailure=yes",
    "StreamLocalBindUnlink=yes",
    "ServerAliveInterval=10",
    "ServerAliveCountMax=3",
)
# A unix socket path must fit in sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100
# A tunnel's folder names the process that made it: gpuhost-docker-<pid>-<random>.
FOLDER_PREFIX = "gpuhost-docker-"
_swept = threading.Lock()  # held for good once this process has swept


class TunnelError(Exception):
    """The tunnel could not be opened; carries the diagnosis."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


def _backend(host: Host) -> Any:
    backend = getattr(getattr(host, "testinfra", None), "backend", None)
    return backend if getattr(backend, "NAME", None) in SSH_BACKENDS else None


def ssh_base_argv(host: Host, options: Sequence[str] = TUNNEL_OPTIONS) -> list[str] | None:
    """``ssh`` and testinfra's options for ``host``, after ``options``; None when testinfra does
    not reach it by SSH."""
    backend = _backend(host)
    if backend is None:
        return None
    spec = backend.host  # testinfra's HostSpec: name, port, user, password
    argv = ["sshpass", "-p", str(spec.password), "ssh"] if spec.password else ["ssh"]
    for option in options:
        argv += ["-o", option]
    extra = getattr(backend, "ssh_extra_args", None)
    if extra:
        argv += shlex.split(str(extra))
    if getattr(backend, "ssh_config", None):
        argv += ["-F", str(backend.ssh_config)]
    if spec.user:
        argv += ["-o", f"User={spec.user}"]
    if spec.port:
        argv += ["-o", f"Port={spec.port}"]
    if getattr(backend, "ssh_identity_file", None):
        argv += ["-i", str(backend.ssh_identity_file)]
    argv += ["-o", f"ConnectTimeout={int(getattr(backend, 'timeout', 10) or 10)}"]
    return [*argv, str(spec.name)]


def master_control_path(host: Host) -> str | None:
    """The control socket of the master that testinfra's commands for ``host`` share, when the
    plugin named it (``hosts.remote.control_path``); None when the user's own options decide."""
    backend = _backend(host)
    if backend is None or getattr(backend, "NAME", None) == "paramiko":
        return None
    extra = str(getattr(backend, "ssh_extra_args", None) or "").lower()
    path = getattr(backend, "controlpath", None)
    if not path or not getattr(backend, "controlpersist", 0) or "control" in extra:
        return None  # testinfra passes no ControlPath then, or the user's own one wins
    return str(path)


def ssh_with_options(base_argv: Sequence[str], *options: str) -> list[str]:
    """``ssh_base_argv``'s command with more options before the host name; a remote command may follow."""
    return [*base_argv[:-1], *options, base_argv[-1]]


# The docker CLI's own answer only where something may change it (DOCKER_HOST, DOCKER_CONTEXT,
# a current context in its config): starting the CLI costs the host more than the rest of its
# commands together; exit 3 says the CLI would use its default socket.
SOCKET_SCRIPT = (
    '[ -z "$DOCKER_HOST$DOCKER_CONTEXT" ] && '
    '! grep -qs currentContext "${DOCKER_CONFIG:-$HOME/.docker}/config.json" && exit 3; '
    "exec docker context inspect --format '{{.Endpoints.docker.Host}}'"
)
SOCKET_COMMAND = ("sh", "-c", SOCKET_SCRIPT)  # what remote_socket_path runs on the host


def remote_socket_path(host: Host, timeout: float) -> str:
    """The socket the host's own docker CLI would use (its current context), else the default."""
    result = host.run(SOCKET_COMMAND, timeout=timeout)
    endpoint = result.stdout.strip() if result.ok else ""
    return endpoint.removeprefix("unix://") if endpoint.startswith("unix://") else DEFAULT_REMOTE_SOCKET


def diagnose_remote_socket(host: Host, path: str, timeout: float, error: str) -> Diagnosis:
    """Why the daemon did not answer through the tunnel, asked of the host itself."""
    probe = host.run(
        ["sh", "-c", 'test -S "$1" || exit 3; test -r "$1" && test -w "$1" || exit 4', "sh", path],
        timeout=timeout,
    )
    user = host.run(["id", "-un"], timeout=timeout).stdout.strip() or "the login user"
    if probe.returncode == 3:
        return Diagnosis(
            f"{host.name}: no Docker daemon socket at {path}",
            "Docker is not installed on the host, or its daemon is not running",
            f"on {host.name}: install Docker Engine, then `sudo systemctl enable --now docker`",
        )
    if probe.returncode == 4:
        return Diagnosis(
            f"{host.name}: {user} may not use the Docker socket {path}",
            f"{user} is not in the host's `docker` group",
            f"on {host.name}: `sudo usermod -aG docker {user}` (the next SSH login has the group), "
            "or log in as a user who may use Docker",
        )
    return Diagnosis(
        f"{host.name}: the Docker daemon does not answer through the SSH tunnel to {path}: {error}",
        "the daemon is not running (a stale socket), or the host's sshd does not forward unix sockets",
        f"on {host.name}: `sudo systemctl restart docker`; in /etc/ssh/sshd_config "
        "`AllowStreamLocalForwarding yes` and no `DisableForwarding yes`, then `sudo systemctl reload ssh`",
    )


class DockerTunnel:
    """A local socket forwarded to the host's Docker socket: on the host's control master when
    ``master_argv`` (ssh's command line for it) reaches one, else by an ``ssh -L`` of its own."""

    def __init__(
        self,
        host: Host,
        base_argv: Sequence[str],
        remote_socket: str,
        master_argv: Sequence[str] | None = None,
        control: str | None = None,
    ) -> None:
        self.host = host
        self.control = control  # the master's control socket: asked directly (``ssh_mux``)
        self.remote_socket = remote_socket
        if _swept.acquire(blocking=False):  # once per process: a fleet's hosts open theirs at once
            remove_stale_tunnels(_socket_dir())
        self.directory = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=_socket_dir())
        self.local_socket = os.path.join(self.directory, "docker.sock")
        self.forward_spec = f"{self.local_socket}:{remote_socket}"
        forward = ssh_with_options(base_argv, "-T", "-L", self.forward_spec)
        self.argv = [*forward, "cat >/dev/null"]  # ends when our end of its stdin closes
        self.master_argv = None if master_argv is None else list(master_argv)
        self.on_master = False
        self._stderr_path = os.path.join(self.directory, "ssh.err")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.local_socket}"

    def stderr(self) -> str:
        with contextlib.suppress(OSError), open(self._stderr_path, errors="replace") as file:
            return file.read().strip()
        return ""

    def open(self, timeout: float) -> str:
        """Forward on the master, else start ssh and wait for the local socket; raises
        TunnelError with the SSH diagnosis."""
        if self._forward_on_master(timeout):
            return self.url
        from pytest_gpuhost.hosts.remote import diagnose_connection

        try:
            with open(self._stderr_path, "wb") as err:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:
            self.close()
            raise TunnelError(self._start_failure(exc)) from None
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.local_socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                error = self.stderr() or (
                    "no answer in time" if self.process.poll() is None else "ssh exited"
                )
                self.close()
                raise TunnelError(diagnose_connection(self.host, error))
            time.sleep(0.02)
        return self.url

    def _start_failure(self, exc: OSError) -> Diagnosis:
        """Why the tunnel's own ssh could not be started."""
        if exc.filename == self._stderr_path:
            return Diagnosis(
                f"{self.host.name}: the tunnel's folder {self.directory} was removed as it opened",
                "something else cleans this temporary directory while pytest runs",
                f"keep cleaners off {FOLDER_PREFIX}* folders in {_socket_dir()}, or set TMPDIR",
            )
        if isinstance(exc, FileNotFoundError):
            return Diagnosis(
                f"{self.host.name}: the SSH client cannot start: {exc}",
                "the Docker tunnel to a remote host uses OpenSSH's `ssh` on this machine",
                "install the OpenSSH client (`apt-get install openssh-client`)",
            )
        return Diagnosis(
            f"{self.host.name}: the Docker tunnel cannot start: {exc}",
            f"the tunnel keeps its socket and ssh's messages in {_socket_dir()}",
            "free space or file handles there (`df -h /tmp`, `ulimit -n`), or set TMPDIR",
        )

    def _master_command(self, command: str) -> list[str] | None:
        """``ssh -O forward`` or ``-O cancel`` of this forwarding; None without a master."""
        if self.master_argv is None:
            return None
        return ssh_with_options(self.master_argv, "-O", command, "-L", self.forward_spec)

    def _forward_on_master(self, timeout: float) -> bool:
        """Whether the master now listens on the local socket; otherwise (no master, a refusal)
        the tunnel makes its own connection."""
        argv = self._master_command("forward")
        if argv is None:
            return False
        if self.control is not None:
            try:
                ssh_mux.open_forward(self.control, self.local_socket, self.remote_socket, max(timeout, 1.0))
                self.on_master = os.path.exists(self.local_socket)
                if self.on_master:
                    return True
            except ssh_mux.MuxError:
                pass  # ssh itself may still get it done, and says why not
        try:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=max(timeout, 1.0)
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        self.on_master = done.returncode == 0 and os.path.exists(self.local_socket)
        return self.on_master

    def _start_closing(self, deadline: float) -> subprocess.Popen[bytes] | None:
        """Ask the master to cancel the forwarding (an ``ssh -O cancel`` is awaited by
        ``close_all``), or close the own ssh's stdin, which ends the remote ``cat`` and then ssh."""
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        argv = self._master_command("cancel") if self.on_master else None
        on_master, self.on_master = self.on_master, False
        if on_master and self.control is not None:
            try:  # the master answers at once: no process to await
                remaining = max(0.1, deadline - time.monotonic())
                ssh_mux.close_forward(self.control, self.local_socket, self.remote_socket, remaining)
                return None
            except ssh_mux.MuxError:
                pass
        if argv is None:
            return None
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError:
            return None

    def close(self) -> None:
        """Cancel the forwarding on the master, or end the own ssh; then remove the local socket."""
        close_all([self])


def close_all(tunnels: Sequence[DockerTunnel], grace: float = 5.0) -> None:
    """Close every tunnel: all cancellations are asked for first, then awaited, so that a fleet's
    round trips overlap instead of adding up (``grace`` seconds in all)."""
    deadline = time.monotonic() + grace
    cancels = [tunnel._start_closing(deadline) for tunnel in tunnels]
    for tunnel, cancel in zip(tunnels, cancels, strict=True):
        if cancel is not None:
            try:
                cancel.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                cancel.kill()
                cancel.wait()
        process, tunnel.process = tunnel.process, None
        if process is not None:
            end_process_group(process)
        shutil.rmtree(tunnel.directory, ignore_errors=True)


def remove_stale_tunnels(directory: str, settle_s: float = 60.0) -> list[str]:
    """Folders of this user's tunnels whose pytest was killed: the process that made the folder
    is gone and the socket no longer answers (ssh ended with it). A folder without a socket is
    left ``settle_s`` to open. A live maker's folder is never taken: between the socket's bind
    and its listen a probe is refused, and a fleet opens its hosts' tunnels at once."""
    removed = []
    for folder in glob.glob(os.path.join(directory, f"{FOLDER_PREFIX}*")):
        try:
            info = os.stat(folder)
        except OSError:
            continue
        if info.st_uid != os.getuid() or _maker_alive(folder):
            continue
        path = os.path.join(folder, "docker.sock")
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(path)
                    continue  # a live tunnel of another session
                except OSError:
                    pass
        elif time.time() - info.st_mtime < settle_s:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _maker_alive(folder: str) -> bool:
    """Whether the process named in the folder's name still runs (a name without one: no)."""
    pid = os.path.basename(folder)[len(FOLDER_PREFIX) :].partition("-")[0]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    if not pid_alive(int(pid)):
        return False
    try:  # a zombie is a killed pytest whose parent has not reaped it yet
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # no /proc (macOS): the signal's answer
        return True


def _socket_dir() -> str:
    """A temporary directory short enough for a socket path below it."""
    directory = tempfile.gettempdir()
    return directory if len(directory) < MAX_SOCKET_PATH - 40 else "/tmp"


def open_remote_client(host: Host, timeout: float) -> tuple[Any, dict[str, Any], DockerTunnel, str]:
    """A Docker client for ``host``'s daemon through a new tunnel, the daemon's ``/version``
    answer, the tunnel, and the socket path on the host. Raises TunnelError with the diagnosis."""
    base = ssh_base_argv(host)
    if base is None:
        raise TunnelError(
            Diagnosis(
                f"{host.name}: Docker on a host reached through testinfra's "
                f"{getattr(host, 'spec', host.name).split('://')[0]} connection is not supported",
                "the suite reaches a remote daemon through an SSH tunnel to its socket",
                "name the host as ssh://USER@HOST (or an Ansible host with an SSH connection), "
                "or run pytest --gpuhost on the node itself",
            )
        )
    path = remote_socket_path(host, timeout)
    control = master_control_path(host)
    master = None if control is None else ssh_base_argv(host, ("ControlMaster=no", f"ControlPath={control}"))
    tunnel = DockerTunnel(host, base, path, master, control)
    tunnel.open(timeout)
    # Imported only now: in a fleet's prefetch every host's thread gets here, and the first import
    # (0.1 s) holds the others, which meanwhile had their round trips to make.
    import docker

    from pytest_gpuhost.docker.client import negotiate
    from pytest_gpuhost.docker.errors import daemon_faults, is_timeout
    from pytest_gpuhost.timeouts import NativeCallTimeout

    try:
        # As for a local daemon (docker.client.connect): one bounded round trip negotiates.
        client, version = negotiate(
            lambda version, seconds: docker.DockerClient(
                base_url=tunnel.url, version=version, timeout=seconds
            ),
            timeout,
            f"{host.name}: docker version",
        )
    except NativeCallTimeout as exc:
        tunnel.close()
        raise TunnelError(hung_remote_daemon(host, path, exc.seconds)) from None
    except daemon_faults() as exc:  # the ping raises the transport's own errors, not the SDK's
        tunnel.close()
        if is_timeout(exc):
            raise TunnelError(hung_remote_daemon(host, path, timeout)) from None
        raise TunnelError(diagnose_remote_socket(host, path, timeout, str(exc))) from None
    return client, version, tunnel, path


def hung_remote_daemon(host: Host, path: str, seconds: float) -> Diagnosis:
    """The tunnel reached the host's socket, but the daemon behind it did not answer in time."""
    return Diagnosis(
        f"{host.name}: the Docker daemon at {path} accepted the connection through the SSH tunnel "
        f"but did not answer within {seconds:.0f} s",
        "the daemon is hung (a stuck containerd, a full disk, a daemon stopped with SIGSTOP)",
        f"on {host.name}: `sudo systemctl restart docker`; `sudo journalctl -u docker` tells why it hung",
    )
