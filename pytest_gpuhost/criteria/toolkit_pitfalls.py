"""The access modes' real pitfalls with the NVIDIA Container Toolkit, each a diagnosis with its fix.

Two halves: ``diagnose_toolkit_error`` reads the daemon's or the hook's exact words when a GPU
container fails to start (texts seen with toolkit 1.20 and Docker 20.10 / 26, kept in
``tests/data/toolkit-1.20/errors``); the ``*_problem`` functions find the same pitfalls from the
host's facts before any container runs, so step 2.3 names them even where the container tier is
not run.
"""

from __future__ import annotations

import re

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.toolkit import CDI_GENERATE, CDI_MODES, HOOK, HookSearch, ToolkitFacts, mode_needs
from pytest_gpuhost.versions import version_tuple

SET_DEFAULT = (
    "sudo nvidia-ctk runtime configure --runtime=docker --set-as-default && sudo systemctl restart docker"
)
ENABLE_CDI = (
    "sudo nvidia-ctk runtime configure --runtime=docker --cdi.enabled && sudo systemctl restart docker "
    '(it adds `"features": {"cdi": true}` to /etc/docker/daemon.json)'
)
CDI_SINCE = (25,)  # Docker 25 is the first with CDI device requests
# Before 28.2 the `cdi` feature must be switched on in daemon.json (28.2.0 release notes: "CDI is
# now enabled by default", moby/moby#49963).
CDI_ON_BY_DEFAULT = (28, 2)
_HOOK_REFUSES = "invoking the nvidia container runtime hook directly"
_NO_GPU_DRIVER = 'could not select device driver "" with capabilities: [[gpu]]'
_NO_CDI_DRIVER = 'could not select device driver "cdi"'
_NO_CLI = "couldn't find binary nvidia-container-cli"
_JIT_NO_NVML = "failed to initialize nvml: error_library_not_found"
_MISSING_MOUNT = re.compile(
    r'error mounting "([^"]+)" to rootfs at "[^"]*": stat [^:]+: no such file or directory'
)
_DRIVER_FILE = re.compile(r"/lib(?:cuda|nvidia-[\w-]+)\.so\.(\d+\.\d+(?:\.\d+)?)$")


def diagnose_toolkit_error(message: str, mode: str) -> Diagnosis | None:
    """The pitfall a daemon's refusal shows, or None when the text is not one of them."""
    lowered = message.lower()
    if _HOOK_REFUSES in lowered:
        return Diagnosis(
            f"the toolkit's hook refused the container ({mode} mode): {_last_words(message)}",
            "`--gpus` reached the toolkit's hook under plain runc, and the toolkit is in cdi/jit-cdi mode: then "
            "only the `nvidia` runtime may handle the request (the container ran with runc, the default runtime "
            "or an explicit --runtime runc)",
            f"make `nvidia` the default runtime: `{SET_DEFAULT}`; or run GPU containers with `--runtime nvidia`; "
            "or request CDI devices (`--device nvidia.com/gpu=all`, --gpuhost-gpu-access cdi)",
        )
    if _NO_GPU_DRIVER in lowered:
        return Diagnosis(
            f"the daemon cannot give containers GPUs: {message}",
            f"the NVIDIA Container Toolkit is not installed, or {HOOK} was not on dockerd's PATH when the daemon "
            "started (dockerd looks for it once, at start, to accept --gpus), or Docker was not restarted "
            "after installing the toolkit",
            "install the toolkit (`sudo apt-get install nvidia-container-toolkit`) so that "
            f"/usr/bin/{HOOK} exists, or put its folder on PATH in dockerd's service environment; then "
            "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`",
        )
    if _NO_CDI_DRIVER in lowered:
        return Diagnosis(
            f"the daemon does not accept CDI devices: {message}",
            "CDI needs Docker 25 or newer (Docker 20.10-24 have no CDI at all), and on Docker 25 to 28.1 the "
            '`"features": {"cdi": true}` switch in daemon.json',
            f"on Docker 25 to 28.1: `{ENABLE_CDI}`; on older Docker: upgrade it, or use --gpuhost-gpu-access gpus or "
            f"runtime; the spec itself comes from `{CDI_GENERATE}`",
        )
    if _NO_CLI in lowered:
        return Diagnosis(
            f"the toolkit's hook needs libnvidia-container, which is not installed ({mode} mode): "
            f"{_from(message, _NO_CLI)}",
            "the hook runs in legacy mode (the runtime's mode is `legacy`, or `auto`, which the hook resolves to "
            "legacy) and calls nvidia-container-cli; cdi-only installs (nvidia-container-toolkit-base) have none",
            f"inject GPUs through the nvidia runtime in cdi mode: `sudo nvidia-ctk config --in-place --set "
            f"nvidia-container-runtime.mode=cdi`, `{CDI_GENERATE}`, and `{SET_DEFAULT}`; or install "
            "libnvidia-container-tools",
        )
    if _JIT_NO_NVML in lowered:
        return Diagnosis(
            f"the nvidia runtime could not build the container's CDI spec at start ({mode} mode): "
            f"{_from(message, 'failed to generate cdi spec')}",
            "in jit-cdi mode (what `auto` means in toolkit 1.20) the runtime loads NVML (libnvidia-ml.so.1) "
            "from the driver root at every container start, and found none there: the driver lives elsewhere "
            "(e.g. /usr/local/nvidia) or is not loaded",
            "generate a spec once and use cdi mode: `sudo nvidia-ctk cdi generate --driver-root=DRIVER_ROOT "
            "--output=/etc/cdi/nvidia.yaml` and `sudo nvidia-ctk config --in-place --set "
            "nvidia-container-runtime.mode=cdi`; or set `nvidia-container-cli.root` to the driver root",
        )
    missing = _MISSING_MOUNT.search(message)
    if missing is not None:
        path = missing.group(1)
        driver = _DRIVER_FILE.search(path)
        if driver is not None:
            return Diagnosis(
                f"the container could not start: the CDI spec mounts {path}, which does not exist",
                f"the CDI spec was generated for driver {driver.group(1)}, not the loaded driver (a driver "
                "upgrade after `nvidia-ctk cdi generate`)",
                f"`{CDI_GENERATE}` after every driver upgrade; toolkit 1.18+ does it with "
                "`sudo systemctl enable --now nvidia-cdi-refresh.path`",
            )
        return Diagnosis(
            f"the container could not start: a mount's source {path} does not exist",
            "a stale CDI spec (files moved or removed after it was generated), or a --gpuhost-volume source "
            "that is not on this host",
            f"`{CDI_GENERATE}`; check the --gpuhost-volume sources",
        )
    return None


def _from(message: str, lowered_marker: str) -> str:
    """The toolkit's words from ``lowered_marker`` on, without the shim's wrapping before them."""
    start = message.lower().find(lowered_marker)
    return " ".join(message[start:].split()) if start >= 0 else message


def _last_words(message: str) -> str:
    """The hook's own sentence, without the runc/shim wrapping around it."""
    start = message.lower().find(_HOOK_REFUSES)
    return " ".join(message[start:].split()) if start >= 0 else message


# -- the same pitfalls from the host's facts --------------------------------------------------


def gpus_under_runc_problem(engine: EngineFacts, toolkit: ToolkitFacts, access: str) -> Diagnosis | None:
    """--gpus while the default runtime is runc and the hook is configured to refuse (cdi/jit-cdi)."""
    if access != "gpus" or not toolkit.installed:
        return None
    needs = mode_needs(toolkit, access)
    if needs.hook not in CDI_MODES or engine.default_runtime == "nvidia":
        return None
    return Diagnosis(
        f"the toolkit is in {needs.configured} mode and the daemon's default runtime is "
        f"`{engine.default_runtime or 'runc'}`, and the suite uses --gpuhost-gpu-access gpus",
        "`docker run --gpus` without `--runtime nvidia` reaches the toolkit's hook under runc, which refuses in "
        '"cdi"/"jit-cdi" mode ("invoking the NVIDIA Container Runtime Hook directly ... is not supported")',
        f"`{SET_DEFAULT}`; or use --gpuhost-gpu-access runtime or cdi",
    )


def hook_path_problem(search: HookSearch, access: str) -> Diagnosis | None:
    """dockerd registers --gpus only when the hook is on the PATH it started with."""
    if access != "gpus" or search.path is None or search.found:
        return None  # an unreadable PATH: the container tier's error text says it instead
    return Diagnosis(
        f"{HOOK} is on none of the folders of dockerd's PATH ({search.path})",
        "dockerd looks the hook up once, when it starts, and without it refuses --gpus "
        '(`could not select device driver "" with capabilities: [[gpu]]`), as if there were no toolkit',
        "install nvidia-container-toolkit (it puts the hook in /usr/bin), or add the hook's folder to PATH in "
        "dockerd's environment (`sudo systemctl edit docker`), then `sudo systemctl restart docker`",
    )


def cdi_support_problem(engine: EngineFacts, toolkit: ToolkitFacts, access: str) -> Diagnosis | None:
    """The cdi access mode needs Docker 25+, and the `cdi` feature on Docker 25 to 28.1."""
    if access != "cdi":
        return None
    version = version_tuple(engine.engine_version)
    if version is None:
        return None
    if version < CDI_SINCE:
        return Diagnosis(
            f"Docker {engine.engine_version} has no CDI, and the suite uses --gpuhost-gpu-access cdi",
            "CDI device requests (`--device nvidia.com/gpu=...`) arrived in Docker 25: older daemons refuse them "
            '(`could not select device driver "cdi"`)',
            f"upgrade Docker to 25 or newer and `{ENABLE_CDI}`; or use --gpuhost-gpu-access gpus or runtime",
        )
    features = (toolkit.daemon_config.data or {}).get("features")
    enabled = isinstance(features, dict) and features.get("cdi") is True
    if version < CDI_ON_BY_DEFAULT and not enabled and not engine.cdi_spec_dirs:
        return Diagnosis(
            f'Docker {engine.engine_version} without `"features": {{"cdi": true}}` '
            f"({toolkit.daemon_config.path}), and the suite uses --gpuhost-gpu-access cdi",
            'Docker 25 to 28.1 accept CDI devices only with the `cdi` feature on (`could not select device driver "cdi"`)',
            f"`{ENABLE_CDI}`",
        )
    return None
