"""Gathering the health facts of every GPU: NVML where it loads, else nvidia-smi's XML, plus sysfs."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from pytest_gpuhost.facts.health import F_CLOCKS, F_PCIE, HealthSurvey, LiveReading, Unavailable
from pytest_gpuhost.facts.health_nvml import read_nvml_health, read_nvml_live
from pytest_gpuhost.facts.health_xml import parse_health_xml, parse_live_xml, run_smi_xml
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.pcie import read_sysfs_link
from pytest_gpuhost.hosts.host import Host
from pytest_gpuhost.timeouts import NativeCallTimeout


def gather_health(
    host: Host,
    timeout: float,
    use_nvml: bool,
    loader: Callable[[], ModuleType] | None = None,
) -> HealthSurvey:
    """Health facts through NVML when ``use_nvml`` (pytest runs on the host), else nvidia-smi."""
    nvml_error: str | None = None
    if use_nvml:
        try:
            from pytest_gpuhost.facts.nvml import load_pynvml, nvml_call

            nvml: Any = (loader or load_pynvml)()
            gpus = nvml_call(lambda: read_nvml_health(nvml), timeout, "NVML health read")
            return HealthSurvey("nvml", gpus)
        except ImportError as exc:
            nvml_error = f"pynvml cannot be imported: {exc}"
        except NativeCallTimeout as exc:
            nvml_error = str(exc)
        except Exception as exc:  # an NVMLError of a GPU gone bad: nvidia-smi may still answer
            nvml_error = f"NVML: {exc}"
    try:
        gpus = parse_health_xml(run_smi_xml(host, timeout))
    except (RuntimeError, ValueError) as exc:
        error = f"{exc}" + (f"; before that, {nvml_error}" if nvml_error else "")
        return HealthSurvey("nvidia-smi", (), error)
    return HealthSurvey("nvidia-smi", gpus, None)


def read_live(
    host: Host,
    gpu: GpuInfo,
    timeout: float,
    use_nvml: bool,
    loader: Callable[[], ModuleType] | None = None,
) -> LiveReading:
    """One reading of the PCIe link and clock-event reasons: NVML, else sysfs plus nvidia-smi."""
    if use_nvml:
        from pytest_gpuhost.facts.nvml import load_pynvml, nvml_call

        try:
            nvml: Any = (loader or load_pynvml)()
            return nvml_call(lambda: read_nvml_live(nvml, gpu.uuid), timeout, "NVML live read")
        except Exception as exc:  # a timeout, or an NVMLError of a GPU gone bad
            failed = Unavailable(f"NVML: {exc}", False)
            return LiveReading(None, None, {F_PCIE: failed, F_CLOCKS: failed})
    try:
        reading = parse_live_xml(run_smi_xml(host, timeout), gpu.pci_bus_id)
    except (RuntimeError, ValueError) as exc:
        failed = Unavailable(str(exc), False)
        reading = LiveReading(None, None, {F_PCIE: failed, F_CLOCKS: failed})
    sysfs = read_sysfs_link(host, gpu.pci_bus_id)
    if sysfs is not None:
        unavailable = {k: v for k, v in reading.unavailable.items() if k != F_PCIE}
        reading = LiveReading(sysfs, reading.clock_reasons, unavailable)
    return reading
