"""A remote host's Docker daemon, reached through an SSH tunnel to its socket.

``ssh -L LOCAL.sock:/var/run/docker.sock host`` (OpenSSH 6.7+) makes the remote daemon a local
unix socket, so the SDK talks to it exactly as to a local daemon: engine facts, containers,
image builds and the sweep are the same code for both. The tunnel uses the options testinfra
uses for the host (ssh config, identity file, user, port, extra arguments) on a connection of
its own: a forwarding held by a shared control master would outlive the tunnel.

The remote side runs ``cat`` on the tunnel's stdin, so the tunnel ends when this process ends,
even when pytest is killed with SIGKILL and no cleanup runs.
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
import time
from collections.abc import Sequence
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.hosts.host import Host, end_process_group

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


class TunnelError(Exception):
    """The tunnel could not be opened; carries the diagnosis."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


def ssh_base_argv(host: Host) -> list[str] | None:
    """``ssh`` and testinfra's options for ``host``; None when testinfra does not reach it by SSH."""
    backend = getattr(getattr(host, "testinfra", None), "backend", None)
    if backend is None or getattr(backend, "NAME", None) not in SSH_BACKENDS:
        return None
    spec = backend.host  # testinfra's HostSpec: name, port, user, password
    argv = ["sshpass", "-p", str(spec.password), "ssh"] if spec.password else ["ssh"]
    for option in TUNNEL_OPTIONS:
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


def ssh_with_options(base_argv: Sequence[str], *options: str) -> list[str]:
    """``ssh_base_argv``'s command with more options before the host name; a remote command may follow."""
    return [*base_argv[:-1], *options, base_argv[-1]]


def remote_socket_path(host: Host, timeout: float) -> str:
    """The socket the host's own docker CLI would use (its current context), else the default."""
    result = host.run(
        ["docker", "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"], timeout=timeout
    )
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
    """One ``ssh -L`` process that forwards a local socket to the host's Docker socket."""

    def __init__(self, host: Host, base_argv: Sequence[str], remote_socket: str) -> None:
        self.host = host
        self.remote_socket = remote_socket
        remove_stale_tunnels(_socket_dir())
        self.directory = tempfile.mkdtemp(prefix="gpuhost-docker-", dir=_socket_dir())
        self.local_socket = os.path.join(self.directory, "docker.sock")
        forward = ssh_with_options(base_argv, "-T", "-L", f"{self.local_socket}:{remote_socket}")
        self.argv = [*forward, "cat >/dev/null"]  # ends when our end of its stdin closes
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
        """Start ssh and wait for the local socket; raises TunnelError with the SSH diagnosis."""
        from pytest_gpuhost.hosts.remote import diagnose_connection

        with open(self._stderr_path, "wb") as err:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                self.close()
                raise TunnelError(
                    Diagnosis(
                        f"{self.host.name}: the SSH client cannot start: {exc}",
                        "the Docker tunnel to a remote host uses OpenSSH's `ssh` on this machine",
                        "install the OpenSSH client (`apt-get install openssh-client`)",
                    )
                ) from None
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

    def close(self) -> None:
        """End ssh (closing its stdin ends the remote ``cat``) and remove the local socket."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            end_process_group(process)
        shutil.rmtree(self.directory, ignore_errors=True)


def remove_stale_tunnels(directory: str, settle_s: float = 60.0) -> list[str]:
    """Folders of this user's tunnels whose pytest was killed: the socket no longer answers
    (ssh ended with it). A folder without a socket is left ``settle_s`` to open."""
    removed = []
    for folder in glob.glob(os.path.join(directory, "gpuhost-docker-*")):
        try:
            info = os.stat(folder)
        except OSError:
            continue
        if info.st_uid != os.getuid():
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


def _socket_dir() -> str:
    """A temporary directory short enough for a socket path below it."""
    directory = tempfile.gettempdir()
    return directory if len(directory) < MAX_SOCKET_PATH - 40 else "/tmp"


def open_remote_client(host: Host, timeout: float) -> tuple[Any, DockerTunnel, str]:
    """A Docker client for ``host``'s daemon through a new tunnel, the tunnel, and the socket path
    on the host. Raises TunnelError with the diagnosis."""
    import docker

    from pytest_gpuhost.docker.client import PROBE_API_VERSION
    from pytest_gpuhost.docker.errors import daemon_faults, is_timeout
    from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

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
    tunnel = DockerTunnel(host, base, path)
    tunnel.open(timeout)
    seconds = int(max(timeout, 1))
    try:
        # As for a local daemon (docker.client.connect): the ping first, from a client with a fixed
        # API version, because making a negotiating client asks the daemon for its version and a
        # hung daemon would hang that, outside any deadline.
        probe = docker.DockerClient(base_url=tunnel.url, version=PROBE_API_VERSION, timeout=seconds + 5)
        try:
            call_with_timeout(probe.ping, timeout, f"{host.name}: docker ping")
        finally:
            probe.close()
        client = call_with_timeout(
            lambda: docker.DockerClient(base_url=tunnel.url, timeout=seconds),
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
    return client, tunnel, path


def hung_remote_daemon(host: Host, path: str, seconds: float) -> Diagnosis:
    """The tunnel reached the host's socket, but the daemon behind it did not answer in time."""
    return Diagnosis(
        f"{host.name}: the Docker daemon at {path} accepted the connection through the SSH tunnel "
        f"but did not answer within {seconds:.0f} s",
        "the daemon is hung (a stuck containerd, a full disk, a daemon stopped with SIGSTOP)",
        f"on {host.name}: `sudo systemctl restart docker`; `sudo journalctl -u docker` tells why it hung",
    )
