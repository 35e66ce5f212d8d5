"""Guide step 2.2: Docker Engine is installed from Docker's packages, reachable, and safely configured."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_gpuhost.criteria.toolkit import daemon_config_problem, daemon_reload_risk
from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.facts.docker_engine import MIN_GPU_ENGINE, EngineFacts
from pytest_gpuhost.facts.toolkit import ToolkitFacts
from pytest_gpuhost.fixtures.docker import CHECK_DOCKER, DockerConnection, EngineProbe
from pytest_gpuhost.versions import version_tuple

pytestmark = pytest.mark.gpuhost_quick

DOCKER_INSTALL = "https://docs.docker.com/engine/install/"


def fail_with(diagnosis: Diagnosis) -> None:
    fail(diagnosis.found, diagnosis.cause, diagnosis.fix)


def test_docker_daemon_answers(
    gpuhost_docker_connection: DockerConnection, gpuhost_engine_probe: EngineProbe
) -> None:
    """The daemon answers this user, and answers `docker info` too (a daemon that answers a ping
    but not `info` is broken); every other Docker check needs it and is skipped otherwise."""
    assert CHECK_DOCKER == "test_docker_daemon_answers"
    if gpuhost_docker_connection.diagnosis is not None:
        fail_with(gpuhost_docker_connection.diagnosis)
    if gpuhost_engine_probe.diagnosis is not None:
        fail_with(gpuhost_engine_probe.diagnosis)


def test_docker_versions(
    gpuhost_engine: EngineFacts, gpuhost_suite_property: Callable[[str, object], None]
) -> None:
    """Versions go to the output and the JUnit report; `--gpus` needs Docker 19.03 or newer."""
    engine = gpuhost_engine
    for key, value in engine.properties().items():
        gpuhost_suite_property(key, value)
        print(f"gpuhost.metric {key.removeprefix('gpuhost.')}={value}")
    version = version_tuple(engine.engine_version)
    if version is not None and version[:2] < MIN_GPU_ENGINE:
        fail(
            f"Docker Engine {engine.engine_version} is older than 19.03",
            "GPU device requests (`docker run --gpus`) arrived with Docker 19.03",
            f"install a current Docker Engine from Docker's packages ({DOCKER_INSTALL})",
        )


def test_docker_not_from_snap(gpuhost_engine: EngineFacts) -> None:
    """The snap's confinement keeps dockerd from loading the host's libnvidia-ml.so."""
    evidence = gpuhost_engine.snap_evidence()
    if evidence:
        fail(
            f"Docker is the snap package: {evidence}",
            "the snap's confinement cannot load the driver's libnvidia-ml.so, so the NVIDIA toolkit cannot "
            "give its containers GPUs",
            f"`sudo snap remove docker`, then install Docker's packages ({DOCKER_INSTALL}) and the toolkit",
        )
    print(f"gpuhost.metric docker.executable={gpuhost_engine.executable or 'unknown'}")


def test_docker_socket_not_world_writable(gpuhost_engine: EngineFacts) -> None:
    """Whoever can write the socket is root on this host: it must not be open to every user."""
    if gpuhost_engine.remote:
        pytest.skip(
            f"the daemon at {gpuhost_engine.docker_host} is on another machine: no socket here to inspect"
        )
    socket = gpuhost_engine.socket
    if socket is None or not socket.exists:
        pytest.skip(f"no socket file at {socket.path if socket else 'the default path'} to inspect")
    if socket.error:
        pytest.skip(socket.error)
    print(
        f"gpuhost.metric docker.socket_mode={socket.mode_text} docker.socket_group={socket.group or socket.gid}"
    )
    if socket.world_writable:
        fail(
            f"the Docker socket is writable by every user: {socket.describe()}",
            "access to the Docker socket equals root on the host (any user can start a privileged container)",
            f"`sudo chmod 660 {socket.path} && sudo chown root:docker {socket.path}`, add only trusted users "
            "to the `docker` group (`sudo usermod -aG docker USER`), or use rootless Docker; if a unit or "
            "script sets the mode, fix it there too",
        )


def test_daemon_json_parses(gpuhost_toolkit: ToolkitFacts) -> None:
    """A broken daemon.json does no harm until the next restart, and then Docker does not start."""
    problem = daemon_config_problem(gpuhost_toolkit)
    if problem is not None:
        fail_with(problem)


def test_cgroup_driver_keeps_gpus(gpuhost_engine: EngineFacts, gpuhost_toolkit: ToolkitFacts) -> None:
    """A warning: systemd cgroups with the toolkit's hook lose GPUs on `systemctl daemon-reload`."""
    engine = gpuhost_engine
    print(
        f"gpuhost.metric docker.cgroup_driver={engine.cgroup_driver} docker.cgroup_version={engine.cgroup_version}"
    )
    risk = daemon_reload_risk(engine, gpuhost_toolkit)
    if risk is not None:
        warn(risk.found, risk.cause, risk.fix)
