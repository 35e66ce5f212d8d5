"""Fixtures of guide steps 2.2 and 2.3: the daemon connection, engine facts and toolkit facts.

The daemon is asked once per session. When it cannot be reached, ``test_docker_daemon_answers``
fails with the diagnosis and every check that needs the daemon is skipped with a reason that
names that check, like the GPU preconditions do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from pytest_gpuhost import prefetch
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker_client import DockerUnavailable, connect
from pytest_gpuhost.docker_tunnel import TunnelError, open_remote_client
from pytest_gpuhost.facts.docker_engine import EngineFacts, gather_engine
from pytest_gpuhost.facts.model import Precondition
from pytest_gpuhost.facts.toolkit import ToolkitFacts, gather_toolkit
from pytest_gpuhost.host import Host
from pytest_gpuhost.remote import is_remote
from pytest_gpuhost.settings import Settings
from pytest_gpuhost.timeouts import NativeCallTimeout

if TYPE_CHECKING:
    import docker

CHECK_DOCKER = "test_docker_daemon_answers"
CONNECTIONS_KEY = pytest.StashKey[dict[str, "DockerConnection"]]()


@dataclass(frozen=True)
class DockerConnection:
    """The daemon's client, or the diagnosis of why there is none."""

    client: docker.DockerClient | None
    diagnosis: Diagnosis | None
    docker_host: str | None

    @property
    def precondition(self) -> Precondition:
        reason = self.diagnosis.found if self.diagnosis else ""
        return Precondition("docker", ok=self.client is not None, check=CHECK_DOCKER, reason=reason)

    def require(self) -> docker.DockerClient:
        """The client; skips the calling check when the daemon cannot be used."""
        if self.client is None:
            pre = self.precondition
            pytest.skip(f"needs docker: {pre.check} failed: {pre.reason}")
        return self.client


def docker_connection(config: pytest.Config, host: Host, timeout: float) -> DockerConnection:
    """Connect once per host and session; every later caller gets the same outcome.

    The local daemon is found as the docker CLI finds it (``DOCKER_HOST`` or the default socket);
    a remote host's daemon through an SSH tunnel to its socket, closed when pytest ends.
    """
    connections = config.stash.setdefault(CONNECTIONS_KEY, {})
    if host.name not in connections:
        connections[host.name] = _remote(config, host, timeout) if is_remote(host) else _local(timeout)
    return connections[host.name]


def _local(timeout: float) -> DockerConnection:
    docker_host = os.environ.get("DOCKER_HOST") or None
    try:
        return DockerConnection(connect(timeout), None, docker_host)
    except DockerUnavailable as exc:
        return DockerConnection(None, exc.diagnosis, docker_host)


def _remote(config: pytest.Config, host: Host, timeout: float) -> DockerConnection:
    """``docker_host`` is the socket as the host sees it: the engine's facts are the host's."""
    try:
        client, tunnel, path = open_remote_client(host, timeout)
    except TunnelError as exc:
        return DockerConnection(None, exc.diagnosis, None)
    config.add_cleanup(tunnel.close)
    return DockerConnection(client, None, f"unix://{path}")


def install(config: pytest.Config) -> None:
    """Register these fixtures once, whether the session or ``-p`` loaded the module first."""
    module = sys.modules[__name__]
    if not config.pluginmanager.is_registered(module):
        config.pluginmanager.register(module, "gpuhost-docker-fixtures")


@pytest.fixture(scope="session")
def gpuhost_docker_connection(
    pytestconfig: pytest.Config, gpuhost_settings: Settings, gpuhost_host: Host
) -> DockerConnection:
    """The host's daemon: the local one, or a remote host's through an SSH tunnel."""
    return docker_connection(pytestconfig, gpuhost_host, gpuhost_settings.timeout)


@pytest.fixture(scope="session")
def gpuhost_engine(
    pytestconfig: pytest.Config,
    gpuhost_docker_connection: DockerConnection,
    gpuhost_host: Host,
    gpuhost_settings: Settings,
) -> EngineFacts:
    """The engine's facts; checks that use them are skipped when the daemon is unreachable."""
    return prefetch.value(
        pytestconfig,
        "gpuhost_engine",
        gpuhost_host.name,
        lambda: _engine(gpuhost_docker_connection, gpuhost_host, gpuhost_settings.timeout),
    )


def _engine(connection: DockerConnection, host: Host, timeout: float) -> EngineFacts:
    client = connection.require()
    try:
        return gather_engine(client, host, timeout, connection.docker_host)
    except NativeCallTimeout as exc:
        pytest.skip(f"needs docker: `docker info` did not answer: {exc}")


@pytest.fixture(scope="session")
def gpuhost_toolkit(
    pytestconfig: pytest.Config,
    gpuhost_docker_connection: DockerConnection,
    gpuhost_host: Host,
    gpuhost_settings: Settings,
) -> ToolkitFacts:
    """The toolkit's files and commands; the daemon only tells which daemon.json is in use."""
    return prefetch.value(
        pytestconfig,
        "gpuhost_toolkit",
        gpuhost_host.name,
        lambda: _toolkit(pytestconfig, gpuhost_docker_connection, gpuhost_host, gpuhost_settings.timeout),
    )


def _toolkit(config: pytest.Config, connection: DockerConnection, host: Host, timeout: float) -> ToolkitFacts:
    engine: EngineFacts | None = None
    if connection.client is not None:
        try:
            engine = prefetch.value(
                config, "gpuhost_engine", host.name, lambda: _engine(connection, host, timeout)
            )
        except pytest.skip.Exception:
            engine = None  # a hung `docker info`: read /etc/docker/daemon.json
    return gather_toolkit(host, timeout, engine)


def _prefetched(fixture: str) -> Callable[[pytest.Config, str], object]:
    """How ``prefetch`` computes one of these fixtures for a host before the checks run."""

    def compute(config: pytest.Config, name: str) -> object:
        from pytest_gpuhost.session import SESSION_KEY

        session = config.stash[SESSION_KEY]
        host, timeout = session.host_named(name), session.settings.timeout
        connection = docker_connection(config, host, timeout)
        if fixture == "gpuhost_engine":
            return _engine(connection, host, timeout)
        return _toolkit(config, connection, host, timeout)

    return compute


for _fixture in ("gpuhost_engine", "gpuhost_toolkit"):
    prefetch.register(_fixture, _prefetched(_fixture))
