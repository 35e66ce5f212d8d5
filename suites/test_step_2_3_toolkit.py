"""Guide step 2.3: the NVIDIA Container Toolkit is installed, registered with Docker, and its CDI spec is current."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_gpuhost.criteria.daemon_reload import daemon_reload_problem, reload_unavailable
from pytest_gpuhost.criteria.toolkit import (
    broken_tools,
    cdi_driver_problem,
    cdi_gpu_problem,
    cdi_host_path_problem,
    cdi_parse_problem,
    cdi_shadowing_warning,
    default_runtime_warning,
    missing_toolkit,
    rootless_cgroups_problem,
    runtime_problem,
    version_skew,
)
from pytest_gpuhost.criteria.toolkit_pitfalls import (
    cdi_support_problem,
    gpus_under_runc_problem,
    hook_path_problem,
)
from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.docker.containers import ALL_GPUS, ContainerFailure, Containers, diagnose_output
from pytest_gpuhost.facts.daemon_reload import DevChar
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.facts.toolkit import (
    CDI_DIRS,
    CDI_GENERATE,
    CDI_KIND,
    ToolkitFacts,
    find_hook_on_daemon_path,
    mode_needs,
)
from pytest_gpuhost.hosts.host import Host
from pytest_gpuhost.hosts.remote import is_remote
from pytest_gpuhost.settings import Settings

pytestmark = pytest.mark.gpuhost_quick

CHECK_CDI = "test_cdi_specs_parse"
CHECK_TOOLKIT = "test_toolkit_installed"
CHECK_RELOAD = "test_gpus_survive_daemon_reload"


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


def test_default_runtime_policy(gpuhost_engine: EngineFacts, gpuhost_toolkit: ToolkitFacts) -> None:
    """A warning when `nvidia` is the default runtime: --gpus works without --runtime nvidia, and every
    CUDA image gets every GPU."""
    print(f"gpuhost.metric docker.default_runtime={gpuhost_engine.default_runtime}")
    finding = default_runtime_warning(gpuhost_engine, gpuhost_toolkit)
    if finding is not None:
        warn_with(finding)


def test_access_mode_wiring(
    gpuhost_engine: EngineFacts, gpuhost_toolkit: ToolkitFacts, gpuhost_host: Host, gpuhost_settings: Settings
) -> None:
    """The access mode can work here: --gpus reaches the nvidia runtime and the hook, CDI is on (Docker 25+)."""
    access = gpuhost_settings.gpu_access
    print(f"gpuhost.metric toolkit.access={access} docker.version={gpuhost_engine.engine_version}")
    if not gpuhost_toolkit.installed and access != "devices":
        pytest.skip(f"needs the toolkit: {CHECK_TOOLKIT} failed: none of its commands is installed")
    for problem in (
        gpus_under_runc_problem(gpuhost_engine, gpuhost_toolkit, access),
        hook_path_problem(find_hook_on_daemon_path(gpuhost_host, gpuhost_engine), access)
        if access == "gpus"
        else None,
        cdi_support_problem(gpuhost_engine, gpuhost_toolkit, access),
    ):
        if problem is not None:
            fail_with(problem)


def test_gpus_survive_daemon_reload(
    gpuhost_engine: EngineFacts,
    gpuhost_toolkit: ToolkitFacts,
    gpuhost_dev_char: DevChar,
    gpuhost_host: Host,
    gpuhost_settings: Settings,
    request: pytest.FixtureRequest,
) -> None:
    """A warning when `systemctl daemon-reload` would take GPUs from running containers (systemd cgroups
    without /dev/char links, or the legacy hook); with --gpuhost-daemon-reload yes, the reload is tried."""
    dev = gpuhost_dev_char
    print(
        f"gpuhost.metric docker.cgroup_driver={gpuhost_engine.cgroup_driver} "
        f"dev_char.nodes={len(dev.nodes)} dev_char.missing={len(dev.missing)}"
    )
    problem = daemon_reload_problem(gpuhost_engine, gpuhost_toolkit, dev, gpuhost_settings.gpu_access)
    if gpuhost_settings.daemon_reload != "yes":
        if problem is not None:
            warn_with(problem)
        return
    why_not = reload_unavailable(
        is_remote(gpuhost_host),
        gpuhost_host.exists("/run/systemd/system"),
        ["systemctl"] if not gpuhost_host.run(["systemctl", "--version"], timeout=10).missing else None,
    )
    if why_not is not None:
        if problem is not None:
            warn_with(problem)
        pytest.skip(f"--gpuhost-daemon-reload yes: {why_not}")
    containers: Containers = request.getfixturevalue("gpuhost_containers")
    _reload_keeps_gpus(containers, gpuhost_host, gpuhost_settings, problem)


def _reload_keeps_gpus(
    containers: Containers, host: Host, settings: Settings, risk: Diagnosis | None
) -> None:
    smi = ["nvidia-smi", "-L"]
    try:
        with containers.started(
            settings.image, ["sleep", "600"], check=CHECK_RELOAD, gpus=ALL_GPUS
        ) as running:
            before = running.container.exec_run(smi)
            if before.exit_code != 0:
                pytest.skip(
                    f"needs a GPU container: nvidia-smi -L failed before the reload: {before.output!r}"
                )
            reload = host.run(["systemctl", "daemon-reload"], timeout=settings.timeout)
            if not reload.ok:
                fail(
                    f"`systemctl daemon-reload` failed: {reload.describe()}",
                    "the user running pytest may not reload systemd",
                    "run the suite as root, or leave --gpuhost-daemon-reload at no",
                )
            after = running.container.exec_run(smi)
    except ContainerFailure as exc:
        pytest.skip(f"needs a GPU container: {exc.diagnosis.found}")
    output = after.output.decode(errors="replace") if isinstance(after.output, bytes) else str(after.output)
    print(f"gpuhost.metric daemon_reload.nvidia_smi_exit={after.exit_code}")
    if after.exit_code != 0:
        found = diagnose_output(output)
        fix = (
            risk.fix if risk is not None else found.fix if found is not None else "see the container's output"
        )
        fail(
            f"after `systemctl daemon-reload` nvidia-smi in a running container fails: {output.strip()[-300:]}",
            found.cause if found is not None else "the container lost its GPU devices on the reload",
            fix,
        )


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
