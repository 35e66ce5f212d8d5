"""Fixtures of guide steps 2.2 and 2.3: the daemon connection, engine facts and toolkit facts.

The daemon is asked once per session. When it cannot be reached, ``test_docker_daemon_answers``
fails with the diagnosis and every check that needs the daemon is skipped with a reason that
names that check, like the GPU preconditions do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from pytest_gpuhost import prefetch
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker_client import DockerUnavailable, Endpoint, connect, resolve_endpoint
from pytest_gpuhost.docker_errors import DaemonFault, diagnose, mapped, transport_faults
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
    endpoint: Endpoint | None = None  # what chose the daemon (DOCKER_HOST, a context), for diagnoses

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
    """The daemon the SDK itself picks (DOCKER_HOST, the CLI's context, the default socket):
    the checks of its socket and process look at that one."""
    endpoint = resolve_endpoint()
    try:
        return DockerConnection(connect(timeout, endpoint), None, endpoint.url, endpoint)
    except DockerUnavailable as exc:
        return DockerConnection(None, exc.diagnosis, endpoint.url, endpoint)


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


@dataclass(frozen=True)
class EngineProbe:
    """The engine's facts, or why the daemon that answered a ping could not give them."""

    facts: EngineFacts | None
    diagnosis: Diagnosis | None


@pytest.fixture(scope="session")
def gpuhost_engine_probe(
    pytestconfig: pytest.Config,
    gpuhost_docker_connection: DockerConnection,
    gpuhost_host: Host,
    gpuhost_settings: Settings,
) -> EngineProbe:
    """``docker version`` and ``docker info``, asked once; a failure is ``test_docker_daemon_answers``'s."""
    return prefetch.value(
        pytestconfig,
        "gpuhost_engine_probe",
        gpuhost_host.name,
        lambda: _probe(gpuhost_docker_connection, gpuhost_host, gpuhost_settings.timeout),
    )


def _probe(connection: DockerConnection, host: Host, timeout: float) -> EngineProbe:
    if connection.client is None:
        return EngineProbe(None, None)
    where = connection.endpoint.describe() if connection.endpoint else connection.docker_host
    try:
        with mapped("docker info", where, connection.client):
            facts = gather_engine(connection.client, host, timeout, connection.docker_host)
    except DaemonFault as fault:
        return EngineProbe(None, fault.diagnosis)
    except NativeCallTimeout as exc:
        return EngineProbe(None, diagnose(exc, exc.what, where))
    return EngineProbe(facts, None)


@pytest.fixture(scope="session")
def gpuhost_engine(
    gpuhost_docker_connection: DockerConnection, gpuhost_engine_probe: EngineProbe
) -> EngineFacts:
    """The engine's facts; checks that use them are skipped when the daemon is unreachable."""
    gpuhost_docker_connection.require()
    if gpuhost_engine_probe.facts is None:
        found = gpuhost_engine_probe.diagnosis.found if gpuhost_engine_probe.diagnosis else "no engine facts"
        pytest.skip(f"needs docker: {CHECK_DOCKER} failed: {found}")
    return gpuhost_engine_probe.facts


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
        # facts None when `docker info` failed or hung: read /etc/docker/daemon.json
        engine = prefetch.value(
            config, "gpuhost_engine_probe", host.name, lambda: _probe(connection, host, timeout)
        ).facts
    return gather_toolkit(host, timeout, engine)


def _prefetched(fixture: str) -> Callable[[pytest.Config, str], object]:
    """How ``prefetch`` computes one of these fixtures for a host before the checks run."""

    def compute(config: pytest.Config, name: str) -> object:
        from pytest_gpuhost.session import SESSION_KEY

        session = config.stash[SESSION_KEY]
        host, timeout = session.host_named(name), session.settings.timeout
        connection = docker_connection(config, host, timeout)
        if fixture == "gpuhost_engine_probe":
            return _probe(connection, host, timeout)
        return _toolkit(config, connection, host, timeout)

    return compute


for _fixture in ("gpuhost_engine_probe", "gpuhost_toolkit"):
    prefetch.register(_fixture, _prefetched(_fixture))


def _as_diagnosis(exc: BaseException, when: str) -> Diagnosis | None:
    """The diagnosis an escaping exception carries (ContainerFailure, DaemonFault, ...), or the one
    its Docker transport error maps to; None for anything else (a check's own error)."""
    carried = getattr(exc, "diagnosis", None)
    if isinstance(carried, Diagnosis):
        return carried
    if isinstance(exc, transport_faults()):
        return diagnose(exc, f"a Docker call during {when}")
    return None


def _failing_as_diagnosis(when: str) -> Generator[None, None, None]:
    """The body of a hook wrapper: a Docker failure escaping the hook fails the check as its diagnosis."""
    try:
        return (yield)
    except Exception as exc:
        diagnosis = _as_diagnosis(exc, when)
        if diagnosis is None:
            raise
    # Outside the except block: the report shows the diagnosis alone, not the exception chain.
    pytest.fail(str(diagnosis), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """A Docker failure that no check guards still ends as a diagnosis, never as a urllib3 traceback."""
    return (yield from _failing_as_diagnosis("setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _failing_as_diagnosis(item.name))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """Session fixtures end in the last check's teardown: their cleanup's daemon faults are not that
    check's error. They are one line in the terminal; the next session's sweep removes leftovers."""
    try:
        return (yield)
    except Exception as exc:
        diagnosis = _as_diagnosis(exc, "cleanup")
        if diagnosis is None:
            raise
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-gpuhost: cleanup: {diagnosis.found}", yellow=True)
        return None
