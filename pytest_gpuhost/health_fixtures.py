"""Fixtures of the GPU health checks (``suites/test_health.py``), registered only under ``--gpuhost``.

Everything here is read once per session: the health facts of every GPU, the kernel log, the
fabric facts, and, per GPU, one live measurement of the PCIe link and clock-event reasons
(under load where a load is available, see ``gpuhost_gpu_load``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuhost import prefetch
from pytest_gpuhost.diagnosis import Diagnosis, warn
from pytest_gpuhost.docker_fixtures import DockerConnection
from pytest_gpuhost.facts.health import (
    FabricFacts,
    HealthSurvey,
    HealthThresholds,
    KernelLog,
    LiveMeasurement,
    Sampling,
    XidEvent,
    gather_fabric,
    gather_health,
    image_env,
    measure_under_load,
    parse_xids,
    read_kernel_log,
    read_live,
)
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.host import Host
from pytest_gpuhost.options import TIERS
from pytest_gpuhost.settings import Settings
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

if TYPE_CHECKING:
    import docker

GpuLoad = Callable[[GpuInfo], contextlib.AbstractContextManager[object]]
"""Starts a short load on one GPU for a ``with`` block; the GPU is busy once ``__enter__`` returns."""


@dataclass
class LiveSampler:
    """Measures each GPU's PCIe link and clock-event reasons once, under load when it may."""

    host: Host
    timeout: float
    use_nvml: bool
    load: GpuLoad | None
    sampling: Sampling = field(default_factory=Sampling)
    _measured: dict[str, LiveMeasurement] = field(default_factory=dict)
    _load_failed: dict[str, Diagnosis] = field(default_factory=dict)

    def measure(self, gpu: GpuInfo) -> LiveMeasurement:
        """The measurement; when the load cannot start, one at idle, and each check says so."""
        key = gpu.uuid or gpu.pci_bus_id
        if key not in self._measured:
            load = self.load
            load_fn = (lambda: load(gpu)) if load is not None else None

            def read() -> Any:
                return read_live(self.host, gpu, self.timeout, self.use_nvml)

            try:
                self._measured[key] = measure_under_load(read, load_fn, self.sampling)
            except _load_errors() as exc:
                self._load_failed[key] = load_diagnosis(exc)
                self._measured[key] = measure_under_load(read, None, self.sampling)
        failed = self._load_failed.get(key)
        if failed is not None:
            print(f"gpuhost.note the load did not start, so this was read at idle: {failed.found}")
            warn(
                f"the GPU load behind the PCIe and clock checks did not start; read at idle instead: {failed.found}",
                failed.cause,
                failed.fix,
            )
        return self._measured[key]


def _load_errors() -> tuple[type[BaseException], ...]:
    from pytest_gpuhost.containers import ContainerFailure
    from pytest_gpuhost.images import ImageUnavailable

    errors: list[type[BaseException]] = [ContainerFailure, ImageUnavailable]
    with contextlib.suppress(ImportError):
        import docker
        import requests

        errors += [docker.errors.DockerException, requests.exceptions.RequestException]
    return tuple(errors)


def load_diagnosis(exc: BaseException) -> Diagnosis:
    """The failure of the load as a diagnosis (the container's own, or the daemon's error)."""
    found = getattr(exc, "diagnosis", None)
    if isinstance(found, Diagnosis):
        return found
    return Diagnosis(
        f"the load container failed: {exc}",
        "the Docker daemon refused or lost the container",
        "run the suite's matmul check (step 4.1) to see the workload's own error",
    )


@pytest.fixture(scope="session")
def gpuhost_health_thresholds() -> HealthThresholds:
    """The health limits; host profiles will replace the defaults."""
    return HealthThresholds()


@pytest.fixture(scope="session")
def gpuhost_health(
    pytestconfig: pytest.Config, gpuhost_host: Host, gpuhost_facts: HostFacts, gpuhost_settings: Settings
) -> HealthSurvey:
    """Every GPU's health facts: through NVML when it answered at session start, else nvidia-smi."""
    return prefetch.value(
        pytestconfig,
        "gpuhost_health",
        gpuhost_host.name,
        lambda: gather_health(gpuhost_host, gpuhost_settings.timeout, use_nvml=gpuhost_facts.nvml.ok),
    )


@pytest.fixture(scope="session")
def gpuhost_kernel_log(
    pytestconfig: pytest.Config, gpuhost_host: Host, gpuhost_settings: Settings
) -> KernelLog:
    return prefetch.value(
        pytestconfig,
        "gpuhost_kernel_log",
        gpuhost_host.name,
        lambda: read_kernel_log(gpuhost_host, gpuhost_settings.timeout),
    )


def _prefetch_health(config: pytest.Config, name: str) -> HealthSurvey:
    from pytest_gpuhost.session import SESSION_KEY

    session = config.stash[SESSION_KEY]
    use_nvml = session.facts_for(name).nvml.ok
    return gather_health(session.host_named(name), session.settings.timeout, use_nvml=use_nvml)


def _prefetch_kernel_log(config: pytest.Config, name: str) -> KernelLog:
    from pytest_gpuhost.session import SESSION_KEY

    session = config.stash[SESSION_KEY]
    return read_kernel_log(session.host_named(name), session.settings.timeout)


prefetch.register("gpuhost_health", _prefetch_health)  # all hosts at once in a fleet run
prefetch.register("gpuhost_kernel_log", _prefetch_kernel_log)


@pytest.fixture(scope="session")
def gpuhost_xids(gpuhost_kernel_log: KernelLog) -> tuple[XidEvent, ...]:
    return parse_xids(gpuhost_kernel_log.text or "")


@pytest.fixture(scope="session")
def gpuhost_fabric(gpuhost_host: Host, gpuhost_settings: Settings) -> FabricFacts:
    return gather_fabric(gpuhost_host, gpuhost_settings.timeout)


@pytest.fixture(scope="session")
def gpuhost_gpu_load(
    request: pytest.FixtureRequest, gpuhost_settings: Settings, gpuhost_host: Host
) -> GpuLoad | None:
    """A short GPU load for the PCIe link and clock checks: the burn workload in a container.

    Only from the container tier up, and only when GPU containers work. Without a load those
    checks read the GPU at idle: a lower PCIe generation is then only a note (idle links slow
    down), a narrower link still fails.
    """
    # ``gpuhost_host`` stays a parameter: it makes this fixture one per host in a fleet run.
    if gpuhost_settings.tier_rank() < TIERS.index("container"):
        return None
    from pytest_gpuhost.workload_fixtures import container_load

    probe = request.getfixturevalue("gpuhost_gpu_container")
    if probe.diagnosis is not None:
        return None
    image = request.getfixturevalue("gpuhost_workload_image")
    return container_load(request.getfixturevalue("gpuhost_containers"), gpuhost_settings, image)


@pytest.fixture(scope="session")
def gpuhost_live(
    gpuhost_host: Host,
    gpuhost_facts: HostFacts,
    gpuhost_settings: Settings,
    gpuhost_gpu_load: GpuLoad | None,
) -> LiveSampler:
    """The load runs from the container tier on; the quick tier reads at idle."""
    loaded_tier = gpuhost_settings.tier_rank() >= TIERS.index("container")
    return LiveSampler(
        gpuhost_host,
        gpuhost_settings.timeout,
        use_nvml=gpuhost_facts.nvml.ok,
        load=gpuhost_gpu_load if loaded_tier else None,
    )


@pytest.fixture(scope="session")
def gpuhost_mig_expected(gpuhost_settings: Settings) -> str | None:
    """``--gpuhost-mig on|off``, or None when not given (or the option does not exist yet)."""
    return gpuhost_settings.mig


@pytest.fixture(scope="session")
def gpuhost_health_docker(gpuhost_docker_connection: DockerConnection) -> docker.DockerClient:
    """The session's daemon connection, for image inspection; its absence skips the image checks."""
    return gpuhost_docker_connection.require()


def configured_images(settings: Settings) -> list[tuple[str, str]]:
    """``(role, image)`` of each image the suite runs workloads in, each image once."""
    images = [("image", settings.image)]
    if settings.workload_image and settings.workload_image != settings.image:
        images.append(("workload_image", settings.workload_image))
    return images


def inspect_image_env(client: docker.DockerClient, image: str, timeout: float) -> dict[str, str] | None:
    """The image's environment (``docker image inspect``), or None when it is not present locally."""
    import docker

    def attrs() -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = client.images.get(image).attrs
        except docker.errors.ImageNotFound:
            return None
        return found

    try:
        found = call_with_timeout(attrs, timeout, "docker image inspect")
    except NativeCallTimeout as exc:
        pytest.skip(f"needs docker: `docker image inspect {image}` did not answer: {exc}")
    return None if found is None else image_env(found)
