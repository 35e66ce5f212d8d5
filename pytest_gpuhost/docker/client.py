"""Reaching the Docker daemon through the SDK, with a timeout and a diagnosis for every failure.

The docker SDK is imported here only, and only under ``--gpuhost``.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.errors import daemon_faults, is_timeout
from pytest_gpuhost.facts.docker_engine import DEFAULT_SOCKET, SocketInfo, read_socket, socket_path
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

if TYPE_CHECKING:
    import docker

# Any fixed version: the probe's calls are unversioned, and a fixed one is never negotiated.
PROBE_API_VERSION = "1.41"


class DockerUnavailable(Exception):
    """The daemon cannot be used; carries the diagnosis that explains why."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


@dataclass(frozen=True)
class Endpoint:
    """The daemon the SDK talks to, and what chose it: ``DOCKER_HOST``, a CLI context, or neither."""

    url: str
    source: str | None = None  # "DOCKER_HOST" or "Docker context 'NAME'"; None: the default socket

    def describe(self) -> str:
        if self.source == "DOCKER_HOST":
            return f"DOCKER_HOST={self.url}"
        return f"{self.url} (from {self.source})" if self.source else self.url


def resolve_endpoint(env: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint ``docker.from_env()`` uses: DOCKER_HOST, else DOCKER_CONTEXT or the CLI's
    current context (``~/.docker/config.json``, or ``$DOCKER_CONFIG``), else the default socket."""
    env = os.environ if env is None else env
    if env.get("DOCKER_HOST"):
        return Endpoint(env["DOCKER_HOST"], "DOCKER_HOST")
    try:
        from docker.context import ContextAPI
        from docker.context.config import get_current_context_name

        name = env.get("DOCKER_CONTEXT") or get_current_context_name()
        context = ContextAPI.get_context(name) if name and name != "default" else None
    except Exception:  # an unreadable context store: from_env() reports it itself
        context, name = None, None
    if context is not None and context.Host:
        return Endpoint(str(context.Host), f"Docker context {name!r}")
    return Endpoint(f"unix://{DEFAULT_SOCKET}")


def _not_the_default(endpoint: Endpoint) -> str:
    if endpoint.source == "DOCKER_HOST":
        return f"fix DOCKER_HOST, or `unset DOCKER_HOST` to use the local daemon at unix://{DEFAULT_SOCKET}"
    return (
        "`docker context use default` to use the local daemon (`docker context ls` lists the others), "
        "or start the daemon that context names"
    )


def diagnose_connection_error(
    message: str, docker_host: str | Endpoint | None, sock: SocketInfo | None = None
) -> Diagnosis:
    """Map the SDK's connection error to what the operator should do."""
    if isinstance(docker_host, Endpoint):
        endpoint = docker_host
    elif docker_host:
        endpoint = Endpoint(docker_host, "DOCKER_HOST")
    else:
        endpoint = Endpoint(f"unix://{DEFAULT_SOCKET}")
    where = endpoint.describe()
    lowered = message.lower()
    if "permission denied" in lowered:
        return diagnose_permission(endpoint, sock)
    if "no such file" in lowered or "connection refused" in lowered or "filenotfounderror" in lowered:
        if endpoint.source is not None:
            return Diagnosis(
                f"no Docker daemon answers at {where}",
                f"{endpoint.source} points to a daemon that is not running or not there "
                "(the default socket is not used while it is set)",
                _not_the_default(endpoint),
            )
        return Diagnosis(
            f"no Docker daemon answers at {where}",
            "Docker is not installed, or its daemon is not running (a rootless daemon may not be started)",
            "install Docker Engine (https://docs.docker.com/engine/install/), then "
            "`sudo systemctl enable --now docker`; rootless: `systemctl --user start docker`",
        )
    return Diagnosis(
        f"the Docker daemon at {where} cannot be used: {message}",
        "the daemon is unhealthy, or "
        + (f"{endpoint.source} points to the wrong place" if endpoint.source else "DOCKER_HOST is needed"),
        "`docker info` shows the same error; `sudo journalctl -u docker` tells why"
        + (f"; {_not_the_default(endpoint)}" if endpoint.source else ""),
    )


def _user() -> tuple[str, int]:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return str(uid), uid


def diagnose_permission(endpoint: Endpoint, sock: SocketInfo | None = None) -> Diagnosis:
    """Who may open the socket (its owner, group and mode), and the one fix that follows from that."""
    path = socket_path(endpoint.url)
    if path is None:
        return Diagnosis(
            f"permission denied by the Docker daemon at {endpoint.describe()}",
            "the remote daemon or its proxy refuses this user",
            "check the credentials or TLS certificates for that daemon",
        )
    if sock is None:
        sock = read_socket(path)
    user, uid = _user()
    found = f"permission denied on the Docker socket ({endpoint.describe()})"
    if sock.mode is None:
        return Diagnosis(
            f"{found}; {sock.error or f'{path} cannot be examined'}",
            f"user {user} cannot even look at the socket: a folder on its path is closed to this user",
            f"`ls -ld {os.path.dirname(path)}`; use a daemon whose socket this user may reach",
        )
    owner = sock.owner or str(sock.uid)
    group = sock.group or str(sock.gid)
    found = f"{found}: {path} is owner {owner}, group {group}, mode {sock.mode_text}"
    if sock.uid not in (0, uid) and not sock.mode & 0o020:
        return Diagnosis(
            found,
            f"the socket is a rootless daemon of user {owner}: only {owner} may open it",
            f"run the suite as {owner}, or start a rootless daemon of your own "
            "(`dockerd-rootless-setuptool.sh install`, `systemctl --user start docker`) and "
            "`export DOCKER_HOST=unix://$XDG_RUNTIME_DIR/docker.sock`",
        )
    if not sock.mode & 0o020 or sock.gid == 0:
        return Diagnosis(
            found,
            f"no group may open the socket (group {group}, mode {sock.mode_text}): only root can use Docker",
            f"give it Docker's group: `sudo groupadd -f docker && sudo chgrp docker {path} && "
            f"sudo chmod 660 {path}` (for good: SocketGroup=docker in docker.socket, or the daemon's "
            f'`"group": "docker"`), then `sudo usermod -aG docker {user}` and log in again',
        )
    if sock.gid in os.getgroups() or sock.gid == os.getegid():
        return Diagnosis(
            found,
            f"user {user} is in group {group}, yet the socket refused it: an ACL, SELinux/AppArmor, "
            "or a daemon that checks more than the file mode",
            f"`getfacl {path}`; `sudo journalctl -u docker`; `ls -Z {path}`",
        )
    if sock.group and _listed_in_group(user, sock.group):
        return Diagnosis(
            found,
            f"user {user} was added to group {group}, but this login session started before that",
            f"log out and in again, or `newgrp {group}` in this shell",
        )
    return Diagnosis(
        found,
        f"user {user} is not in the socket's group `{group}`",
        f"`sudo usermod -aG {group} {user}`, then log in again (or `newgrp {group}`)",
    )


def _listed_in_group(user: str, group: str) -> bool:
    try:
        return user in grp.getgrnam(group).gr_mem
    except KeyError:
        return False


def negotiate(
    make: Callable[[str, int], docker.DockerClient], timeout: float, what: str = "docker version"
) -> tuple[docker.DockerClient, dict[str, Any]]:
    """A client speaking the daemon's API version, and the daemon's ``/version`` answer, from one
    round trip bounded by ``timeout`` (NativeCallTimeout, named ``what``).

    ``make(version, seconds)`` builds a client. The SDK's own negotiation (``version="auto"``)
    asks the daemon as the client is made, outside any deadline: a hung daemon would hang it.
    So a client with a fixed version asks ``GET /version`` without a version prefix (every
    daemon answers it, whatever its API range), and the client is made with the version that
    came back. The answer is also the engine's version: nobody needs to ask for it again.
    """
    import docker

    seconds = int(max(timeout, 1))
    probe = make(PROBE_API_VERSION, seconds + 5)
    try:
        answer = call_with_timeout(lambda: probe.api.version(api_version=False), timeout, what)
    finally:
        probe.close()
    api = answer.get("ApiVersion") if isinstance(answer, dict) else None
    if not isinstance(api, str):
        raise docker.errors.DockerException(
            f"the daemon's /version answer names no ApiVersion: {answer!r:.200}"
        )
    return make(api, seconds), answer


def hung_diagnosis(seconds: float, endpoint: Endpoint) -> Diagnosis:
    return Diagnosis(
        f"the Docker daemon at {endpoint.describe()} did not answer within {seconds:g} s",
        "the daemon is hung or overloaded",
        "`sudo systemctl restart docker`; `sudo journalctl -u docker` tells why",
    )


def connect(timeout: float, endpoint: Endpoint | None = None) -> tuple[docker.DockerClient, dict[str, Any]]:
    """A client of the daemon the SDK picks, and the daemon's ``/version`` answer, which came
    within ``timeout`` seconds (``negotiate``)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise DockerUnavailable(
            Diagnosis(
                f"the docker SDK cannot be imported: {exc}", "a broken installation", "`pip install docker`"
            )
        ) from None
    endpoint = endpoint or resolve_endpoint()
    try:
        client, version = negotiate(
            lambda version, seconds: docker.from_env(version=version, timeout=seconds), timeout
        )
    except NativeCallTimeout as exc:
        raise DockerUnavailable(hung_diagnosis(exc.seconds, endpoint)) from None
    except daemon_faults() as exc:
        if is_timeout(exc):
            raise DockerUnavailable(hung_diagnosis(timeout, endpoint)) from None
        raise DockerUnavailable(diagnose_connection_error(str(exc), endpoint)) from None
    return client, version
