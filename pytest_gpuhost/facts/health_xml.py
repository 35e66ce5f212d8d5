"""GPU health read from ``nvidia-smi -q -x``, for hosts where NVML cannot be loaded (a remote host)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from pytest_gpuhost.facts.health import (
    F_BRAND,
    F_CLOCKS,
    F_ECC_COUNTS,
    F_ECC_MODE,
    F_FABRIC,
    F_MIG,
    F_PCIE,
    F_REMAP,
    F_RETIRED,
    XML_CLOCK_REASONS,
    EccCounts,
    HealthFacts,
    LiveReading,
    PcieLink,
    Unavailable,
)
from pytest_gpuhost.facts.model import normalize_pci_bus_id
from pytest_gpuhost.hosts.host import Host

_NUMBER = re.compile(r"-?\d+")


_UNSUPPORTED_TEXT = frozenset({"n/a", "[n/a]", "not supported", "[not supported]", "unsupported"})


class _XmlFields:
    """Reads fields of one ``<gpu>`` element, recording each missing or unreadable one."""

    def __init__(self, node: ET.Element) -> None:
        self.node = node
        self.unavailable: dict[str, Unavailable] = {}

    def text(self, name: str, path: str) -> str | None:
        found = self.node.find(path)
        if found is None:
            self.unavailable.setdefault(name, Unavailable(f"nvidia-smi reports no <{path}>", True))
            return None
        value = " ".join((found.text or "").split())
        if not value or value.lower() in _UNSUPPORTED_TEXT:
            self.unavailable.setdefault(name, Unavailable(f"nvidia-smi: {path} is {value or 'empty'}", True))
            return None
        return value

    def number(self, name: str, path: str) -> int | None:
        value = self.text(name, path)
        if value is None:
            return None
        match = _NUMBER.search(value)
        if match is None:
            self.unavailable.setdefault(name, Unavailable(f"nvidia-smi: {path} is {value!r}", False))
            return None
        return int(match.group(0))

    def flag(self, name: str, path: str) -> bool | None:
        """``Yes``/``Enabled``/``Active`` and their negatives."""
        value = self.text(name, path)
        if value is None:
            return None
        lowered = value.lower()
        if lowered in ("yes", "enabled", "active"):
            return True
        if lowered in ("no", "disabled", "not active"):
            return False
        self.unavailable.setdefault(name, Unavailable(f"nvidia-smi: {path} is {value!r}", False))
        return None


def _xml_brand(product_brand: str | None) -> str | None:
    if product_brand is None:
        return None
    compact = product_brand.lower().replace(" ", "")
    return {"nvidiartx": "nvidiartx", "quadrortx": "quadrortx"}.get(compact, compact)


def _xml_ecc(fields: _XmlFields) -> tuple[EccCounts | None, tuple[str, ...]]:
    node = fields.node.find("ecc_errors")
    if node is None:
        fields.unavailable[F_ECC_COUNTS] = Unavailable("nvidia-smi reports no <ecc_errors>", True)
        return None, ()

    def total(section: str, uncorrectable: bool) -> int | None:
        """Sum of a section's counters: v13 names (dram_uncorrectable, sram_uncorrectable_parity, ...)
        or the older single_bit/total and double_bit/total."""
        part = node.find(section)
        if part is None:
            return None
        values: list[int] = []
        for child in part:
            tag = child.tag
            if tag in ("single_bit", "double_bit"):
                if (tag == "double_bit") == uncorrectable:
                    values.extend(_digits(child.findtext("total")))
            elif "correctable" in tag and ("uncorrectable" in tag) == uncorrectable:
                values.extend(_digits(child.text))
        return sum(values) if values else None

    counts = EccCounts(
        uncorrected_volatile=total("volatile", True),
        uncorrected_aggregate=total("aggregate", True),
        corrected_volatile=total("volatile", False),
        corrected_aggregate=total("aggregate", False),
    )
    if counts.uncorrected_volatile is None and counts.uncorrected_aggregate is None:
        fields.unavailable[F_ECC_COUNTS] = Unavailable("nvidia-smi: ECC error counts are N/A", True)
        return None, ()
    flags = []
    for path, label in (
        ("aggregate/sram_threshold_exceeded", "SRAM uncorrectable error threshold exceeded"),
        ("unrepairable_memory", "unrepairable memory"),
        ("channel_repair_pending", "channel repair pending"),
        ("tpc_repair_pending", "TPC repair pending"),
    ):
        found = node.find(path)
        if found is not None and (found.text or "").strip().lower() == "yes":
            flags.append(label)
    return counts, tuple(flags)


def _digits(text: str | None) -> list[int]:
    value = (text or "").strip()
    return [int(value)] if value.isdigit() else []


def _xml_gpu(node: ET.Element, index: int) -> HealthFacts:
    f = _XmlFields(node)
    bus = f.text("PCI address", "pci/pci_bus_id") or node.get("id") or ""
    ecc, flags = _xml_ecc(f)
    # pending_retirement since DTD v10; older ones call it pending_blacklist.
    retired_path = "retired_pages/pending_retirement"
    if node.find(retired_path) is None:
        retired_path = "retired_pages/pending_blacklist"
    retired = f.flag(F_RETIRED, retired_path)
    fabric_state = f.text(F_FABRIC, "fabric/state")
    fabric_status = " ".join((node.findtext("fabric/status") or "").split())
    if fabric_status.lower() in _UNSUPPORTED_TEXT or fabric_status.lower() == "success":
        fabric_status = ""
    return HealthFacts(
        index=index,
        uuid=f.text("UUID", "uuid") or "",
        name=f.text("name", "product_name") or "",
        pci_bus_id=normalize_pci_bus_id(bus) if bus else "",
        source="nvidia-smi",
        brand=_xml_brand(f.text(F_BRAND, "product_brand")),
        ecc_current=f.flag(F_ECC_MODE, "ecc_mode/current_ecc"),
        ecc_pending=f.flag(F_ECC_MODE, "ecc_mode/pending_ecc"),
        ecc=ecc,
        retired_pages_pending=retired,
        remapped_corr=f.number(F_REMAP, "remapped_rows/remapped_row_corr"),
        remapped_unc=f.number(F_REMAP, "remapped_rows/remapped_row_unc"),
        remap_pending=f.flag(F_REMAP, "remapped_rows/remapped_row_pending"),
        remap_failure=f.flag(F_REMAP, "remapped_rows/remapped_row_failure"),
        memory_flags=flags,
        mig_current=f.flag(F_MIG, "mig_mode/current_mig"),
        mig_pending=f.flag(F_MIG, "mig_mode/pending_mig"),
        fabric_state=fabric_state.lower() if fabric_state else None,
        fabric_status=fabric_status or None,
        unavailable=dict(f.unavailable),
    )


def _xml_pcie(node: ET.Element) -> PcieLink | None:
    f = _XmlFields(node)
    base = "pci/pci_gpu_link_info"
    link = PcieLink(
        current_gen=f.number(F_PCIE, f"{base}/pcie_gen/current_link_gen"),
        max_gen=f.number(F_PCIE, f"{base}/pcie_gen/max_link_gen"),
        current_width=f.number(F_PCIE, f"{base}/link_widths/current_link_width"),
        max_width=f.number(F_PCIE, f"{base}/link_widths/max_link_width"),
        gpu_max_gen=_XmlFields(node).number(F_PCIE, f"{base}/pcie_gen/max_device_link_gen"),
        source="nvidia-smi",
    )
    return None if f.unavailable else link


def _xml_clock_reasons(node: ET.Element) -> int | None:
    section = node.find("clocks_event_reasons")
    prefix = "clocks_event_reason_"
    if section is None:
        section, prefix = node.find("clocks_throttle_reasons"), "clocks_throttle_reason_"
    if section is None:
        return None
    mask, seen = 0, False
    for child in section:
        bit = XML_CLOCK_REASONS.get(child.tag.removeprefix(prefix))
        text = (child.text or "").strip().lower()
        if bit is None or text not in ("active", "not active"):
            continue
        seen = True
        if text == "active":
            mask |= bit
    return mask if seen else None


def _parse_xml(xml_text: str) -> ET.Element:
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"nvidia-smi printed unreadable XML: {exc}") from None


def parse_health_xml(xml_text: str) -> tuple[HealthFacts, ...]:
    """Every GPU's health fields from ``nvidia-smi -q -x`` (DTD v12 and v13)."""
    root = _parse_xml(xml_text)
    return tuple(_xml_gpu(node, index) for index, node in enumerate(root.findall("gpu")))


def parse_live_xml(xml_text: str, pci_bus_id: str) -> LiveReading:
    """The PCIe link and clock-event reasons of the GPU at ``pci_bus_id`` from ``nvidia-smi -q -x``."""
    root = _parse_xml(xml_text)
    wanted = normalize_pci_bus_id(pci_bus_id)
    for node in root.findall("gpu"):
        bus = (node.findtext("pci/pci_bus_id") or node.get("id") or "").strip()
        if bus and normalize_pci_bus_id(bus) == wanted:
            unavailable: dict[str, Unavailable] = {}
            pcie = _xml_pcie(node)
            if pcie is None:
                unavailable[F_PCIE] = Unavailable("nvidia-smi: the PCIe link fields are N/A", True)
            reasons = _xml_clock_reasons(node)
            if reasons is None:
                unavailable[F_CLOCKS] = Unavailable("nvidia-smi: the clock event reasons are N/A", True)
            return LiveReading(pcie, reasons, unavailable)
    missing = Unavailable(f"nvidia-smi lists no GPU at {wanted}", False)
    return LiveReading(None, None, {F_PCIE: missing, F_CLOCKS: missing})


def run_smi_xml(host: Host, timeout: float) -> str:
    result = host.run(["nvidia-smi", "-q", "-x"], timeout=timeout)
    if not result.ok:
        raise RuntimeError(result.describe())
    return result.stdout
