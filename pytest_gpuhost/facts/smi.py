"""GPU facts from ``nvidia-smi -q -x``: works on any host that can run a command."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from pytest_gpuhost.facts.model import GpuInfo, GpuListing, normalize_pci_bus_id
from pytest_gpuhost.hosts.host import Host

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if value in ("", "N/A", "[N/A]", "Not Supported", "[Not Supported]") else value


def _number(node: ET.Element, *paths: str) -> float | None:
    """The first of ``paths`` that holds a number such as ``81559 MiB`` or ``700.00 W``."""
    for path in paths:
        value = _text(node, path)
        if value is not None:
            match = _NUMBER.search(value)
            if match:
                return float(match.group(0))
    return None


def _int(node: ET.Element, *paths: str) -> int | None:
    number = _number(node, *paths)
    return None if number is None else int(number)


def _enabled(node: ET.Element, path: str) -> bool | None:
    value = _text(node, path)
    if value is None:
        return None
    return value.lower() == "enabled"


def parse_smi_xml(xml_text: str) -> GpuListing:
    """Parse ``nvidia-smi -q -x`` output (the v12 and v13 DTDs) into a listing."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        return GpuListing("nvidia-smi", ok=False, error=f"unreadable XML: {exc}", error_kind="parse")
    gpus = []
    for index, node in enumerate(root.findall("gpu")):
        gpus.append(
            GpuInfo(
                index=index,
                uuid=_text(node, "uuid") or "",
                name=_text(node, "product_name") or "",
                pci_bus_id=normalize_pci_bus_id(_text(node, "pci/pci_bus_id") or node.get("id") or ""),
                memory_total_mib=_int(node, "fb_memory_usage/total"),
                minor_number=_int(node, "minor_number"),
                temperature_c=_int(node, "temperature/gpu_temp"),
                # Absolute thresholds exist in older DTDs; v13 reports them relative to T.Limit.
                temp_slowdown_c=_int(node, "temperature/gpu_temp_slow_threshold"),
                temp_shutdown_c=_int(node, "temperature/gpu_temp_max_threshold"),
                temp_max_operating_c=_int(node, "temperature/gpu_temp_max_gpu_threshold"),
                power_limit_w=_number(
                    node, "gpu_power_readings/current_power_limit", "power_readings/power_limit"
                ),
                persistence_mode=_enabled(node, "persistence_mode"),
                mig_current=_enabled(node, "mig_mode/current_mig"),
                mig_pending=_enabled(node, "mig_mode/pending_mig"),
            )
        )
    return GpuListing(
        "nvidia-smi",
        ok=True,
        driver_version=_text(root, "driver_version"),
        cuda_driver_version=_text(root, "cuda_version"),
        gpus=tuple(gpus),
    )


def classify_smi_failure(message: str) -> str:
    """The kind of an nvidia-smi failure, from its own words."""
    lowered = message.lower()
    if "driver/library version mismatch" in lowered:
        return "version-mismatch"
    if "couldn't communicate with the nvidia driver" in lowered or "no devices were found" in lowered:
        return "no-driver"
    if "insufficient permissions" in lowered:
        return "permission"
    return "error"


SMI_QUERY = ("nvidia-smi", "-q", "-x")


def read_smi(host: Host, timeout: float) -> GpuListing:
    """Run ``nvidia-smi -q -x`` on ``host`` and parse it; failures become a listing with an error."""
    result = host.run(SMI_QUERY, timeout=timeout)
    if result.missing:
        return GpuListing("nvidia-smi", ok=False, error=result.describe(), error_kind="missing")
    if result.timed_out:
        return GpuListing("nvidia-smi", ok=False, error=result.describe(), error_kind="timeout")
    if result.returncode != 0:
        message = (result.stdout + result.stderr).strip()
        # nvidia-smi names the failure first ("Failed to initialize NVML: Driver/library version
        # mismatch") and may add a detail line ("NVML library version: 580.159"): keep both.
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        error = f"`{' '.join(result.argv)}` exited with {result.returncode}: {'; '.join(lines[:2]) or 'no output'}"
        return GpuListing("nvidia-smi", ok=False, error=error, error_kind=classify_smi_failure(message))
    return parse_smi_xml(result.stdout)
