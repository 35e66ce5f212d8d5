"""Guide step 2.3: the NVIDIA Container Toolkit is installed, registered with Docker, and its CDI spec is current."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.facts.toolkit import (
    CDI_DIRS,
    CDI_GENERATE,
    CDI_KIND,
    ToolkitFacts,
    broken_tools,
    cdi_driver_problem,
    cdi_gpu_problem,
    cdi_host_path_problem,
    cdi_parse_problem,
    cdi_shadowing_warning,
    default_runtime_warning,
    missing_toolkit,
    mode_needs,
    rootless_cgroups_problem,
    runtime_problem,
    version_skew,
)
from pytest_gpuhost.settings import Settings

pytestmark = pytest.mark.quick

CHECK_CDI = "test_cdi_specs_parse"
CHECK_TOOLKIT = "test_toolkit_installed"


def fail_with(diagnosis: Diagnosis) -> None:
    fail(diagnosis.found, diagnosis.cause, diagnosis.fix)


def warn_with(diagnosis: Diagnosis) -> None:
    warn(diagnosis.found, diagnosis.cause, diagnosis.fix)


def test_toolkit_installed(
    gpuhost_toolkit: ToolkitFacts,
    gpuhost_settings: Settings,
    gpuhost_suite_property: Callable[[str, object], None],
) -> None:
    """The commands the runtime's mode needs are on PATH and answer --version (cdi mode needs no nvidia-container-cli)."""
    assert CHECK_TOOLKIT == "test_toolkit_installed"
    needs = mode_needs(gpuhost_toolkit, gpuhost_settings.gpu_access)
    for key, value in {**gpuhost_toolkit.properties(), **needs.properties()}.items():
        gpuhost_suite_property(key, value)
        print(f"gpuhost.metric {key.removeprefix('gpuhost.')}={value}")
    for finding in (missing_toolkit(gpuhost_toolkit, needs), broken_tools(gpuhost_toolkit, needs)):
        if finding is not None:
            fail_with(finding)
    skew = version_skew(gpuhost_toolkit)
    if skew is not None:
        warn_with(skew)


def test_nvidia_runtime_registered(gpuhost_engine: EngineFacts, gpuhost_toolkit: ToolkitFacts) -> None:
    """`nvidia` is in daemon.json and in `docker info`: configured, and the daemon restarted since."""
    print(f"gpuhost.metric docker.runtimes={','.join(sorted(gpuhost_engine.runtimes))}")
    toolkit = gpuhost_toolkit
    if (
        not toolkit.installed
        and "nvidia" not in gpuhost_engine.runtimes
        and "nvidia" not in toolkit.configured_runtimes
    ):
        pytest.skip(f"needs the toolkit: {CHECK_TOOLKIT} failed: none of its commands is installed")
    problem = runtime_problem(gpuhost_engine, gpuhost_toolkit)
    if problem is not None:
        fail_with(problem)


def test_default_runtime_policy(gpuhost_engine: EngineFacts) -> None:
    """A warning when `nvidia` is the default runtime: then every CUDA image gets every GPU."""
    print(f"gpuhost.metric docker.default_runtime={gpuhost_engine.default_runtime}")
    finding = default_runtime_warning(gpuhost_engine)
    if finding is not None:
        warn_with(finding)


def test_rootless_toolkit_config(gpuhost_engine: EngineFacts, gpuhost_toolkit: ToolkitFacts) -> None:
    """Rootless Docker needs the toolkit told not to touch device cgroups."""
    if not gpuhost_engine.rootless:
        pytest.skip("the daemon is not rootless")
    problem = rootless_cgroups_problem(gpuhost_engine, gpuhost_toolkit)
    if problem is not None:
        fail_with(problem)


def _require_specs(toolkit: ToolkitFacts, settings: Settings) -> None:
    if toolkit.cdi.nvidia or toolkit.cdi.errors:
        return
    where = ", ".join(CDI_DIRS)
    if settings.gpu_access == "cdi":
        fail(
            f"no CDI spec of kind {CDI_KIND} in {where}, and --gpuhost-gpu-access is cdi",
            "the spec was never generated, or it lived in /var/run/cdi and a reboot cleared it",
            f"`{CDI_GENERATE}`; toolkit 1.18+ keeps /var/run/cdi/nvidia.yaml current with "
            "`sudo systemctl enable --now nvidia-cdi-refresh.path`",
        )
    pytest.skip(
        f"no CDI spec of kind {CDI_KIND} in {where} (CDI is optional with --gpuhost-gpu-access {settings.gpu_access})"
    )


def _require_usable_specs(toolkit: ToolkitFacts) -> None:
    if not toolkit.cdi.nvidia:
        reason = "no usable spec" if toolkit.cdi.errors else f"no CDI spec of kind {CDI_KIND}"
        pytest.skip(f"needs a CDI spec: {CHECK_CDI}: {reason}")


def test_cdi_specs_parse(gpuhost_toolkit: ToolkitFacts, gpuhost_settings: Settings) -> None:
    """Every spec in /etc/cdi and /var/run/cdi parses: one broken spec breaks every CDI device."""
    assert CHECK_CDI == "test_cdi_specs_parse"
    _require_specs(gpuhost_toolkit, gpuhost_settings)
    cdi = gpuhost_toolkit.cdi
    for spec in cdi.nvidia:
        print(
            f"gpuhost.metric cdi.spec={spec.path} cdi.version={spec.cdi_version} cdi.devices={len(spec.device_names)}"
        )
    problem = cdi_parse_problem(cdi)
    if problem is not None:
        fail_with(problem)
    shadowing = cdi_shadowing_warning(cdi)
    if shadowing is not None:
        warn_with(shadowing)


@pytest.mark.gpuhost_needs("gpu_listing")
def test_cdi_spec_names_gpu(gpuhost_toolkit: ToolkitFacts, gpu: GpuInfo) -> None:
    """The spec names this GPU (by index or UUID), so `--device nvidia.com/gpu=N` resolves."""
    _require_usable_specs(gpuhost_toolkit)
    problem = cdi_gpu_problem(gpuhost_toolkit.cdi, gpu)
    if problem is not None:
        fail_with(problem)


@pytest.mark.gpuhost_needs("driver")
def test_cdi_spec_matches_driver(gpuhost_toolkit: ToolkitFacts, gpuhost_facts: HostFacts) -> None:
    """The spec mounts the running driver's libraries (libcuda.so.<version>), not an older driver's."""
    _require_usable_specs(gpuhost_toolkit)
    problem = cdi_driver_problem(gpuhost_toolkit.cdi, gpuhost_facts.driver_version)
    if problem is not None:
        fail_with(problem)


def test_cdi_spec_host_paths_exist(gpuhost_toolkit: ToolkitFacts) -> None:
    """Every hostPath a spec mounts exists: a stale spec after a driver upgrade is the common failure."""
    _require_usable_specs(gpuhost_toolkit)
    problem = cdi_host_path_problem(gpuhost_toolkit.cdi)
    if problem is not None:
        fail_with(problem)
