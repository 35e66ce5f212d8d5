"""Do running containers keep their GPUs after ``systemctl daemon-reload``?

NVIDIA's known issue (nvidia-container-toolkit issue 48, and 1227, 1397, 1744): with Docker's
systemd cgroup driver, a reload makes systemd rewrite each container's device rules from what it
knows. Device nodes it cannot resolve through ``/dev/char/MAJOR:MINOR`` links, and nodes the
legacy hook added behind runc's back, are dropped: the container then sees "Failed to
initialize NVML: Unknown Error". The preconditions are read on every host; the reload itself
runs only where the user asks for it (``--gpuhost-daemon-reload yes``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.toolkit import ToolkitFacts, mode_needs
from pytest_gpuhost.hosts.host import Host

CREATE_LINKS = "sudo nvidia-ctk system create-dev-char-symlinks --create-all"
UDEV_RULE = (
    'ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", '
    'RUN+="/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"'
)
UDEV_FILE = "/lib/udev/rules.d/71-nvidia-dev-char.rules"


@dataclass(frozen=True)
class DevChar:
    """The character devices /dev/nvidia* and whether /dev/char links to each."""

    nodes: Mapping[str, str]  # /dev/nvidia0 -> "195:0"
    missing: tuple[str, ...] = ()  # nodes without a /dev/char/MAJOR:MINOR link to them
    error: str | None = None


def parse_stat(output: str) -> dict[str, str]:
    """``stat -L -c '%t,%T,%F,%n'`` lines (hex major and minor) to node -> ``major:minor``."""
    nodes: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split(",", 3)
        if len(parts) != 4 or parts[2] != "character special file":
            continue
        try:
            nodes[parts[3]] = f"{int(parts[0], 16)}:{int(parts[1], 16)}"
        except ValueError:
            continue
    return nodes


def missing_links(nodes: Mapping[str, str], readlink: Mapping[str, str | None]) -> tuple[str, ...]:
    """Nodes whose ``/dev/char/MAJOR:MINOR`` is absent or points at another file."""
    missing = []
    for node, number in nodes.items():
        target = readlink.get(f"/dev/char/{number}")
        if target is None or os.path.basename(target) != os.path.basename(node):
            missing.append(node)
    return tuple(missing)


def read_dev_char(host: Host, timeout: float) -> DevChar:
    names = [n for n in host.listdir("/dev") if n.startswith("nvidia")]
    if not names:
        return DevChar({})
    result = host.run(["stat", "-L", "-c", "%t,%T,%F,%n", *(f"/dev/{n}" for n in names)], timeout=timeout)
    nodes = parse_stat(result.stdout)
    if not nodes and not result.ok:
        return DevChar({}, error=result.describe())
    links = {f"/dev/char/{number}": host.readlink(f"/dev/char/{number}") for number in nodes.values()}
    return DevChar(nodes, missing_links(nodes, links))


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
