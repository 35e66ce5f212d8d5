"""Would ``systemctl daemon-reload`` take GPUs from running containers here, and may the opt-in reload run (NVIDIA's known issue: nvidia-container-toolkit issue 48)."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.daemon_reload import DevChar
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.toolkit import ToolkitFacts, mode_needs

CREATE_LINKS = "sudo nvidia-ctk system create-dev-char-symlinks --create-all"


UDEV_RULE = (
    'ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", '
    'RUN+="/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"'
)


UDEV_FILE = "/lib/udev/rules.d/71-nvidia-dev-char.rules"


def uses_legacy_hook(toolkit: ToolkitFacts, access: str) -> bool:
    """GPUs added by the legacy hook never reach runc's device list, whatever /dev/char holds."""
    if access == "devices" or access == "cdi":
        return False
    needs = mode_needs(toolkit, access)
    if access == "runtime":
        return needs.runtime == "legacy"
    direct = toolkit.configured_default_runtime != "nvidia"
    return (needs.hook if direct else needs.runtime) == "legacy"


def daemon_reload_problem(
    engine: EngineFacts, toolkit: ToolkitFacts, dev: DevChar, access: str
) -> Diagnosis | None:
    """Why a reload would take GPUs from running containers here, or None."""
    if (engine.cgroup_driver or "").lower() != "systemd" or not dev.nodes:
        return None
    if dev.missing:
        return Diagnosis(
            f"the daemon uses the systemd cgroup driver and /dev/char has no link for "
            f"{', '.join(f'{n} ({dev.nodes[n]})' for n in dev.missing)}",
            "NVIDIA's known issue: after `systemctl daemon-reload` systemd drops device rules it cannot resolve "
            'through /dev/char, and running containers lose their GPUs ("Failed to initialize NVML: Unknown Error")',
            f"`{CREATE_LINKS}`, and keep them across reboots with the udev rule `{UDEV_RULE}` in {UDEV_FILE}",
        )
    if uses_legacy_hook(toolkit, access):
        return Diagnosis(
            "the daemon uses the systemd cgroup driver and GPUs reach containers through the toolkit's legacy hook "
            f"(--gpuhost-gpu-access {access}, runtime mode {toolkit.runtime_mode or 'auto'})",
            "devices the hook adds are unknown to systemd: `systemctl daemon-reload` takes them from running "
            'containers ("Failed to initialize NVML: Unknown Error")',
            "inject GPUs with CDI: `sudo nvidia-ctk config --in-place --set nvidia-container-runtime.mode=cdi` and "
            "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`; or the cgroupfs driver "
            '(`"exec-opts": ["native.cgroupdriver=cgroupfs"]` in daemon.json)',
        )
    return None


def reload_unavailable(host_is_remote: bool, exists: bool, systemctl: Sequence[str] | None) -> str | None:
    """Why the opt-in reload cannot run here, or None."""
    if host_is_remote:
        return "the reload runs only on the local host"
    if not exists:
        return "the host does not run systemd (no /run/systemd/system)"
    if not systemctl:
        return "systemctl is not on PATH"
    return None
