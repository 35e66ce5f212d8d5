"""The verdicts on the NVIDIA Container Toolkit (guide step 2.3): tools, configuration, runtime registration, CDI specs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.toolkit import (
    CDI_GENERATE,
    CDI_KIND,
    CDI_MODES,
    CONFIGURE,
    INSTALL_FIX,
    INSTALL_GUIDE,
    TOOLS,
    CdiFacts,
    CdiSpec,
    ModeNeeds,
    ToolkitFacts,
    mode_needs,
)


def missing_toolkit(toolkit: ToolkitFacts, needs: ModeNeeds | None = None) -> Diagnosis | None:
    """The commands the mode needs that are not installed (every command when ``needs`` is None)."""
    required = list(needs.needs) if needs is not None else list(TOOLS)
    missing = [name for name in required if name in toolkit.missing_tools]
    if not missing:
        return None
    found = ", ".join(f"{t.name} {t.version or '?'}" for t in toolkit.tools.values() if t.found)
    if needs is None or not found:
        return Diagnosis(
            f"not on PATH: {', '.join(missing)}" + (f" (found: {found})" if found else ""),
            "the NVIDIA Container Toolkit is not installed (or only in part): Docker cannot give containers GPUs",
            INSTALL_FIX,
        )
    reasons = "; ".join(f"{name}: {needs.needs[name]}" for name in missing)
    return Diagnosis(
        f"not on PATH: {', '.join(missing)} (found: {found}); the runtime is in {needs.configured} mode"
        + (f" (resolved: {needs.runtime})" if needs.runtime != needs.configured else "")
        + f" and the suite uses --gpuhost-gpu-access {needs.access}, which need it: {reasons}",
        "a partial install of the NVIDIA Container Toolkit: this mode cannot give containers GPUs",
        _missing_fix(missing, needs),
    )


def _missing_fix(missing: Sequence[str], needs: ModeNeeds) -> str:
    if "nvidia-container-cli" in missing and needs.runtime in CDI_MODES:
        return (
            "`--gpus` under runc needs libnvidia-container: make `nvidia` the default runtime (`sudo nvidia-ctk "
            "runtime configure --runtime=docker --set-as-default && sudo systemctl restart docker`), or install "
            f"the full nvidia-container-toolkit ({INSTALL_GUIDE})"
        )
    if (
        set(missing) <= {"nvidia-container-cli", "nvidia-container-runtime-hook"}
        and needs.runtime == "legacy"
    ):
        return (
            "install nvidia-container-toolkit and libnvidia-container-tools (legacy mode needs them), or switch "
            "to CDI: `sudo nvidia-ctk config --in-place --set nvidia-container-runtime.mode=cdi` and `"
            + CDI_GENERATE
            + "`"
        )
    return INSTALL_FIX


def broken_tools(toolkit: ToolkitFacts, needs: ModeNeeds | None = None) -> Diagnosis | None:
    required = set(needs.needs) if needs is not None else set(TOOLS)
    broken = [t for t in toolkit.tools.values() if t.found and t.error and t.name in required]
    if not broken:
        return None
    return Diagnosis(
        "toolkit commands fail: " + "; ".join(t.error or "" for t in broken),
        "a broken or partial installation (missing libnvidia-container, a hung driver)",
        f"reinstall the toolkit's packages ({INSTALL_GUIDE})",
    )


def version_skew(toolkit: ToolkitFacts) -> Diagnosis | None:
    versions = {t.name: t.version for t in toolkit.tools.values() if t.found and t.version}
    if len(set(versions.values())) <= 1:
        return None
    return Diagnosis(
        "toolkit components differ in version: " + ", ".join(f"{n} {v}" for n, v in versions.items()),
        "a partial upgrade: nvidia-container-toolkit, -base, libnvidia-container-tools and "
        "libnvidia-container1 are released together",
        "upgrade all four packages to one version (e.g. `sudo apt-get install --only-upgrade "
        "nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1`)",
    )


def daemon_config_problem(toolkit: ToolkitFacts) -> Diagnosis | None:
    config = toolkit.daemon_config
    if config.error is None:
        return None
    if "not readable" in config.error:
        return None  # an ordinary user may not read it; the runtime check uses `docker info` instead
    return Diagnosis(
        config.error,
        "a hand edit broke the file: the daemon refuses to start with it at its next restart",
        f"fix the JSON (`python3 -m json.tool {config.path}` shows where), or let "
        "`sudo nvidia-ctk runtime configure --runtime=docker` rewrite it",
    )


def runtime_problem(engine: EngineFacts, toolkit: ToolkitFacts) -> Diagnosis | None:
    """The ``nvidia`` runtime is registered in daemon.json and known to the running daemon."""
    in_daemon = "nvidia" in engine.runtimes
    in_config = "nvidia" in toolkit.configured_runtimes
    where = toolkit.daemon_config.path
    restart = "systemctl --user restart docker" if engine.rootless else "sudo systemctl restart docker"
    configure = (
        f"nvidia-ctk runtime configure --runtime=docker --config={where} && {restart}"
        if engine.rootless
        else CONFIGURE
    )
    if in_config and not in_daemon:
        return Diagnosis(
            f"{where} names the `nvidia` runtime, but the running daemon does not know it "
            f"(`docker info` Runtimes: {', '.join(sorted(engine.runtimes)) or 'none'})",
            "the daemon was started before the toolkit was installed or configured, and not restarted since",
            f"`{restart}`",
        )
    if not in_daemon:
        not_in = "does not exist" if not toolkit.daemon_config.exists else "names no `nvidia` runtime"
        if toolkit.daemon_config.error:
            not_in = "cannot be read"
        return Diagnosis(
            f"the daemon has no `nvidia` runtime (`docker info` Runtimes: "
            f"{', '.join(sorted(engine.runtimes)) or 'none'}), and {where} {not_in}",
            "the toolkit is not installed or was never registered with Docker",
            INSTALL_FIX if toolkit.missing_tools else f"`{configure}`",
        )
    path = engine.runtimes["nvidia"]
    tool = toolkit.tools.get("nvidia-container-runtime")
    if os.path.basename(path) == "nvidia-container-runtime" and tool is not None and not tool.found:
        return Diagnosis(
            f"the daemon's `nvidia` runtime runs {path}, which is not installed",
            "the toolkit was removed but daemon.json still registers its runtime",
            INSTALL_FIX,
        )
    return None


def default_runtime_warning(engine: EngineFacts, toolkit: ToolkitFacts | None = None) -> Diagnosis | None:
    """`nvidia` as the default runtime: --gpus works without --runtime nvidia, and every image's
    NVIDIA_VISIBLE_DEVICES is honoured too. In cdi/jit-cdi mode --gpus needs it, so the fix differs."""
    if engine.default_runtime != "nvidia":
        return None
    envvar_off = (
        "`sudo nvidia-ctk config --in-place --set accept-nvidia-visible-devices-envvar-when-unprivileged=false` "
        "(then only explicit requests get GPUs)"
    )
    hook_mode = mode_needs(toolkit, "gpus").hook if toolkit is not None else "legacy"
    if hook_mode in CDI_MODES:
        fix = (
            f"keep the default (in {hook_mode} mode `--gpus` works only through the nvidia runtime) and stop images "
            f"from taking GPUs by their environment: {envvar_off}"
        )
    else:
        fix = (
            'remove `"default-runtime": "nvidia"` from daemon.json, restart docker, and request GPUs per '
            "container (`--gpus`, CDI devices, or compose reservations); or keep it and " + envvar_off
        )
    return Diagnosis(
        "the daemon's default runtime is `nvidia`: `--gpus` then also works without `--runtime nvidia`",
        "every container whose image sets NVIDIA_VISIBLE_DEVICES (all CUDA images set it to `all`) gets "
        "every GPU without asking for one: no isolation between jobs",
        fix,
    )


def daemon_reload_risk(engine: EngineFacts, toolkit: ToolkitFacts) -> Diagnosis | None:
    """NVIDIA's known issue: systemd cgroups + the legacy hook lose GPUs on ``systemctl daemon-reload``."""
    if (engine.cgroup_driver or "").lower() != "systemd":
        return None
    hook = toolkit.tools.get("nvidia-container-runtime-hook")
    uses_hook = (hook is not None and hook.found) or "nvidia" in engine.runtimes
    if not uses_hook:
        return None
    mode = toolkit.runtime_mode or "auto"
    return Diagnosis(
        f"the daemon uses the systemd cgroup driver (cgroup v{engine.cgroup_version or '?'}) and GPUs reach "
        f"containers through the toolkit's hook (`--gpus`, or the nvidia runtime in {mode} mode)",
        "NVIDIA's known issue: after `systemctl daemon-reload` running containers lose their GPUs "
        '("Failed to initialize NVML: Unknown Error") because runc was never told about the devices',
        "NVIDIA's documented workarounds: inject GPUs with CDI (`" + CDI_GENERATE + "`, then "
        "`docker run --device nvidia.com/gpu=all` or `sudo nvidia-ctk config --in-place --set "
        'nvidia-container-runtime.mode=cdi`); or use the cgroupfs driver: `"exec-opts": '
        '["native.cgroupdriver=cgroupfs"]` in /etc/docker/daemon.json and `sudo systemctl restart docker`; '
        "or pass the /dev/nvidia* nodes explicitly with --device",
    )


def rootless_cgroups_problem(engine: EngineFacts, toolkit: ToolkitFacts) -> Diagnosis | None:
    if not engine.rootless or not toolkit.installed or toolkit.no_cgroups:
        return None
    return Diagnosis(
        f"rootless Docker, but {toolkit.runtime_config.path} does not set "
        "`no-cgroups = true` under [nvidia-container-cli]",
        "a rootless daemon may not write device cgroups: the toolkit's hook fails to start GPU containers",
        "`sudo nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place`",
    )


def _spec_list(specs: Iterable[CdiSpec]) -> str:
    return ", ".join(s.path for s in specs) or "none"


def cdi_parse_problem(cdi: CdiFacts) -> Diagnosis | None:
    if not cdi.errors:
        return None
    if cdi.yaml_missing:
        return Diagnosis(
            "CDI specs cannot be checked: " + "; ".join(f"{p}: {why}" for p, why in cdi.errors),
            "PyYAML is missing from the Python that runs pytest-gpuhost",
            "`pip install pyyaml` (or reinstall pytest-gpuhost, which depends on it)",
        )
    return Diagnosis(
        "unusable CDI spec(s): " + "; ".join(f"{p}: {why}" for p, why in cdi.errors),
        "a hand-edited or truncated spec: CDI-enabled engines refuse every device while one spec is broken",
        f"regenerate it: `{CDI_GENERATE}`, and delete specs you did not generate",
    )


def cdi_gpu_problem(cdi: CdiFacts, gpu: GpuInfo) -> Diagnosis | None:
    specs = cdi.nvidia
    if not specs or any(spec.names_gpu(gpu) for spec in specs):
        return None
    names = sorted({n for s in specs for n in s.device_names})
    return Diagnosis(
        f"no CDI device for GPU {gpu.index} ({gpu.uuid}) in {_spec_list(specs)}; it names: {', '.join(names)}",
        "the spec was generated before this GPU was added or swapped, or for MIG devices only",
        f"`{CDI_GENERATE}`; `nvidia-ctk cdi list` shows the names",
    )


def cdi_driver_problem(cdi: CdiFacts, driver_version: str | None) -> Diagnosis | None:
    if not driver_version:
        return None
    stale = [s for s in cdi.nvidia if s.driver_versions and driver_version not in s.driver_versions]
    if not stale:
        return None
    return Diagnosis(
        "CDI spec(s) mount another driver's libraries: "
        + "; ".join(f"{s.path} has {', '.join(sorted(s.driver_versions))}" for s in stale)
        + f"; the running driver is {driver_version}",
        "the driver was upgraded after the spec was generated (a stale spec)",
        f"`{CDI_GENERATE}` after every driver upgrade; toolkit 1.18+ does it with "
        "`sudo systemctl enable --now nvidia-cdi-refresh.path`",
    )


def cdi_host_path_problem(cdi: CdiFacts) -> Diagnosis | None:
    broken = [s for s in cdi.nvidia if s.missing_paths]
    if not broken:
        return None
    parts = []
    for spec in broken:
        shown = ", ".join(spec.missing_paths[:5])
        more = f" and {len(spec.missing_paths) - 5} more" if len(spec.missing_paths) > 5 else ""
        parts.append(f"{spec.path}: {shown}{more}")
    return Diagnosis(
        "CDI spec(s) mount host paths that do not exist: " + "; ".join(parts),
        "a stale spec from before a driver upgrade or removal: containers asking for these devices fail to start",
        f"`{CDI_GENERATE}`",
    )


def cdi_shadowing_warning(cdi: CdiFacts) -> Diagnosis | None:
    specs = cdi.nvidia
    if len(specs) <= 1:
        return None
    return Diagnosis(
        f"{len(specs)} CDI specs define {CDI_KIND}: {_spec_list(specs)}",
        "an old spec next to a newly generated one (e.g. /etc/cdi by hand, /var/run/cdi by nvidia-cdi-refresh): "
        "devices defined twice in one directory conflict, and across directories the later one wins silently",
        "keep one spec: delete the stale file, then `nvidia-ctk cdi list`",
    )
