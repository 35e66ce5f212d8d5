"""Guide steps 1.1 and 2.1 run for real against fakes of the driver fed with real GPU captures.

Each failing case is derived from a healthy capture in the real formats (an edited NVML dump or
``nvidia-smi -q -x``, a changed ``/proc`` file, a failure the real nvidia-smi prints), and the
test asserts the diagnosis an operator would read.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import pytest
from captures_support import capture_devnodes, capture_pci, load_nvml_dump
from pytester_support import GpuhostPytester

H100_ID = "gpu0-042f1913"
H200_IDS = ("gpu0-c5fa4f09", "gpu1-1b94c864")
PER_GPU_CHECKS = ("test_gpu_device_node", "test_nvidia_smi_matches_nvml", "test_persistence_mode")
CHECKS = 7 + len(PER_GPU_CHECKS)  # steps 1.1 and 2.1: 7 host-wide checks, 3 per GPU


def test_ids_are_index_and_uuid_prefix() -> None:
    """The ids the tests below expect follow from the captures' UUIDs."""
    for capture, ids in (("h100", (H100_ID,)), ("h200x2", H200_IDS)):
        gpus = load_nvml_dump(capture)["gpus"]
        assert ids == tuple(f"gpu{i}-{g['uuid'].removeprefix('GPU-')[:8]}" for i, g in enumerate(gpus))


def skipped_reasons(result: pytest.RunResult) -> list[tuple[int, str]]:
    """``(count, reason)`` of each ``SKIPPED [n] file:line: reason`` line of ``-rs``."""
    found = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", result.stdout.str(), flags=re.MULTILINE)
    return [(int(n), reason) for n, reason in found]


def gpuhost_failed_lines(result: pytest.RunResult) -> list[tuple[str, str]]:
    """The summary's one line per failed check (``FAILED name: finding``), not pytest's own."""
    return re.findall(r"^FAILED (test_\w+(?:\[[^\]]*\])?): (.*)$", result.stdout.str(), flags=re.MULTILINE)


def drop_second_gpu_xml(xml: str) -> str:
    """nvidia-smi's XML without its second ``<gpu>`` element."""
    edited, count = re.subn(r"\t<gpu id=\"00000000:00:07\.0\">.*?\n\t</gpu>\n", "", xml, flags=re.DOTALL)
    assert count == 1
    return edited.replace("<attached_gpus>2</attached_gpus>", "<attached_gpus>1</attached_gpus>")


def drop_second_gpu_nvml(dump: dict[str, Any]) -> None:
    del dump["gpus"][1]
    dump["count"] = 1


# -- healthy hosts ------------------------------------------------------------------------------


def test_h100_passes_every_check(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run("-v")
    result.assert_outcomes(passed=CHECKS)
    result.stdout.fnmatch_lines(
        [
            "gpuhost: host fake-h100, tier quick, driver 580.159.04, CUDA 13.0, 1 GPU(s): "
            "NVIDIA H100 80GB HBM3 (source: nvml)",
            "*test_step_1_1_hardware.py::test_nvidia_gpus_on_pci_bus PASSED*",
            f"*test_step_2_1_driver.py::test_gpu_device_node[[]{H100_ID}[]] PASSED*",
            f"*test_step_2_1_driver.py::test_nvidia_smi_matches_nvml[[]{H100_ID}[]] PASSED*",
        ]
    )
    assert result.ret == pytest.ExitCode.OK


def test_h200x2_has_cases_for_both_gpus(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h200x2")
    result = gpuhost_pytester.run("-v")
    result.assert_outcomes(passed=CHECKS + len(PER_GPU_CHECKS))
    result.stdout.fnmatch_lines(
        [f"*::{check}[[]{gpu_id}[]] PASSED*" for check in PER_GPU_CHECKS for gpu_id in H200_IDS],
        consecutive=False,
    )


# -- the GPU count ------------------------------------------------------------------------------


def test_expect_gpus_mismatch_names_the_count(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run("--gpuhost-expect-gpus", "2")
    result.assert_outcomes(failed=1, passed=CHECKS - 1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_nvidia_gpus_on_pci_bus _*",
            "FOUND: 1 GPU(s) found, 2 expected (--gpuhost-expect-gpus 2); PCI addresses on the bus: 0000:00:06.0",
            "CAUSE:*",
            "FIX:*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_expect_gpus_matching_passes(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h200x2")
    gpuhost_pytester.run("--gpuhost-expect-gpus", "2").assert_outcomes(passed=CHECKS + len(PER_GPU_CHECKS))


def test_gpu_on_bus_missing_from_driver_is_named(gpuhost_pytester: GpuhostPytester) -> None:
    """A GPU the bus has but NVML and nvidia-smi lack (fell off the bus) is named by address."""
    gpuhost_pytester.setup("h200x2", nvml_edit=drop_second_gpu_nvml, smi_edit=drop_second_gpu_xml)
    result = gpuhost_pytester.run("-rs")
    result.assert_outcomes(failed=1, passed=CHECKS - 1)
    result.stdout.fnmatch_lines(
        [
            "FOUND: 2 NVIDIA GPU(s) on the PCI bus, 1 listed by nvml; not listed: 0000:00:07.0 (bound to nvidia)",
            "*Xid*",
        ]
    )


def test_gpu_lost_in_nvml_is_a_bus_failure(gpuhost_pytester: GpuhostPytester) -> None:
    """NVML counts the GPU but cannot open it (GPU_IS_LOST): the bus check says so."""

    def lose_gpu1(dump: dict[str, Any]) -> None:
        dump["gpus"][1] = {"nvml_error": "GPU is lost"}

    gpuhost_pytester.setup("h200x2", nvml_edit=lose_gpu1)
    result = gpuhost_pytester.run()
    result.stdout.fnmatch_lines(["FOUND: the driver lists GPUs it cannot reach: index 1 (NVML: GPU is lost)"])
    assert result.parseoutcomes()["failed"] >= 1


# -- the driver ---------------------------------------------------------------------------------


def test_kernel_module_version_differs_from_nvml(gpuhost_pytester: GpuhostPytester) -> None:
    """The driver was upgraded (NVML 580.159.04) but the old kernel module is still loaded."""
    version = (
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@)  \n"
        "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) \n"
    )
    gpuhost_pytester.setup("h100", version_text=version)
    result = gpuhost_pytester.run()
    result.assert_outcomes(failed=1, passed=CHECKS - 1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_nvml_initialises _*",
            "FOUND: Driver/library version mismatch: kernel module 580.95.05, user-space library (NVML) 580.159.04",
            "CAUSE: the driver was upgraded but the old kernel module is still loaded",
            "FIX:*reboot*sudo rmmod nvidia_uvm*sudo modprobe nvidia*",
        ]
    )


def test_nvml_version_mismatch_error(gpuhost_pytester: GpuhostPytester) -> None:
    """NVML refuses to start (LIB_RM_VERSION_MISMATCH, 18) and nvidia-smi exits 18 with its words."""
    gpuhost_pytester.setup("h100", nvml_init_error=18, smi_fail="version-mismatch")
    result = gpuhost_pytester.run("-rs")
    result.assert_outcomes(failed=2, passed=5, skipped=len(PER_GPU_CHECKS))
    result.stdout.fnmatch_lines(
        [
            "*_ test_nvml_initialises _*",
            "FOUND: nvml failed: NVML: RM has detected an NVML/RM version mismatch.",
            "CAUSE: Driver/library version mismatch: *",
            "FIX:*reboot; or*rmmod*",
            "*_ test_nvidia_smi_runs _*",
            "FOUND: nvidia-smi failed: *Failed to initialize NVML: Driver/library version mismatch*",
            "CAUSE: Driver/library version mismatch: *",
        ]
    )
    for _, reason in skipped_reasons(result):
        assert "test_nvml_initialises failed" in reason


def test_no_gpu_at_all(gpuhost_pytester: GpuhostPytester) -> None:
    """No GPU, no NVML library, no nvidia-smi: one failure, and every other check says why it skipped."""
    gpuhost_pytester.setup(None)
    result = gpuhost_pytester.run("-rs")
    result.assert_outcomes(failed=1, skipped=CHECKS - 1)
    result.stdout.fnmatch_lines(["*_ test_nvidia_gpus_on_pci_bus _*", "FOUND: no NVIDIA GPU: *"])
    reasons = skipped_reasons(result)
    assert sum(n for n, _ in reasons) == CHECKS - 1
    for _, reason in reasons:
        assert "test_nvidia_gpus_on_pci_bus failed" in reason
    result.stdout.fnmatch_lines(["GPUs: none found"])


def test_kernel_module_not_loaded(gpuhost_pytester: GpuhostPytester) -> None:
    """GPU on the bus, no driver bound: the module check fails and the driver's checks skip naming it."""
    unbound = [replace(fn, driver=None) for fn in capture_pci("h100")]
    gpuhost_pytester.setup(
        "h100",
        pci=unbound,
        modules=[],
        version_text="",
        proc_gpus=[],
        dev_nodes=[],
        nvml_init_error=9,
        smi_fail="no-driver",
    )
    result = gpuhost_pytester.run("-rs")
    result.assert_outcomes(failed=2, passed=2, skipped=CHECKS - 4)
    result.stdout.fnmatch_lines(
        [
            "*_ test_nvidia_kernel_module_loaded _*",
            "FOUND: the nvidia kernel module is not loaded (not in /proc/modules)",
            "*_ test_driver_version_file_readable _*",
            "FOUND: /proc/driver/nvidia/version does not exist",
        ],
    )
    reasons = skipped_reasons(result)
    assert sum(n for n, _ in reasons) == CHECKS - 4
    for _, reason in reasons:
        assert "test_nvidia_kernel_module_loaded failed" in reason


def test_nouveau_loaded(gpuhost_pytester: GpuhostPytester) -> None:
    _, modules = capture_devnodes("h100")
    gpuhost_pytester.setup("h100", modules=[*modules, "nouveau"])
    result = gpuhost_pytester.run()
    result.assert_outcomes(failed=1, passed=CHECKS - 1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_nouveau_not_loaded _*",
            "FOUND: the open-source nouveau module is loaded",
            "FIX:*blacklist it: *blacklist nouveau*/etc/modprobe.d/blacklist-nouveau.conf*update-initramfs*",
        ]
    )


def test_missing_device_node(gpuhost_pytester: GpuhostPytester) -> None:
    nodes, _ = capture_devnodes("h200x2")
    gpuhost_pytester.setup("h200x2", dev_nodes=[n for n in nodes if n != "nvidia1"])
    result = gpuhost_pytester.run()
    result.assert_outcomes(failed=1, passed=CHECKS + len(PER_GPU_CHECKS) - 1)
    result.stdout.fnmatch_lines(
        [f"*_ test_gpu_device_node[[]{H200_IDS[1]}[]] _*", "FOUND: /dev/nvidia1 is missing*"]
    )


def test_persistence_mode_off_warns(gpuhost_pytester: GpuhostPytester) -> None:
    def persistence_off(dump: dict[str, Any]) -> None:
        for gpu in dump["gpus"]:
            gpu["persistence"] = 0

    def smi_off(xml: str) -> str:
        return xml.replace(
            "<persistence_mode>Enabled</persistence_mode>", "<persistence_mode>Disabled</persistence_mode>"
        )

    gpuhost_pytester.setup("h100", nvml_edit=persistence_off, smi_edit=smi_off)
    result = gpuhost_pytester.run()
    result.assert_outcomes(passed=CHECKS)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            f"*test_persistence_mode[[]{H100_ID}[]]*",
            "*GpuhostWarning: FOUND: persistence mode is off on GPU 0 (GPU-042f1913-*",
        ]
    )
    assert result.stdout.str().count("GpuhostWarning") == 1


def test_nvml_and_smi_disagree_on_memory(gpuhost_pytester: GpuhostPytester) -> None:
    nvml_mib = load_nvml_dump("h100")["gpus"][0]["memory"]["total"] // 2**20

    def smaller(xml: str) -> str:
        edited, count = re.subn(
            rf"(<fb_memory_usage>\s*<total>){nvml_mib} MiB", rf"\g<1>{nvml_mib - 512} MiB", xml
        )
        assert count == 1
        return edited

    gpuhost_pytester.setup("h100", smi_edit=smaller)
    result = gpuhost_pytester.run()
    result.assert_outcomes(failed=1, passed=CHECKS - 1)
    result.stdout.fnmatch_lines(
        [
            f"*_ test_nvidia_smi_matches_nvml[[]{H100_ID}[]] _*",
            f"FOUND: NVML and nvidia-smi disagree on GPU 0: memory MiB: NVML {nvml_mib}, nvidia-smi {nvml_mib - 512}",
        ]
    )


def test_summary_lists_gpus_and_one_line_per_failed_check(gpuhost_pytester: GpuhostPytester) -> None:
    _, modules = capture_devnodes("h200x2")
    gpuhost_pytester.setup("h200x2", modules=[*modules, "nouveau"])
    result = gpuhost_pytester.run("--gpuhost-expect-gpus", "3")
    result.assert_outcomes(failed=2, passed=CHECKS + len(PER_GPU_CHECKS) - 2)
    result.stdout.fnmatch_lines(
        [
            "*= gpuhost: fake-h200x2 =*",
            "driver 580.159.04, CUDA 13.0",
            "  gpu0  NVIDIA H200  GPU-c5fa4f09-8c6e-3c49-2d20-b7a173690e33  0000:00:06.0  143771 MiB",
            "  gpu1  NVIDIA H200  GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a  0000:00:07.0  143771 MiB",
        ]
    )
    assert gpuhost_failed_lines(result) == [
        (
            "test_nvidia_gpus_on_pci_bus",
            "2 GPU(s) found, 3 expected (--gpuhost-expect-gpus 3); "
            "PCI addresses on the bus: 0000:00:06.0, 0000:00:07.0",
        ),
        ("test_nouveau_not_loaded", "the open-source nouveau module is loaded"),
    ]


def test_summary_has_no_failure_lines_when_all_pass(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run()
    result.stdout.fnmatch_lines(["*= gpuhost: fake-h100 =*"])
    assert gpuhost_failed_lines(result) == []


# -- hung native calls --------------------------------------------------------------------------


def test_nvml_hang_times_out_with_a_diagnosis(gpuhost_pytester: GpuhostPytester) -> None:
    """A wedged NVML call is abandoned after --gpuhost-timeout; nvidia-smi still lists the GPUs."""
    gpuhost_pytester.setup("h100", nvml_hang="nvmlDeviceGetCount:6")
    started = time.monotonic()
    result = gpuhost_pytester.run("--gpuhost-timeout", "1", "-rs")
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1, passed=CHECKS - 2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*(source: nvidia-smi)",
            "*_ test_nvml_initialises _*",
            "FOUND: nvml failed: NVML did not return within 1 s",
            "CAUSE: the driver is hung*",
        ]
    )
    assert elapsed < 5, f"the run took {elapsed:.1f} s: the hung call was waited for"


def test_nvidia_smi_hang_times_out(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.monkeypatch.setenv("GPUHOST_FAKE_SMI_SLEEP", "6")
    started = time.monotonic()
    result = gpuhost_pytester.run("--gpuhost-timeout", "1")
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1, passed=CHECKS - 2, skipped=1)
    result.stdout.fnmatch_lines(
        ["*_ test_nvidia_smi_runs _*", "FOUND: nvidia-smi failed: `nvidia-smi -q -x` did not finish in time*"]
    )
    assert elapsed < 5, f"the run took {elapsed:.1f} s: the hung nvidia-smi was waited for"
