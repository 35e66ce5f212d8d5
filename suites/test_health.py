"""GPU health: memory errors, Xid events, PCIe link, clocks, MIG, NVLink fabric, image CUDA requirement.

Each check is a small test over facts read once per session (``pytest_gpuhost.fixtures.health``);
the criteria live in ``pytest_gpuhost.facts.health``. A field the GPU does not support skips its
check as not applicable. Every check prints ``gpuhost.metric key=value`` lines of what it read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_gpuhost.criteria.fabric import judge_fabric_manager, judge_gpu_fabric
from pytest_gpuhost.criteria.health import (
    gpu_label,
    judge_clocks,
    judge_correctable_ecc,
    judge_ecc_mode,
    judge_mig,
    judge_pcie_link,
    judge_retired_pages,
    judge_row_remapping,
    judge_uncorrectable_ecc,
)
from pytest_gpuhost.criteria.image_cuda import judge_image_cuda
from pytest_gpuhost.criteria.xid import judge_unlisted_xids, judge_xids
from pytest_gpuhost.diagnosis import fail, report_verdict
from pytest_gpuhost.docker.images import configured_images, inspect_image_env
from pytest_gpuhost.facts.fabric import FabricFacts
from pytest_gpuhost.facts.health import F_CLOCKS, F_PCIE, HealthFacts, HealthSurvey, HealthThresholds
from pytest_gpuhost.facts.image_cuda import GpuTraits
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.facts.xid import KernelLog, XidEvent
from pytest_gpuhost.fixtures.health import LiveSampler
from pytest_gpuhost.settings import Settings

if TYPE_CHECKING:
    import docker

pytestmark = pytest.mark.gpuhost_quick


def health_of(survey: HealthSurvey, gpu: GpuInfo) -> HealthFacts:
    facts = survey.for_gpu(gpu)
    if facts is None:
        fail(
            f"the health fields of {gpu_label(gpu)} cannot be read from {survey.source}: "
            f"{survey.error or 'it does not list this GPU'}",
            "the GPU or the driver is in a bad state",
            "read `sudo dmesg | grep -i -e NVRM -e Xid`; `nvidia-smi -q -i "
            f"{gpu.index}`; reset the GPU or reboot",
        )
    return facts


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One image check per configured image (--gpuhost-image, --gpuhost-workload-image)."""
    if "cuda_image" not in metafunc.fixturenames:
        return
    from pytest_gpuhost.stash import SESSION_KEY

    session = metafunc.config.stash.get(SESSION_KEY, None)
    if session is None:
        metafunc.parametrize(
            "cuda_image", [pytest.param("", marks=pytest.mark.skip(reason="needs --gpuhost"))]
        )
        return
    images = configured_images(session.image_settings()[0])  # the images chosen for the driver
    metafunc.parametrize("cuda_image", [image for _, image in images], ids=[role for role, _ in images])


# -- memory --------------------------------------------------------------------------------------


@pytest.mark.gpuhost_needs("gpu_listing")
def test_ecc_mode(gpu: GpuInfo, gpuhost_health: HealthSurvey) -> None:
    """ECC is reported; off on a data-centre GPU, or a pending mode change, is a warning."""
    report_verdict(judge_ecc_mode(health_of(gpuhost_health, gpu)))


@pytest.mark.gpuhost_needs("gpu_listing")
def test_no_uncorrectable_ecc_errors(
    gpu: GpuInfo, gpuhost_health: HealthSurvey, gpuhost_health_thresholds: HealthThresholds
) -> None:
    """No uncorrectable ECC error since the driver loaded, and none in the GPU's lifetime."""
    report_verdict(judge_uncorrectable_ecc(health_of(gpuhost_health, gpu), gpuhost_health_thresholds))


@pytest.mark.gpuhost_needs("gpu_listing")
def test_correctable_ecc_errors(
    gpu: GpuInfo, gpuhost_health: HealthSurvey, gpuhost_health_thresholds: HealthThresholds
) -> None:
    """Correctable ECC errors since the driver loaded stay below the thresholds."""
    report_verdict(judge_correctable_ecc(health_of(gpuhost_health, gpu), gpuhost_health_thresholds))


@pytest.mark.gpuhost_needs("gpu_listing")
def test_no_retired_pages_pending(gpu: GpuInfo, gpuhost_health: HealthSurvey) -> None:
    """Page retirement (before Ampere): no retired page waits for a reset."""
    report_verdict(judge_retired_pages(health_of(gpuhost_health, gpu)))


@pytest.mark.gpuhost_needs("gpu_listing")
def test_row_remapping(gpu: GpuInfo, gpuhost_health: HealthSurvey) -> None:
    """Row remapping (Ampere and later): nothing pending, no remapping ever failed."""
    report_verdict(judge_row_remapping(health_of(gpuhost_health, gpu)))


# -- Xid -----------------------------------------------------------------------------------------


@pytest.mark.gpuhost_needs("gpu_listing")
def test_no_xid_errors(
    gpu: GpuInfo,
    gpuhost_kernel_log: KernelLog,
    gpuhost_xids: tuple[XidEvent, ...],
    gpuhost_health_thresholds: HealthThresholds,
) -> None:
    """No hardware or driver Xid for this GPU in the kernel log since boot; application Xids are reported."""
    mine = [event for event in gpuhost_xids if event.on_gpu(gpu.pci_bus_id)]
    report_verdict(judge_xids(gpu_label(gpu), mine, gpuhost_kernel_log, gpuhost_health_thresholds, gpu.index))


@pytest.mark.gpuhost_needs("gpu_present")
def test_no_xid_on_unlisted_gpus(
    gpuhost_facts: HostFacts, gpuhost_kernel_log: KernelLog, gpuhost_xids: tuple[XidEvent, ...]
) -> None:
    """Xids of a PCI address no listed GPU has: the trace of a GPU that fell off the bus."""
    known = [g.pci_bus_id for g in gpuhost_facts.nvml.gpus + gpuhost_facts.smi.gpus]
    report_verdict(judge_unlisted_xids(gpuhost_xids, known, gpuhost_kernel_log))


# -- PCIe and clocks -----------------------------------------------------------------------------


@pytest.mark.gpuhost_needs("gpu_listing")
def test_pcie_link(gpu: GpuInfo, gpuhost_live: LiveSampler) -> None:
    """The link runs at the generation and width the GPU and slot allow (measured under load when possible)."""
    measured = gpuhost_live.measure(gpu)
    report_verdict(judge_pcie_link(gpu, measured.link, measured.loaded, measured.unavailable.get(F_PCIE)))


@pytest.mark.gpuhost_needs("gpu_listing")
def test_no_clock_slowdown(
    gpu: GpuInfo, gpuhost_live: LiveSampler, gpuhost_health_thresholds: HealthThresholds
) -> None:
    """No hardware slowdown, thermal slowdown or power brake; the software power cap is reported."""
    measured = gpuhost_live.measure(gpu)
    report_verdict(
        judge_clocks(gpu, measured.clocks, measured.unavailable.get(F_CLOCKS), gpuhost_health_thresholds)
    )


# -- MIG and fabric ------------------------------------------------------------------------------


@pytest.mark.gpuhost_needs("gpu_listing")
def test_mig_mode(gpu: GpuInfo, gpuhost_health: HealthSurvey, gpuhost_mig_expected: str | None) -> None:
    """The current MIG mode is the pending one (nothing waits for a reset) and the expected one."""
    report_verdict(judge_mig(health_of(gpuhost_health, gpu), gpuhost_mig_expected))


@pytest.mark.gpuhost_needs("driver")
def test_fabric_manager(
    gpuhost_fabric: FabricFacts, gpuhost_facts: HostFacts, gpuhost_health: HealthSurvey
) -> None:
    """On NVSwitch systems nv-fabricmanager runs, of the driver's version."""
    on_fabric = sum(1 for h in gpuhost_health.gpus if h.fabric_state is not None)
    report_verdict(judge_fabric_manager(gpuhost_fabric, gpuhost_facts.driver_version, on_fabric))


@pytest.mark.gpuhost_needs("gpu_listing")
def test_gpu_fabric_registered(
    gpu: GpuInfo, gpuhost_health: HealthSurvey, gpuhost_fabric: FabricFacts
) -> None:
    """On an NVLink fabric (NVSwitch, HGX board) the GPU's registration completed."""
    report_verdict(judge_gpu_fabric(health_of(gpuhost_health, gpu), len(gpuhost_fabric.nvswitches)))


# -- images --------------------------------------------------------------------------------------


@pytest.mark.gpuhost_needs("driver")
def test_image_cuda_requirement(
    cuda_image: str,
    gpuhost_health_docker: docker.DockerClient,
    gpuhost_facts: HostFacts,
    gpuhost_health: HealthSurvey,
    gpuhost_settings: Settings,
) -> None:
    """The image's NVIDIA_REQUIRE_CUDA is met by the driver's CUDA version (or its forward compatibility)."""
    env = inspect_image_env(gpuhost_health_docker, cuda_image, gpuhost_settings.timeout)
    if env is None:
        pytest.skip(
            f"{cuda_image} is not present locally; the container checks pull it (--gpuhost-pull), "
            "or `docker pull` it first"
        )
    capability = {g.uuid: g.compute_capability for g in gpuhost_facts.gpus}
    traits = [GpuTraits(h.brand, capability.get(h.uuid)) for h in gpuhost_health.gpus]
    report_verdict(
        judge_image_cuda(
            cuda_image, env, gpuhost_facts.cuda_driver_version, gpuhost_facts.driver_version, traits
        )
    )
