"""NVSwitch fabric facts: the switches on the PCI bus and the installed Fabric Manager."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_gpuhost.facts.pcie import PCI_DEVICES
from pytest_gpuhost.hosts.host import Host

NVSWITCH_CLASS = "0x0680"


_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class FabricFacts:
    """NVSwitches this machine sees, and the state and version of nv-fabricmanager."""

    nvswitches: tuple[str, ...]
    service_state: str | None = None
    process_running: bool | None = None
    version: str | None = None
    version_error: str | None = None


def scan_nvswitches(host: Host) -> tuple[str, ...]:
    """PCI addresses of NVSwitches (vendor 0x10de, class 0x0680) in ``/sys/bus/pci/devices``."""
    found = []
    for address in host.listdir(PCI_DEVICES):
        base = f"{PCI_DEVICES}/{address}"
        vendor = (host.read_text(f"{base}/vendor") or "").strip().lower()
        class_code = (host.read_text(f"{base}/class") or "").strip().lower()
        if vendor == "0x10de" and class_code.startswith(NVSWITCH_CLASS):
            found.append(address.lower())
    return tuple(found)


def parse_fabricmanager_version(output: str) -> str | None:
    """``Fabric Manager version is : 580.159.04`` to ``580.159.04``."""
    match = re.search(r"version is\s*:?\s*" + _VERSION.pattern, output, flags=re.IGNORECASE)
    if match is None:
        match = _VERSION.search(output)
    return match.group(1) if match else None


def gather_fabric(host: Host, timeout: float) -> FabricFacts:
    """Only NVSwitch systems are asked about nv-fabricmanager."""
    switches = scan_nvswitches(host)
    if not switches:
        return FabricFacts(())
    state_result = host.run(["systemctl", "is-active", "nvidia-fabricmanager"], timeout=timeout)
    state = None if state_result.missing else (state_result.stdout.strip() or None)
    process = host.run(["pgrep", "-x", "nv-fabricmanager"], timeout=timeout)
    running = None if process.missing else process.returncode == 0
    version_result = host.run(["nv-fabricmanager", "--version"], timeout=timeout)
    version = parse_fabricmanager_version(version_result.stdout + version_result.stderr)
    error = None if version else version_result.describe()
    return FabricFacts(switches, state, running, version, error)
