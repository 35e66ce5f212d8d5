"""Fixtures the shipped suite uses, registered only under ``--gpuhost``."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.host import Host
from pytest_gpuhost.session import SESSION_KEY, GpuhostSession
from pytest_gpuhost.settings import Settings


@pytest.fixture(scope="session")
def gpuhost_session(pytestconfig: pytest.Config) -> GpuhostSession:
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def gpuhost_settings(gpuhost_session: GpuhostSession) -> Settings:
    """The run's settings, with the images the user left to the suite chosen for the driver."""
    return gpuhost_session.image_settings()[0]


@pytest.fixture(scope="session")
def gpuhost_target(request: pytest.FixtureRequest, gpuhost_session: GpuhostSession) -> str:
    """The name of the host under check: a session-scoped parameter in fleet runs, so that every
    session fixture depending on the host exists once per host."""
    return str(getattr(request, "param", gpuhost_session.host.name))


@pytest.fixture(scope="session")
def gpuhost_facts(gpuhost_session: GpuhostSession, gpuhost_target: str) -> HostFacts:
    return gpuhost_session.facts_for(gpuhost_target)


@pytest.fixture(scope="session")
def gpuhost_host(gpuhost_session: GpuhostSession, gpuhost_target: str) -> Host:
    return gpuhost_session.host_named(gpuhost_target)


@pytest.fixture(scope="session")
def gpuhost_suite_property(
    gpuhost_session: GpuhostSession, gpuhost_target: str
) -> Callable[[str, object], None]:
    """pytest's ``record_testsuite_property`` for the host under check, which survives pytest-xdist."""
    return functools.partial(gpuhost_session.record_suite_property, gpuhost_target)


@pytest.fixture(scope="session", autouse=True)
def _gpuhost_suite_properties(
    gpuhost_suite_property: Callable[[str, object], None], gpuhost_facts: HostFacts
) -> None:
    """The host inventory as JUnit testsuite properties, for dashboards."""
    gpuhost_suite_property("gpuhost.host", gpuhost_facts.host)
    gpuhost_suite_property("gpuhost.driver", gpuhost_facts.driver_version or "none")
    gpuhost_suite_property("gpuhost.cuda", gpuhost_facts.cuda_driver_version or "none")
    gpuhost_suite_property("gpuhost.gpu_count", len(gpuhost_facts.gpus))
    for gpu in gpuhost_facts.gpus:
        gpuhost_suite_property(f"gpuhost.gpu{gpu.index}", f"{gpu.name} {gpu.uuid} {gpu.pci_bus_id}")
