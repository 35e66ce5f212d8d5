"""GPU health: parsers and criteria against real captures and failures derived in the real formats.

NVML is faked at its boundary by ``FakeNvml`` (the functions the health reader calls, fed from a
capture's ``nvml-dump.json``), nvidia-smi by the capture's XML edited as a failing GPU would print
it, the kernel log by Xid lines in the driver's own formats. The image check runs against CI's
real Docker daemon; the suite itself runs once in pytester against the faked H100 host.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import pynvml
import pytest
from captures_support import DATA, load_nvml_dump
from docker_support import busybox_image
from health_support import XID_79, health_host, healthy_log
from pytester_support import GpuhostPytester

from pytest_gpuhost.criteria.fabric import judge_fabric_manager, judge_gpu_fabric
from pytest_gpuhost.criteria.health import (
    Verdict,
    judge_clocks,
    judge_correctable_ecc,
    judge_ecc_mode,
    judge_mig,
    judge_pcie_link,
    judge_retired_pages,
    judge_row_remapping,
    judge_uncorrectable_ecc,
)
from pytest_gpuhost.criteria.image_cuda import judge_image_cuda
from pytest_gpuhost.criteria.xid import judge_unlisted_xids, judge_xids
from pytest_gpuhost.docker.images import inspect_image_env
from pytest_gpuhost.facts import health, health_nvml
from pytest_gpuhost.facts.fabric import FabricFacts, gather_fabric, parse_fabricmanager_version
from pytest_gpuhost.facts.health import (
    F_CLOCKS,
    F_FABRIC,
    F_PCIE,
    F_RETIRED,
    HealthFacts,
    HealthThresholds,
    LiveReading,
    PcieLink,
    Unavailable,
)
from pytest_gpuhost.facts.health_gather import gather_health, read_live
from pytest_gpuhost.facts.health_nvml import read_nvml_health
from pytest_gpuhost.facts.health_xml import parse_health_xml, parse_live_xml
from pytest_gpuhost.facts.image_cuda import CudaRequirement, GpuTraits, parse_require_cuda, requirement_met
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.pcie import (
    ClockSample,
    Sampled,
    Sampling,
    measure_under_load,
    pcie_link_under_load,
    read_sysfs_link,
    summarize_clocks,
)
from pytest_gpuhost.facts.xid import KernelLog, parse_xids, read_kernel_log
from pytest_gpuhost.hosts.host import CommandResult, LocalHost

H100 = GpuInfo(0, "GPU-042f1913-64c6-43ac-27c6-466e2d9041b0", "NVIDIA H100 80GB HBM3", "0000:00:06.0")
H200_1 = GpuInfo(1, "GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a", "NVIDIA H200", "0000:00:07.0")
DEFAULTS = HealthThresholds()


def xml(capture: str) -> str:
    return (DATA / capture / "nvidia-smi-q-x.xml").read_text()


def edit(text: str, old: str, new: str, count: int = 1) -> str:
    """Replace ``old`` exactly ``count`` times: a derived failure must change the real element."""
    assert text.count(old) == count, (old, text.count(old))
    return text.replace(old, new)


def one(text: str) -> HealthFacts:
    (facts,) = parse_health_xml(text)
    return facts


def failed(verdict: Verdict) -> str:
    diagnosis = verdict.combined_failure()
    assert diagnosis is not None, verdict
    return str(diagnosis)


def passed(verdict: Verdict) -> None:
    assert not verdict.failures and not verdict.warnings and verdict.skip is None, verdict


# -- constants against the installed nvidia-ml-py -------------------------------------------------


def test_constants_match_installed_nvidia_ml_py() -> None:
    assert health.CLOCK_HW_SLOWDOWN == pynvml.nvmlClocksEventReasonHwSlowdown == 0x8
    assert health.CLOCK_HW_THERMAL == pynvml.nvmlClocksEventReasonHwThermalSlowdown == 0x40
    assert health.CLOCK_HW_POWER_BRAKE == pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown == 0x80
    assert health.CLOCK_SW_POWER_CAP == pynvml.nvmlClocksEventReasonSwPowerCap == 0x4
    assert pynvml.nvmlClocksEventReasonSwThermalSlowdown == health.CLOCK_SW_THERMAL
    assert pynvml.nvmlClocksEventReasonGpuIdle == health.CLOCK_GPU_IDLE
    assert pynvml.nvmlClocksEventReasonSyncBoost == health.CLOCK_SYNC_BOOST
    assert pynvml.nvmlClocksEventReasonApplicationsClocksSetting == health.CLOCK_APPLICATIONS_SETTING
    assert pynvml.nvmlClocksEventReasonDisplayClockSetting == health.CLOCK_DISPLAY_SETTING
    assert health.FABRIC_STATES[pynvml.NVML_GPU_FABRIC_STATE_COMPLETED] == "completed"
    assert health.FABRIC_STATES[pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS] == "in progress"
    assert health.FABRIC_STATES[pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED] == "not supported"
    assert health.NVML_BRANDS[pynvml.NVML_BRAND_NVIDIA] == "nvidia"
    assert health.NVML_BRANDS[pynvml.NVML_BRAND_TESLA] == "tesla"
    assert health.NVML_NOT_SUPPORTED == pynvml.NVML_ERROR_NOT_SUPPORTED
    # nvmlDeviceGetGpuFabricInfoV fills a struct the caller passes by reference.
    fields = {name for name, _ in pynvml.c_nvmlGpuFabricInfoV_t._fields_}
    assert {"state", "status"} <= fields


# -- nvidia-smi -q -x ----------------------------------------------------------------------------


def test_h100_xml_is_healthy_and_retired_pages_not_applicable() -> None:
    h = one(xml("h100"))
    assert (h.uuid, h.pci_bus_id, h.brand, h.source) == (H100.uuid, "0000:00:06.0", "nvidia", "nvidia-smi")
    assert h.ecc is not None and (h.ecc.uncorrected_volatile, h.ecc.uncorrected_aggregate) == (0, 0)
    assert (h.remap_pending, h.remap_failure, h.mig_current, h.mig_pending) == (False, False, False, False)
    for verdict in (
        judge_ecc_mode(h),
        judge_uncorrectable_ecc(h, DEFAULTS),
        judge_correctable_ecc(h, DEFAULTS),
        judge_row_remapping(h),
        judge_mig(h, None),
    ):
        passed(verdict)
    retired = judge_retired_pages(h)
    assert retired.skip is not None
    assert retired.skip.startswith("not applicable: retired pages is not supported on NVIDIA H100 80GB HBM3")
    # No NVLink fabric on this single-GPU VM: the fabric state is N/A.
    assert judge_gpu_fabric(h, nvswitches=0).skip == (
        "not applicable: GPU 0 (0000:00:06.0) (NVIDIA H100 80GB HBM3) is not on an NVLink fabric "
        "(nvidia-smi: fabric/state is N/A)"
    )


def test_h200x2_xml_fabric_completed() -> None:
    gpus = parse_health_xml(xml("h200x2"))
    assert [g.uuid for g in gpus] == [load_nvml_dump("h200x2")["gpus"][i]["uuid"] for i in (0, 1)]
    assert [g.fabric_state for g in gpus] == ["completed", "completed"]
    for g in gpus:
        verdict = judge_gpu_fabric(g, nvswitches=0)
        passed(verdict)
        assert ("fabric_state", "completed") in verdict.metrics


def test_dram_uncorrectable_fails_with_reset_and_rma() -> None:
    text = edit(
        xml("h100"),
        "<volatile>\n\t\t\t\t<sram_correctable>0</sram_correctable>\n\t\t\t\t<sram_uncorrectable_parity>0"
        "</sram_uncorrectable_parity>\n\t\t\t\t<sram_uncorrectable_secded>0</sram_uncorrectable_secded>\n"
        "\t\t\t\t<dram_correctable>0</dram_correctable>\n\t\t\t\t<dram_uncorrectable>0</dram_uncorrectable>",
        "<volatile>\n\t\t\t\t<sram_correctable>0</sram_correctable>\n\t\t\t\t<sram_uncorrectable_parity>0"
        "</sram_uncorrectable_parity>\n\t\t\t\t<sram_uncorrectable_secded>0</sram_uncorrectable_secded>\n"
        "\t\t\t\t<dram_correctable>0</dram_correctable>\n\t\t\t\t<dram_uncorrectable>2</dram_uncorrectable>",
    )
    h = one(text)
    assert h.ecc is not None and (h.ecc.uncorrected_volatile, h.ecc.uncorrected_aggregate) == (2, 0)
    text = failed(judge_uncorrectable_ecc(h, DEFAULTS))
    assert "FOUND: 2 uncorrectable ECC error(s) on GPU 0 (0000:00:06.0) since the driver loaded" in text
    assert "sudo nvidia-smi -r -i 0" in text and "RMA" in text


def test_sram_uncorrectable_counts_and_aggregate_threshold() -> None:
    text = edit(
        xml("h100"),
        "<sram_uncorrectable_secded>0</sram_uncorrectable_secded>\n\t\t\t\t<dram_correctable>0</dram_correctable>"
        "\n\t\t\t\t<dram_uncorrectable>0</dram_uncorrectable>\n\t\t\t\t<sram_threshold_exceeded>",
        "<sram_uncorrectable_secded>3</sram_uncorrectable_secded>\n\t\t\t\t<dram_correctable>0</dram_correctable>"
        "\n\t\t\t\t<dram_uncorrectable>0</dram_uncorrectable>\n\t\t\t\t<sram_threshold_exceeded>",
    )
    h = one(text)
    assert h.ecc is not None and (h.ecc.uncorrected_volatile, h.ecc.uncorrected_aggregate) == (0, 3)
    assert "3 uncorrectable ECC error(s) in the lifetime of GPU 0" in failed(
        judge_uncorrectable_ecc(h, DEFAULTS)
    )
    passed(judge_uncorrectable_ecc(h, HealthThresholds(aggregate_uncorrectable_max=5)))


def test_unrepairable_memory_flag_fails() -> None:
    h = one(
        edit(
            xml("h100"),
            "<unrepairable_memory>No</unrepairable_memory>",
            "<unrepairable_memory>Yes</unrepairable_memory>",
        )
    )
    assert "nvidia-smi reports unrepairable memory on GPU 0" in failed(judge_uncorrectable_ecc(h, DEFAULTS))


def test_correctable_thresholds() -> None:
    base = one(xml("h100"))
    assert base.ecc is not None

    def with_corrected(n: int) -> HealthFacts:
        assert base.ecc is not None
        return HealthFacts(
            **{**base.__dict__, "ecc": health.EccCounts(0, 0, n, n)},
        )

    passed(judge_correctable_ecc(with_corrected(100), DEFAULTS))
    warned = judge_correctable_ecc(with_corrected(101), DEFAULTS)
    assert not warned.failures and "101 correctable ECC errors" in warned.warnings[0].found
    assert (
        "1001 correctable ECC errors on GPU 0 (0000:00:06.0) since the driver loaded (fail above 1000)"
        in failed(judge_correctable_ecc(with_corrected(1001), DEFAULTS))
    )
    passed(
        judge_correctable_ecc(
            with_corrected(5000), HealthThresholds(correctable_warn_above=10**6, correctable_fail_above=10**6)
        )
    )


def test_ecc_disabled_warns_and_skips_counts() -> None:
    text = edit(xml("h100"), "<current_ecc>Enabled</current_ecc>", "<current_ecc>Disabled</current_ecc>")
    text = re.sub(r"(<(?:sram|dram)_[a-z_]*correctable[a-z_]*>)0(</)", r"\1N/A\2", text)
    h = one(text)
    assert h.ecc_current is False and h.ecc is None
    mode = judge_ecc_mode(h)
    assert not mode.failures
    assert [w.found for w in mode.warnings] == [
        "ECC is disabled on GPU 0 (0000:00:06.0), a data-centre GPU (NVIDIA H100 80GB HBM3)",
        "an ECC mode change is pending on GPU 0 (0000:00:06.0): current off, pending on",
    ]
    assert judge_uncorrectable_ecc(h, DEFAULTS).skip == (
        "not applicable: ECC is disabled on GPU 0 (0000:00:06.0), so there are no ECC error counts"
    )


def test_row_remap_pending_and_failure() -> None:
    pending = one(
        edit(
            xml("h100"),
            "<remapped_row_pending>No</remapped_row_pending>",
            "<remapped_row_pending>Yes</remapped_row_pending>",
        )
    )
    text = failed(judge_row_remapping(pending))
    assert "FOUND: a row remapping is pending on GPU 0 (0000:00:06.0)" in text
    assert "`sudo nvidia-smi -r -i 0`" in text
    broken = one(
        edit(
            xml("h100"),
            "<remapped_row_failure>No</remapped_row_failure>",
            "<remapped_row_failure>Yes</remapped_row_failure>",
        )
    )
    assert "row remapping failed on GPU 0" in failed(judge_row_remapping(broken))
    assert "RMA" in failed(judge_row_remapping(broken))


def test_retired_pages_pending_on_an_older_gpu() -> None:
    text = edit(
        xml("h100"),
        "<pending_retirement>N/A</pending_retirement>",
        "<pending_retirement>Yes</pending_retirement>",
    )
    verdict = judge_retired_pages(one(text))
    assert "a retired page is pending on GPU 0 (0000:00:06.0)" in failed(verdict)


def test_mig_pending_differs_from_current() -> None:
    h = one(edit(xml("h100"), "<pending_mig>Disabled</pending_mig>", "<pending_mig>Enabled</pending_mig>"))
    text = failed(judge_mig(h, None))
    assert "a MIG mode change is pending on GPU 0 (0000:00:06.0): current off, pending on" in text
    assert "reboot or `sudo nvidia-smi -i 0 -r` to apply the pending MIG mode" in text


def test_mig_expected_mode() -> None:
    h = one(xml("h100"))
    passed(judge_mig(h, "off"))
    assert "MIG is off on GPU 0 (0000:00:06.0), --gpuhost-mig expects on" in failed(judge_mig(h, "on"))
    no_mig = HealthFacts(
        0,
        "u",
        "NVIDIA L4",
        "0000:00:06.0",
        "nvml",
        unavailable={health.F_MIG: Unavailable("NVML: Not Supported", True)},
    )
    assert (
        judge_mig(no_mig, None).skip
        == "not applicable: MIG mode is not supported on NVIDIA L4 (NVML: Not Supported)"
    )
    assert "does not support MIG" in failed(judge_mig(no_mig, "on"))


def test_fabric_in_progress_fails() -> None:
    text = edit(xml("h200x2"), "<state>Completed</state>", "<state>In Progress</state>", count=2)
    h = parse_health_xml(text)[1]
    found = failed(judge_gpu_fabric(h, nvswitches=0))
    assert "the NVLink fabric registration of GPU 1 (0000:00:07.0) is 'in progress', not completed" in found
    assert "system not yet initialized" in found


def test_live_xml_link_and_clock_reasons() -> None:
    reading = parse_live_xml(xml("h100"), "00000000:00:06.0")
    assert reading.pcie == PcieLink(5, 5, 16, 16, 5, source="nvidia-smi")
    assert reading.clock_reasons == health.CLOCK_GPU_IDLE
    throttled = edit(
        xml("h100"),
        "<clocks_event_reason_hw_slowdown>Not Active</clocks_event_reason_hw_slowdown>",
        "<clocks_event_reason_hw_slowdown>Active</clocks_event_reason_hw_slowdown>",
    )
    assert parse_live_xml(throttled, "0000:00:06.0").clock_reasons == 0x9
    missing = parse_live_xml(xml("h100"), "0000:00:09.0")
    assert missing.pcie is None and not missing.unavailable[F_PCIE].unsupported


def test_downtrained_link_16x_to_8x_fails_even_at_idle() -> None:
    text = edit(
        xml("h100"),
        "<current_link_width>16x</current_link_width>",
        "<current_link_width>8x</current_link_width>",
    )
    link = parse_live_xml(text, H100.pci_bus_id).pcie
    found = failed(judge_pcie_link(H100, link, loaded=False, why=None))
    assert (
        "FOUND: the PCIe link of GPU 0 (0000:00:06.0) is downtrained to x8 (the GPU and slot allow x16)"
        in found
    )
    assert "lspci -vv -s 0000:00:06.0" in found


def test_lower_generation_is_a_note_at_idle_and_a_failure_under_load() -> None:
    text = edit(
        xml("h100"), "<current_link_gen>5</current_link_gen>", "<current_link_gen>1</current_link_gen>"
    )
    link = parse_live_xml(text, H100.pci_bus_id).pcie
    idle = judge_pcie_link(H100, link, loaded=False, why=None)
    assert not idle.failures and "runs at Gen1 (the GPU and slot allow Gen5) at idle" in idle.notes[0]
    assert ("pcie_measured_under_load", False) in idle.metrics
    assert "runs at Gen1 (the GPU and slot allow Gen5) under load" in failed(
        judge_pcie_link(H100, link, loaded=True, why=None)
    )


def test_slot_slower_than_gpu_warns() -> None:
    verdict = judge_pcie_link(H100, PcieLink(4, 4, 16, 16, gpu_max_gen=5), loaded=True, why=None)
    assert not verdict.failures
    assert (
        verdict.warnings[0].found
        == "the slot limits GPU 0 (0000:00:06.0) to PCIe Gen4; the GPU supports Gen5"
    )


# -- sysfs ---------------------------------------------------------------------------------------


def write_pci(root: Path, address: str, speed: str, width: int, max_speed: str, max_width: int) -> Path:
    device = root / "sys/devices/pci0000:00" / address
    device.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("current_link_speed", speed),
        ("current_link_width", str(width)),
        ("max_link_speed", max_speed),
        ("max_link_width", str(max_width)),
    ):
        (device / name).write_text(value + "\n")
    return device


def test_sysfs_link_as_captured(tmp_path: Path) -> None:
    # tests/data/h100/sys-pci-nvidia.txt: link_speed=32.0 GT/s PCIe width=16, on the VM's root bus.
    line = (DATA / "h100" / "sys-pci-nvidia.txt").read_text()
    speed = re.search(r"link_speed=(\S+ GT/s PCIe)", line)
    assert speed is not None
    write_pci(tmp_path, "0000:00:06.0", speed.group(1), 16, speed.group(1), 16)
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:00:06.0").symlink_to("../../../devices/pci0000:00/0000:00:06.0")
    assert read_sysfs_link(LocalHost(root=tmp_path), "00000000:00:06.0") == PcieLink(5, 5, 16, 16, 5, "sysfs")


def test_sysfs_link_behind_a_bridge_takes_the_slot_limit(tmp_path: Path) -> None:
    bridge = write_pci(tmp_path, "0000:00:01.0", "16.0 GT/s PCIe", 16, "16.0 GT/s PCIe", 16)
    gpu = bridge / "0000:01:00.0"
    gpu.mkdir()
    for name, value in (
        ("current_link_speed", "16.0 GT/s PCIe"),
        ("current_link_width", "8"),
        ("max_link_speed", "32.0 GT/s PCIe"),
        ("max_link_width", "16"),
    ):
        (gpu / name).write_text(value + "\n")
    links = tmp_path / "sys/bus/pci/devices"
    links.mkdir(parents=True)
    (links / "0000:00:01.0").symlink_to("../../../devices/pci0000:00/0000:00:01.0")
    (links / "0000:01:00.0").symlink_to("../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0")
    link = read_sysfs_link(LocalHost(root=tmp_path), "0000:01:00.0")
    assert link == PcieLink(4, 4, 8, 16, 5, "sysfs")
    gpu_info = GpuInfo(0, "GPU-x", "NVIDIA H100 PCIe", "0000:01:00.0")
    verdict = judge_pcie_link(gpu_info, link, loaded=True, why=None)
    assert "downtrained to x8 (the GPU and slot allow x16)" in failed(verdict)
    assert verdict.warnings[0].found.startswith("the slot limits GPU 0 (0000:01:00.0) to PCIe Gen4")


# -- sampling under load -------------------------------------------------------------------------


class RecordingLoad:
    """A load callable: records when it runs, so reads can be checked to happen inside it."""

    def __init__(self) -> None:
        self.running = False
        self.runs = 0

    def __call__(self) -> contextlib.AbstractContextManager[object]:
        @contextlib.contextmanager
        def run() -> Iterator[object]:
            self.running, self.runs = True, self.runs + 1
            try:
                yield self
            finally:
                self.running = False

        return run()


NO_WAIT = Sampling(warmup_s=0, samples=4, interval_s=0)


def test_link_is_read_while_the_load_runs_and_the_best_reading_counts() -> None:
    load = RecordingLoad()
    readings = iter([PcieLink(1, 5, 16, 16, 5), PcieLink(5, 5, 16, 16, 5), PcieLink(5, 5, 16, 16, 5), None])

    def read() -> PcieLink | None:
        assert load.running
        return next(readings)

    link, loaded = pcie_link_under_load(read, load, NO_WAIT)
    assert (link, loaded, load.runs) == (PcieLink(5, 5, 16, 16, 5), True, 1)
    passed(judge_pcie_link(H100, link, loaded, None))


def test_without_a_load_one_idle_reading() -> None:
    calls: list[int] = []

    def read() -> PcieLink | None:
        calls.append(1)
        return PcieLink(2, 5, 16, 16, 5)

    link, loaded = pcie_link_under_load(read, None, NO_WAIT)
    assert (len(calls), loaded, link) == (1, False, PcieLink(2, 5, 16, 16, 5))


def test_measure_under_load_reads_link_and_clocks_from_one_load() -> None:
    load = RecordingLoad()
    masks = iter([0x4, 0x4 | 0x40, 0x40, 0x4])

    def read() -> LiveReading:
        return LiveReading(PcieLink(5, 5, 16, 16, 5), next(masks))

    measured = measure_under_load(read, load, NO_WAIT)
    assert load.runs == 1 and measured.loaded
    assert measured.clocks is not None and measured.clocks.counts[0x40] == 2 and measured.clocks.samples == 4
    verdict = judge_clocks(H100, measured.clocks, None, DEFAULTS)
    found = failed(verdict)
    assert (
        "GPU 0 (0000:00:06.0) reports hardware thermal slowdown (0x40) in 2 of 4 samples under load" in found
    )
    assert any("software power cap active in 3 of 4 samples under load" in n for n in verdict.notes)


def test_clock_reasons_single_blip_under_load_is_a_note() -> None:
    clocks = summarize_clocks(Sampled((0x0, 0x8, 0x0, 0x0, 0x0), loaded=True))
    verdict = judge_clocks(H100, clocks, None, DEFAULTS)
    assert not verdict.failures and "hardware slowdown seen once in 5 samples: not judged" in verdict.notes


def test_clock_reasons_at_idle() -> None:
    idle = ClockSample({health.CLOCK_GPU_IDLE: 1}, 1, loaded=False)
    verdict = judge_clocks(H100, idle, None, DEFAULTS)
    passed(verdict)
    assert ("clock_event_reasons", "0x1") in verdict.metrics
    brake = ClockSample({health.CLOCK_HW_POWER_BRAKE: 1}, 1, loaded=False)
    assert "reports hardware power brake slowdown (0x80) in 1 of 1 samples at idle" in failed(
        judge_clocks(H100, brake, None, DEFAULTS)
    )
    hot = judge_clocks(H100, ClockSample({health.CLOCK_SW_THERMAL: 1}, 1, loaded=False), None, DEFAULTS)
    assert not hot.failures and "software thermal slowdown" in hot.warnings[0].found


def test_unsupported_and_unreadable_live_fields() -> None:
    gone = Unavailable("NVML: GPU is lost", False)
    assert "PCIe link of GPU 0 (0000:00:06.0) cannot be read: NVML: GPU is lost" in failed(
        judge_pcie_link(H100, None, False, gone)
    )
    unsupported = Unavailable("NVML: Not Supported", True)
    assert judge_clocks(H100, None, unsupported, DEFAULTS).skip == (
        "not applicable: clock event reasons is not supported on NVIDIA H100 80GB HBM3 (NVML: Not Supported)"
    )


# -- NVML, faked at its boundary -----------------------------------------------------------------


class FakeNvmlError(Exception):
    TEXT = {3: "Not Supported", 15: "GPU is lost", 999: "Unknown Error"}  # noqa: RUF012

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self.TEXT.get(self.value, f"NVML error {self.value}")


class FakeNvml:
    """The NVML functions the health reader calls, answering from an ``nvml-dump.json`` capture.

    A field recorded as ``{"nvml_error": "Not Supported"}``, or absent, raises NOT_SUPPORTED.
    ``fabric_states`` gives nvmlDeviceGetGpuFabricInfoV's state per GPU (None: not supported);
    it fills nvidia-ml-py's own struct through ``ctypes.byref``, as the C library does.
    """

    NVMLError = FakeNvmlError
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    c_nvmlGpuFabricInfoV_t = pynvml.c_nvmlGpuFabricInfoV_t

    def __init__(
        self, dump: dict[str, Any], fabric_states: Sequence[int | None] = (), hang_s: float = 0
    ) -> None:
        self.gpus: list[dict[str, Any]] = dump["gpus"]
        self.fabric_states = list(fabric_states) or [None] * len(self.gpus)
        self.hang_s = hang_s
        self.initialised = 0

    def _field(self, handle: int, key: str) -> Any:
        value = self.gpus[handle].get(key, {"nvml_error": "Not Supported"})
        if isinstance(value, dict) and "nvml_error" in value:
            raise FakeNvmlError(3 if value["nvml_error"] == "Not Supported" else 999)
        return value

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        time.sleep(self.hang_s)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return next(i for i, g in enumerate(self.gpus) if g["uuid"] == uuid)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._field(handle, "uuid"))

    def nvmlDeviceGetName(self, handle: int) -> str:
        return str(self._field(handle, "name"))

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(**self._field(handle, "pci"))

    def nvmlDeviceGetBrand(self, handle: int) -> int:
        return int(self._field(handle, "brand"))

    def nvmlDeviceGetEccMode(self, handle: int) -> list[int]:
        return list(self._field(handle, "ecc_mode"))

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter: int) -> int:
        kind = "uncorrected" if error_type == self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else "corrected"
        which = "aggregate" if counter == self.NVML_AGGREGATE_ECC else "volatile"
        return int(self._field(handle, f"ecc_{kind}_{which}"))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: int) -> int:
        return int(self._field(handle, "retired_pending"))

    def nvmlDeviceGetRemappedRows(self, handle: int) -> tuple[int, int, int, int]:
        corr, unc, pending, failure = self._field(handle, "remapped_rows")
        return (corr, unc, pending, failure)

    def nvmlDeviceGetMigMode(self, handle: int) -> list[int]:
        return list(self._field(handle, "mig"))

    def nvmlDeviceGetGpuFabricInfoV(self, handle: int, info_ref: Any) -> int:
        state = self.fabric_states[handle]
        if state is None:
            raise FakeNvmlError(3)
        info = info_ref._obj  # ctypes.byref(...) of a c_nvmlGpuFabricInfoV_t
        assert isinstance(info, pynvml.c_nvmlGpuFabricInfoV_t)
        info.state, info.status = state, 0
        return 0

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: int) -> int:
        return int(self._field(handle, "pcie_gen"))

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: int) -> int:
        return int(self._field(handle, "pcie_gen_max"))

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, handle: int) -> int:
        return int(self._field(handle, "pcie_gen_gpu_max"))

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: int) -> int:
        return int(self._field(handle, "pcie_width"))

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: int) -> int:
        return int(self._field(handle, "pcie_width_max"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return int(self._field(handle, "clocks_event_reasons"))


def test_nvml_h100_healthy_and_not_supported_fields() -> None:
    nvml = FakeNvml(load_nvml_dump("h100"))
    (h,) = read_nvml_health(nvml)
    assert nvml.initialised == 0
    assert (h.uuid, h.pci_bus_id, h.brand, h.source) == (H100.uuid, "0000:00:06.0", "nvidia", "nvml")
    assert h.ecc == health.EccCounts(0, 0, 0, None)  # the capture has no corrected aggregate count
    assert (h.remapped_corr, h.remapped_unc, h.remap_pending, h.remap_failure) == (0, 0, False, False)
    assert h.unavailable[F_RETIRED] == Unavailable("NVML: Not Supported", True)
    assert judge_retired_pages(h).skip == (
        "not applicable: retired pages is not supported on NVIDIA H100 80GB HBM3 (NVML: Not Supported)"
    )
    assert h.fabric_state is None and h.unavailable[F_FABRIC].unsupported
    for verdict in (
        judge_ecc_mode(h),
        judge_uncorrectable_ecc(h, DEFAULTS),
        judge_row_remapping(h),
        judge_mig(h, None),
    ):
        passed(verdict)


def test_nvml_h200_fabric_completed() -> None:
    states = [pynvml.NVML_GPU_FABRIC_STATE_COMPLETED] * 2
    gpus = read_nvml_health(FakeNvml(load_nvml_dump("h200x2"), fabric_states=states))
    assert [g.fabric_state for g in gpus] == ["completed", "completed"]
    passed(judge_gpu_fabric(gpus[1], nvswitches=0))
    stuck = read_nvml_health(
        FakeNvml(load_nvml_dump("h200x2"), fabric_states=[3, pynvml.NVML_GPU_FABRIC_STATE_NOT_STARTED])
    )
    assert "is 'not started', not completed" in failed(judge_gpu_fabric(stuck[1], nvswitches=0))


def test_nvml_derived_failures() -> None:
    dump = copy.deepcopy(load_nvml_dump("h100"))
    gpu = dump["gpus"][0]
    gpu.update(
        ecc_uncorrected_volatile=2, ecc_uncorrected_aggregate=2, remapped_rows=[0, 1, 1, 0], mig=[0, 1]
    )
    gpu.update(pcie_width=8, clocks_event_reasons=0x1 | 0x8)
    (h,) = read_nvml_health(FakeNvml(dump))
    assert "2 uncorrectable ECC error(s) on GPU 0" in failed(judge_uncorrectable_ecc(h, DEFAULTS))
    assert "a row remapping is pending on GPU 0" in failed(judge_row_remapping(h))
    assert "current off, pending on" in failed(judge_mig(h, None))
    live = health_nvml.read_nvml_live(FakeNvml(dump), H100.uuid)
    assert live.pcie == PcieLink(5, 5, 8, 16, 5, "nvml") and live.clock_reasons == 0x9
    assert "downtrained to x8" in failed(judge_pcie_link(H100, live.pcie, True, None))


def test_gather_health_uses_nvml_and_falls_back_to_nvidia_smi() -> None:
    nvml = FakeNvml(load_nvml_dump("h200x2"))
    host = FakeHost(commands={("nvidia-smi", "-q", "-x"): ok(xml("h200x2"))})
    survey = gather_health(host, 5, use_nvml=True, loader=lambda: nvml)  # type: ignore[arg-type,return-value]
    assert survey.source == "nvml" and len(survey.gpus) == 2 and host.ran == []
    assert survey.for_gpu(H200_1) is survey.gpus[1]
    # A wedged GPU: NVML hangs past the timeout, nvidia-smi still answers.
    hung = FakeNvml(load_nvml_dump("h200x2"), hang_s=2)
    survey = gather_health(host, 0.2, use_nvml=True, loader=lambda: hung)  # type: ignore[arg-type,return-value]
    assert survey.source == "nvidia-smi" and len(survey.gpus) == 2 and survey.error is None
    remote = gather_health(FakeHost(commands={}), 5, use_nvml=False)
    assert remote.gpus == () and remote.error == "`nvidia-smi` is not installed or not on PATH"


def test_read_live_remote_prefers_sysfs_for_the_link(tmp_path: Path) -> None:
    write_pci(tmp_path, "0000:00:06.0", "2.5 GT/s PCIe", 16, "32.0 GT/s PCIe", 16)
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:00:06.0").symlink_to("../../../devices/pci0000:00/0000:00:06.0")
    host = FakeHost(commands={("nvidia-smi", "-q", "-x"): ok(xml("h100"))}, root=tmp_path)
    reading = read_live(host, H100, 5, use_nvml=False)
    assert reading.pcie == PcieLink(1, 5, 16, 16, 5, "sysfs") and reading.clock_reasons == 0x1
    gone = read_live(FakeHost(commands={}), H100, 5, use_nvml=False)
    assert gone.pcie is None and not gone.unavailable[F_CLOCKS].unsupported


# -- a host of canned commands and files ---------------------------------------------------------


def ok(stdout: str) -> CommandResult:
    return CommandResult((), 0, stdout, "")


class FakeHost:
    """Commands answer from a table (an unknown one is missing); files come from ``root`` or ``files``."""

    def __init__(
        self,
        commands: dict[tuple[str, ...], CommandResult],
        files: dict[str, str | Exception] | None = None,
        root: Path | None = None,
    ) -> None:
        self.name = "fake"
        self.commands = commands
        self.files = files or {}
        self.local = LocalHost(root=root or Path("/nonexistent-gpuhost-root"))
        self.ran: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> CommandResult:
        key = tuple(argv)
        self.ran.append(key)
        canned = self.commands.get(key)
        if canned is None:
            return CommandResult(key, None, "", f"No such file or directory: {argv[0]!r}", missing=True)
        return CommandResult(
            key, canned.returncode, canned.stdout, canned.stderr, canned.timed_out, canned.missing
        )

    def read_text(self, path: str) -> str | None:
        if path in self.files:
            value = self.files[path]
            if isinstance(value, Exception):
                raise value
            return value
        return self.local.read_text(path)

    def listdir(self, path: str) -> list[str]:
        return self.local.listdir(path)

    def exists(self, path: str) -> bool:
        return self.local.exists(path)

    def readlink(self, path: str) -> str | None:
        return self.local.readlink(path)


# -- Xid -----------------------------------------------------------------------------------------

# Real line formats: current drivers (pid='<unknown>', name=...), pid only, and before "PCI:".
XID_63 = "[  812.004411] NVRM: Xid (PCI:0000:00:07): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate."
XID_13 = (
    "Nov 23 05:30:01 gpu-host kernel: NVRM: Xid (PCI:0000:00:06): 13, pid=4242, name=python3, "
    "Graphics SM Warp Exception on (GPC 1, TPC 3, SM 0): Out Of Range Address"
)
XID_OLD = "[  966.503025] NVRM: Xid (0000:00:07): 31, Ch 0000000b, engmask 00000120, intr 10000000"
OFF_BUS = (
    "[ 1843.308145] NVRM: The NVIDIA GPU 0000:00:08.0\n"
    "               NVRM: (PCI ID: 10de:2335) installed in this system has\n"
    "               NVRM: fallen off the bus and is not responding to commands."
)


def test_parse_xid_formats() -> None:
    events = parse_xids("\n".join([healthy_log("h200x2"), XID_79, XID_63, XID_13, XID_OLD, OFF_BUS]))
    assert [(e.code, e.pci, e.pid, e.process) for e in events] == [
        (79, "0000:00:06", "<unknown>", "<unknown>"),
        (63, "0000:00:07", "1896", None),
        (13, "0000:00:06", "4242", "python3"),
        (31, "0000:00:07", None, None),
        (79, "0000:00:08", None, None),
    ]
    assert events[0].message == "GPU has fallen off the bus."
    assert events[1].message.startswith("Row Remapper: New row marked for remapping")
    assert events[0].on_gpu("00000000:00:06.0") and not events[0].on_gpu("0000:00:07.0")
    assert parse_xids(healthy_log("h100")) == ()


def test_healthy_capture_passes() -> None:
    log = KernelLog(healthy_log("h100"), "dmesg")
    verdict = judge_xids("GPU 0 (0000:00:06.0)", [], log, DEFAULTS, 0)
    passed(verdict)
    assert ("xid_events", 0) in verdict.metrics


def test_hardware_xid_fails_with_meaning_and_application_xid_is_reported() -> None:
    log = KernelLog("\n".join([XID_79, XID_13, XID_13]), "dmesg")
    mine = [e for e in parse_xids(log.text or "") if e.on_gpu(H100.pci_bus_id)]
    verdict = judge_xids("GPU 0 (0000:00:06.0)", mine, log, DEFAULTS, 0)
    found = failed(verdict)
    assert "FOUND: Xid 79 on GPU 0 (0000:00:06.0) since boot, 1 time(s): GPU has fallen off the bus" in found
    assert "reboot (a GPU off the bus cannot be reset in place)" in found
    assert "Xid 13" not in found
    assert verdict.notes[0].startswith("Xid 13 x2 (graphics engine exception")
    only_app = judge_xids("GPU 0", [e for e in mine if e.code == 13], log, DEFAULTS, 0)
    assert not only_app.failures and ("xid_13", 2) in only_app.metrics


def test_memory_xid_names_reset_and_unknown_xid_fails() -> None:
    log = KernelLog(XID_63, "dmesg")
    found = failed(judge_xids("GPU 1 (0000:00:07.0)", parse_xids(XID_63), log, DEFAULTS, 1))
    assert (
        "Xid 63: ECC page retirement or row remapping recorded" in found
        and "sudo nvidia-smi -r -i 1" in found
    )
    odd = parse_xids("NVRM: Xid (PCI:0000:00:06): 999, something new")
    assert "NVIDIA's Xid catalog" in failed(judge_xids("GPU 0", odd, KernelLog("x", "dmesg"), DEFAULTS, 0))


def test_xid_of_an_unlisted_gpu_fails() -> None:
    events = parse_xids("\n".join([XID_13, OFF_BUS]))
    log = KernelLog("x", "dmesg")
    found = failed(judge_unlisted_xids(events, ["00000000:00:06.0", "00000000:00:07.0"], log))
    assert "Xid 79 since boot on PCI 0000:00:08, which no listed GPU has" in found
    passed(judge_unlisted_xids(parse_xids(XID_13), ["0000:00:06.0"], log))


DMESG_DENIED = CommandResult(("dmesg",), 1, "", "dmesg: read kernel buffer failed: Operation not permitted\n")


def test_unreadable_kernel_log_is_a_skip_with_the_reason() -> None:
    host = FakeHost(
        commands={
            ("dmesg",): DMESG_DENIED,
            ("journalctl", "-k", "-b", "--no-pager", "-q"): ok("-- No entries --\n"),
        },
        files={"/var/log/kern.log": PermissionError(13, "Permission denied")},
    )
    log = read_kernel_log(host, 5)
    assert log.text is None
    verdict = judge_xids("GPU 0", [], log, DEFAULTS, 0)
    assert verdict.skip is not None
    assert verdict.skip.startswith(
        "the kernel log cannot be read: `dmesg` exited with 1: dmesg: read kernel buffer failed: "
        "Operation not permitted (kernel.dmesg_restrict=1 lets only root read it)"
    )
    assert "journalctl -k -b` shows no kernel messages to this user" in verdict.skip


def test_kernel_log_fallbacks() -> None:
    journal = "Nov 23 05:30:01 gpu-host kernel: NVRM: loading NVIDIA UNIX Open Kernel Module\n" + XID_13
    host = FakeHost(
        commands={("dmesg",): DMESG_DENIED, ("journalctl", "-k", "-b", "--no-pager", "-q"): ok(journal)}
    )
    assert read_kernel_log(host, 5) == KernelLog(journal, "journalctl -k -b")
    kern = (
        "Nov 22 01:00:00 gpu-host kernel: [    0.000000] Linux version 6.8.0\n"
        "Nov 22 02:00:00 gpu-host kernel: [ 99.1] NVRM: Xid (PCI:0000:00:06): 79, pid=1, GPU has fallen off the bus.\n"
        "Nov 23 05:00:00 gpu-host kernel: [    0.000000] Linux version 6.8.0\n" + XID_13 + "\n"
    )
    host = FakeHost(commands={("dmesg",): DMESG_DENIED}, files={"/var/log/kern.log": kern})
    log = read_kernel_log(host, 5)
    assert log.source == "/var/log/kern.log"
    assert [e.code for e in parse_xids(log.text or "")] == [13]  # the earlier boot's Xid 79 is not counted


# -- fabric --------------------------------------------------------------------------------------


def nvswitch_root(tmp_path: Path, count: int) -> Path:
    links = tmp_path / "sys/bus/pci/devices"
    links.mkdir(parents=True)
    for n in range(count):
        device = tmp_path / f"sys/devices/pci0000:00/0000:0{n + 5}:00.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text("0x10de\n")
        (device / "class").write_text("0x068000\n")
        (links / device.name).symlink_to(f"../../../devices/pci0000:00/{device.name}")
    return tmp_path


def fm_commands(state: str, version: str, pgrep_rc: int = 0) -> dict[tuple[str, ...], CommandResult]:
    return {
        ("systemctl", "is-active", "nvidia-fabricmanager"): CommandResult(
            (), 0 if state == "active" else 3, state + "\n", ""
        ),
        ("pgrep", "-x", "nv-fabricmanager"): CommandResult(
            (), pgrep_rc, "1234\n" if pgrep_rc == 0 else "", ""
        ),
        ("nv-fabricmanager", "--version"): ok(f"Fabric Manager version is : {version}\n"),
    }


def test_fabric_manager_on_an_nvswitch_system(tmp_path: Path) -> None:
    root = nvswitch_root(tmp_path, 4)
    fabric = gather_fabric(FakeHost(fm_commands("active", "580.159.04"), root=root), 5)
    assert fabric == FabricFacts(
        ("0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0"), "active", True, "580.159.04", None
    )
    passed(judge_fabric_manager(fabric, "580.159.04", 8))
    old = gather_fabric(FakeHost(fm_commands("active", "570.172.08"), root=root), 5)
    found = failed(judge_fabric_manager(old, "580.159.04", 8))
    assert "Fabric Manager 570.172.08 does not match driver 580.159.04" in found
    assert "nvidia-fabricmanager-580=580.159.04-1" in found
    stopped = gather_fabric(FakeHost(fm_commands("inactive", "580.159.04", pgrep_rc=1), root=root), 5)
    assert (
        "nv-fabricmanager is not running on this NVSwitch system (4 NVSwitches; systemctl: inactive)"
        in failed(judge_fabric_manager(stopped, "580.159.04", 8))
    )


def test_fabric_manager_not_applicable_without_nvswitch() -> None:
    host = FakeHost(commands={})
    fabric = gather_fabric(host, 5)
    assert fabric == FabricFacts(()) and host.ran == []  # nothing asked on a host without NVSwitch
    skip = judge_fabric_manager(fabric, "580.159.04", 0).skip
    assert skip is not None and skip.startswith("not applicable: no NVSwitch on this host")
    vm = judge_fabric_manager(fabric, "580.159.04", 2).skip  # the H200 VM: fabric GPUs, switches elsewhere
    assert vm is not None and "managed by a Fabric Manager outside it" in vm


def test_fabricmanager_version_output() -> None:
    assert parse_fabricmanager_version("Fabric Manager version is : 580.159.04\n") == "580.159.04"
    assert parse_fabricmanager_version("") is None


# -- image CUDA requirement ----------------------------------------------------------------------

CUDA_13_IMAGE = (
    "cuda>=13.0 brand=unknown,driver>=535,driver<536 brand=grid,driver>=535,driver<536 "
    "brand=tesla,driver>=535,driver<536 brand=nvidia,driver>=535,driver<536"
)
H100_TRAITS = [GpuTraits("nvidia", (9, 0))]


def test_parse_require_cuda() -> None:
    req = parse_require_cuda(CUDA_13_IMAGE)
    assert isinstance(req, CudaRequirement) and req.cuda == "13.0" and len(req.alternatives) == 5
    assert [str(c) for c in req.alternatives[3]] == ["brand=tesla", "driver>=535", "driver<536"]


def test_requirement_met_directly_and_through_forward_compatibility() -> None:
    req = parse_require_cuda(CUDA_13_IMAGE)
    assert requirement_met(req, "13.0", "580.159.04", H100_TRAITS[0])[0] is True
    assert requirement_met(req, "12.2", "535.104.05", GpuTraits("tesla", (8, 0)))[0] is True
    assert requirement_met(req, "12.2", "535.104.05", GpuTraits("geforce", (8, 9)))[0] is False
    assert requirement_met(req, "12.2", "535.104.05", GpuTraits(None, None))[0] is None
    assert (
        requirement_met(parse_require_cuda("cuda>=12.4 driver<=470"), "11.4", "470.57.02", H100_TRAITS[0])[0]
        is True
    )


def test_judge_image_cuda() -> None:
    env = {"NVIDIA_REQUIRE_CUDA": CUDA_13_IMAGE}
    verdict = judge_image_cuda("nvidia/cuda:13.0.1-base-ubuntu24.04", env, "13.0", "580.159.04", H100_TRAITS)
    passed(verdict)
    assert ("image_requires_cuda", "13.0") in verdict.metrics
    found = failed(
        judge_image_cuda("img", {"NVIDIA_REQUIRE_CUDA": "cuda>=13.1"}, "13.0", "580.159.04", H100_TRAITS)
    )
    assert (
        "FOUND: img needs CUDA 13.1 (NVIDIA_REQUIRE_CUDA=cuda>=13.1); the driver 580.159.04 provides CUDA 13.0"
        in found
    )
    assert "CUDA driver version is insufficient for CUDA runtime version" in found
    assert "pick an image built for CUDA 13.0 or older" in found
    compat = judge_image_cuda("img", env, "12.2", "535.104.05", [GpuTraits("tesla", (8, 0))])
    assert (
        not compat.failures and "forward compatibility: brand=tesla,driver>=535,driver<536" in compat.notes[0]
    )
    disabled = judge_image_cuda(
        "img", {"NVIDIA_REQUIRE_CUDA": "cuda>=99.0", "NVIDIA_DISABLE_REQUIRE": "true"}, "13.0", None, []
    )
    assert not disabled.failures
    passed(judge_image_cuda("busybox", {"PATH": "/bin"}, "13.0", "580.159.04", H100_TRAITS))


@pytest.fixture(scope="module")
def cuda_images(client: docker.DockerClient) -> Iterator[dict[str, str]]:
    """Images whose only difference is NVIDIA_REQUIRE_CUDA, committed from the local busybox image."""
    base = busybox_image(client)
    made: dict[str, str] = {}
    for key, requirement in (
        ("cuda99", "cuda>=99.0 brand=tesla,driver>=470,driver<471"),
        ("cuda12", "cuda>=12.4"),
    ):
        container = client.containers.create(base, ["true"])
        repository = f"gpuhost-test-health-{key}-{os.getpid()}"
        try:
            client.api.commit(
                str(container.id),
                repository=repository,
                tag="1",
                changes=[f'ENV NVIDIA_REQUIRE_CUDA="{requirement}"'],
            )
        finally:
            container.remove(force=True)
        made[key] = f"{repository}:1"
    yield made
    for image in made.values():
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(image, force=True)


def test_image_requirement_against_the_real_daemon(
    client: docker.DockerClient, cuda_images: dict[str, str]
) -> None:
    env = inspect_image_env(client, cuda_images["cuda99"], 30)
    assert env is not None and env["NVIDIA_REQUIRE_CUDA"] == "cuda>=99.0 brand=tesla,driver>=470,driver<471"
    found = failed(judge_image_cuda(cuda_images["cuda99"], env, "13.0", "580.159.04", H100_TRAITS))
    assert f"{cuda_images['cuda99']} needs CUDA 99.0" in found and "provides CUDA 13.0" in found
    env12 = inspect_image_env(client, cuda_images["cuda12"], 30)
    assert env12 is not None
    passed(judge_image_cuda(cuda_images["cuda12"], env12, "13.0", "580.159.04", H100_TRAITS))
    assert inspect_image_env(client, "gpuhost-test-health-absent:0", 30) is None


# -- the suite, run against the faked H100 host --------------------------------------------------


def run_health(gp: GpuhostPytester, *args: str) -> pytest.RunResult:
    return gp.run_plain(
        "-p",
        "pytest_gpuhost.fixtures.health",
        "--gpuhost-tier",
        "quick",
        "-k",
        "test_health",
        "--gpuhost-image",
        "gpuhost-test-health-absent:0",
        "-rs",
        "-s",
        *args,
    )


def test_suite_on_healthy_h100(gpuhost_pytester: GpuhostPytester) -> None:
    health_host(gpuhost_pytester, healthy_log("h100"))
    result = run_health(gpuhost_pytester)
    out = result.stdout.str()
    # Not applicable on this H100 VM: retired pages, Fabric Manager, the GPU fabric; both images
    # (the given one and the PyTorch image chosen for the driver) are absent.
    result.assert_outcomes(passed=9, skipped=5, deselected=result.parseoutcomes()["deselected"])
    assert "not applicable: retired pages is not supported on NVIDIA H100 80GB HBM3" in out
    assert "not applicable: no NVSwitch on this host" in out
    assert "gpuhost-test-health-absent:0 is not present locally" in out or "needs docker" in out
    assert (
        "pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime is not present locally" in out or "needs docker" in out
    )
    for metric in (
        "gpuhost.metric ecc_uncorrected_volatile=0",
        "gpuhost.metric pcie_width_current=16",
        "gpuhost.metric xid_events=0",
    ):
        assert metric in out


def test_suite_diagnoses_derived_failures(gpuhost_pytester: GpuhostPytester) -> None:
    def broken(dump: dict[str, Any]) -> None:
        dump["gpus"][0].update(remapped_rows=[0, 1, 1, 0], pcie_width=8)

    health_host(gpuhost_pytester, None, nvml_edit=broken)
    result = run_health(gpuhost_pytester)
    out = result.stdout.str()
    assert result.parseoutcomes()["failed"] == 2, out
    assert (
        "FAILED test_row_remapping[gpu0-042f1913]: a row remapping is pending on GPU 0 (0000:00:06.0)" in out
    )
    assert (
        "FAILED test_pcie_link[gpu0-042f1913]: the PCIe link of GPU 0 (0000:00:06.0) is downtrained to x8"
        in out
    )
    assert "the kernel log cannot be read: `dmesg` exited with 1" in out
