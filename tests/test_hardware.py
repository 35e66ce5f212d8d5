"""The hardware tier without a GPU: its arithmetic, the memory workload on the CPU, and its verdicts.

``workloads/memory.py --device cpu`` runs the same pattern and copy code with PyTorch's CPU
tensors; the verdicts are fed the records it prints, faults injected included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from workload_support import load_workload

from pytest_gpuhost.facts.health import EccCounts, HealthFacts
from pytest_gpuhost.facts.model import GpuInfo, GpuListing, HostFacts, KernelFacts, PciGpu
from pytest_gpuhost.hardware import allreduce, floors, memory, nvlink, p2p
from pytest_gpuhost.options import TIERS
from pytest_gpuhost.profiles import load_profiles, pci_device_id, profile_for

SCRIPT = Path(__file__).resolve().parent.parent / "pytest_gpuhost" / "workloads" / "memory.py"
DATA = Path(__file__).resolve().parent / "data"
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (CPU build) is not installed")
SMALL = ["--device", "cpu", "--slice-words", "4096", "--cpu-memory-mib", "1", "--hbm-bytes", "65536"]
SMALL += ["--pcie-bytes", "65536"]


def run_script(*args: str, faults: bool = False) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "GPUHOST_ALLOW_FAULT_INJECTION"}
    if faults:
        env["GPUHOST_ALLOW_FAULT_INJECTION"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    return proc.returncode, json.loads(lines[0])


# -- arithmetic ---------------------------------------------------------------------------------


def test_pcie_rates_follow_generation_and_width() -> None:
    assert floors.pcie_link_gbps(5, 16) == pytest.approx(63.015, rel=1e-4)
    assert floors.pcie_link_gbps(4, 16) == pytest.approx(floors.pcie_link_gbps(5, 16) / 2)
    assert floors.pcie_link_gbps(3, 8) == pytest.approx(7.877, rel=1e-3)
    assert floors.pcie_lane_gbps(2) == pytest.approx(0.5)
    assert floors.gen_from_speed("32.0 GT/s PCIe") == 5
    assert floors.gen_from_speed("16.0 GT/s PCIe") == 4
    assert floors.gen_from_speed("garbage") is None
    with pytest.raises(ValueError):
        floors.pcie_lane_gbps(9)


def test_measured_h200_figures_clear_their_floors() -> None:
    """Issue 14's H200 figures (55.5 GB/s pinned, 4274 GB/s copy) pass; a Gen4 link's rate does not."""
    h200 = load_profiles()["h200"]
    pcie_floor = floors.floor(floors.pcie_link_gbps(5, 16), h200.pcie_floor)
    assert 55.3 > pcie_floor > floors.pcie_link_gbps(4, 16)
    assert h200.hbm_tbps is not None
    assert floors.floor(h200.hbm_tbps * 1000, h200.hbm_floor) < 4274


def test_bus_bandwidth_is_nccl_tests_formula() -> None:
    assert floors.bus_bandwidth(100.0, 2) == pytest.approx(100.0)
    assert floors.bus_bandwidth(100.0, 8) == pytest.approx(175.0)
    assert floors.bus_bandwidth(100.0, 1) == 0.0
    assert floors.algbw_gbps(2**30, 0.01) == pytest.approx(107.374, rel=1e-4)
    assert floors.copy_bytes(2**30) == 2**31


def test_peer_link_floor_comes_from_the_topology() -> None:
    nv = floors.peer_link(18, 25.0, 5, 16)
    assert nv is not None and (nv.kind, nv.label, nv.gbps_each_way) == ("nvlink", "NV18", 450.0)
    pcie = floors.peer_link(0, 25.0, 5, 16)
    assert pcie is not None and pcie.kind == "pcie" and pcie.gbps_each_way == pytest.approx(63.015, rel=1e-4)
    assert floors.peer_link(0, None, None, None) is None


def test_eight_gpus_make_28_pairs() -> None:
    pairs = floors.gpu_pairs(list(range(8)))
    assert len(pairs) == 28 and pairs[0] == (0, 1) and pairs[-1] == (6, 7)
    assert len(set(pairs)) == 28


def test_a_slow_gpu_among_fast_ones_is_named() -> None:
    values = {f"GPU {i}": 4270.0 + i for i in range(8)}
    values["GPU 5"] = 3700.0
    slow = floors.slower_than_best(values, 0.1)
    assert [s[0] for s in slow] == ["GPU 5"]
    assert floors.slower_than_best({"GPU 0": 1.0}, 0.1) == []


def test_ecc_increase_counts_only_growth() -> None:
    before = {"a": 0, "b": 5, "c": None}
    assert floors.ecc_increase(before, {"a": 0, "b": 7, "c": 3}) == {"b": 2}
    assert floors.ecc_increase(before, before) == {}


# -- profiles by PCI device ID --------------------------------------------------------------------


def _facts_from_capture() -> HostFacts:
    """The h200x2 capture's GPUs and PCI devices (tests/data/h200x2)."""
    dump = json.loads((DATA / "h200x2" / "nvml-dump.json").read_text())
    gpus = tuple(
        GpuInfo(index=i, uuid=g["uuid"], name=g["name"], pci_bus_id=g["pci"]["busId"])
        for i, g in enumerate(dump["gpus"])
    )
    pci = tuple(
        PciGpu(
            address=line.split()[0],
            device_id=line.split("device=")[1].split()[0],
            class_code="0x030200",
            driver="nvidia",
        )
        for line in (DATA / "h200x2" / "sys-pci-nvidia.txt").read_text().splitlines()
    )
    kernel = KernelFacts(frozenset(), None, None, None, frozenset())
    listing = GpuListing("nvml", True, gpus=gpus)
    return HostFacts("h200x2", pci, kernel, listing, GpuListing("nvidia-smi", False))


def test_profiles_are_found_by_pci_device_id_first() -> None:
    facts = _facts_from_capture()
    profiles = load_profiles()
    gpu = facts.gpus[0]
    assert pci_device_id(facts, gpu) == "0x2335"
    renamed = replace(gpu, name="Some Future Name")  # the name no longer matches, the ID does
    assert profile_for(profiles, facts, renamed)[0].key == "h200"
    assert profiles.for_gpu("NVIDIA H200 NVL", "0x233b")[0].key == "h200-nvl"
    assert profiles.for_gpu("NVIDIA H100 80GB HBM3")[0].key == "h100-sxm"  # the name as fallback
    assert profiles.for_gpu("unknown", "0xffff")[0].key == "default"


def test_the_hardware_tier_sits_between_container_and_burn() -> None:
    assert TIERS.index("container") < TIERS.index("hardware") < TIERS.index("burn")


def test_matmul_floor_fails_a_gpu_at_a_third_of_its_speed() -> None:
    """DCGM issue 122: a GPU that computes correctly at a third of its speed must fail."""
    h200 = load_profiles()["h200"]
    for dtype, measured in {
        "float64": 57,
        "float32": 51,
        "tf32": 363,
        "bfloat16": 695,
        "float16": 665,
    }.items():
        least = h200.floor_tflops(dtype)
        assert least is not None and measured > least > measured / 3, dtype


# -- the workload on the CPU ----------------------------------------------------------------------


@needs_torch
def test_clean_run_tests_every_pattern_over_the_asked_memory() -> None:
    code, rec = run_script(*SMALL)
    assert code == 0, rec
    pat = rec["patterns"]
    assert [r["pattern"] for r in pat["results"]] == list(memory_patterns())
    assert all(r["mismatches"] == 0 for r in pat["results"])
    assert pat["allocated_bytes"] == pat["requested_bytes"] >= 0.9 * pat["free_bytes"]
    assert pat["engine"] == "torch" and "CPU device" in pat["engine_reason"]  # no CUDA kernels on the CPU
    assert rec["hbm"]["bytes_per_copy"] == 2 * rec["hbm"]["buffer_bytes"]
    assert rec["pcie"]["data_ok"] is True
    outcome = memory.MemoryOutcome(rec, None, {"x": 0}, {"x": 0})
    metrics, finding = memory.pattern_verdict("GPU 0 (GPU-abc)", outcome)
    assert finding is None and any(m.startswith("patterns.tested_tb_per_s=") for m in metrics)
    assert "patterns.engine=torch" in metrics


def memory_patterns() -> tuple[str, ...]:
    module = load_workload("memory")
    patterns: tuple[str, ...] = module.PATTERNS
    return patterns


@needs_torch
@pytest.mark.parametrize("pattern", ["zeros", "walking-ones", "address", "random"])
def test_a_flipped_word_fails_and_is_located(pattern: str) -> None:
    word = 5000  # in the second slice: the slice's own offset must be counted
    code, rec = run_script(*SMALL, "--checks", "patterns", "--inject-flip", f"{pattern}:{word}", faults=True)
    assert code == 1
    bad = [r for r in rec["patterns"]["results"] if r["mismatches"]]
    assert [(r["pattern"], r["mismatches"]) for r in bad] == [(pattern, 1)]
    first = bad[0]["first"][0]
    assert first["offset"] == word * 4 and first["got"] == first["want"] ^ 1
    _, finding = memory.pattern_verdict("GPU 3 (GPU-1b94c864)", memory.MemoryOutcome(rec, None))
    assert (
        finding is not None and "GPU 3 (GPU-1b94c864)" in finding.found and f"{word * 4:#x}" in finding.found
    )


@needs_torch
def test_patterns_match_the_reference_formula() -> None:
    """The GPU-side patterns equal ``expected_word`` (the documented definition), word by word."""
    import torch

    module = load_workload("memory")
    args = module.parse_args([*SMALL])
    dev = module.Device(torch, "cpu", 0)
    test = module.PatternTest(dev, args)
    test.allocate(3 * 4096 * 4, None)
    blk = test.blocks()
    random_block = [int(v) & 0xFFFFFFFF for v in blk["random"].tolist()]
    for pattern in module.PATTERNS:
        test.write_all(pattern, blk)
        for s, words in enumerate(test.slices):
            for i in (0, 1, 31, 32, 4095):
                index = s * 4096 + i
                assert int(words[i]) == module.expected_word(pattern, index, 4096, args.seed, random_block), (
                    pattern
                )


@needs_torch
def test_every_flip_is_counted_and_located_when_rows_and_slices_do_not_line_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A random tile shorter than (and not dividing) the slice, a short last slice, several flips:
    the written words still equal ``expected_word`` and the slow path counts and locates each flip."""
    import torch

    module = load_workload("memory")
    monkeypatch.setattr(module, "RANDOM_WORDS", 96)
    slice_words = 4096 + 96

    def pattern_test(flips: list[tuple[str, int]]) -> Any:
        args = module.parse_args(["--device", "cpu", "--slice-words", str(slice_words)])
        args.flips = flips
        test = module.PatternTest(module.Device(torch, "cpu", 0), args)
        test.allocate((2 * slice_words + 64) * 4, None)
        return test

    test = pattern_test([])
    blk = test.blocks()
    random_block = [int(v) & 0xFFFFFFFF for v in blk["random"].tolist()]
    words = sum(int(s.numel()) for s in test.slices)
    for pattern in module.PATTERNS:
        test.write_all(pattern, blk)
        written = torch.cat(test.slices).tolist()
        assert written == [
            module.expected_word(pattern, i, slice_words, test.seed, random_block) for i in range(words)
        ], pattern
        assert test.run_pattern(pattern, blk)["mismatches"] == 0, pattern
    flipped = [5, 77, slice_words + 4100, words - 1]
    for pattern in module.PATTERNS:
        flips = pattern_test([(pattern, w) for w in flipped])
        result = flips.run_pattern(pattern, flips.blocks())
        assert result["mismatches"] == len(flipped), pattern
        assert [f["offset"] for f in result["first"]] == [w * 4 for w in flipped], pattern
        assert all(f["got"] == f["want"] ^ 1 for f in result["first"]), pattern


@needs_torch
def test_address_words_wrap_like_int32_inside_a_slice() -> None:
    import torch

    module = load_workload("memory")
    out = torch.empty(100, dtype=torch.int32)
    for start in (2**31 - 40, 2**32 - 30, 3 * 2**32 + 7):
        module.write_ramp(torch, out, start)
        assert out.tolist() == [module.to_int32(start + i) for i in range(100)]
    test = module.PatternTest(module.Device(torch, "cpu", 0), module.parse_args([*SMALL]))
    blk = test.blocks()
    words = torch.empty(4096, dtype=torch.int32)
    for s in (2**19 - 1, 2**19, 2**20 + 3):  # slices whose base crosses 2**31 and 2**32
        test.write("address", s, words, blk)
        assert not bool(torch.stack(test.differs("address", s, words, blk)).any()), s
        test.write("address", s, words, blk)
        words[123] ^= 4
        assert bool(torch.stack(test.differs("address", s, words, blk)).any()), s


@needs_torch
def test_too_little_memory_fails_the_pattern_test() -> None:
    """DCGM issue 284 passes when it did not get the memory; this must fail."""
    code, rec = run_script(*SMALL, "--checks", "patterns", "--inject-alloc-limit", "65536", faults=True)
    assert code == 0 and rec["patterns"]["results"] == []
    _, finding = memory.pattern_verdict("GPU 1 (GPU-x)", memory.MemoryOutcome(rec, None))
    assert finding is not None and "GPU 1" in finding.found and "asked for" in finding.found


@needs_torch
def test_fault_injection_needs_the_switch() -> None:
    code, rec = run_script(*SMALL, "--inject-slow", "3")
    assert code == 2 and rec["kind"] == "fault-injection-refused"


def test_ecc_growth_fails_a_clean_pattern_test() -> None:
    patterns: dict[str, Any] = {
        "free_bytes": 100,
        "requested_bytes": 92,
        "allocated_bytes": 92,
        "seconds": 1.0,
    }
    patterns["results"] = [{"pattern": "zeros", "mismatches": 0}]
    record: dict[str, Any] = {"patterns": patterns}
    facts = HealthFacts(0, "GPU-a", "NVIDIA H200", "0000:00:06.0", "nvml", ecc=EccCounts(0, 0, 0, 0))
    grown = replace(facts, ecc=EccCounts(0, 0, 2, 2))
    outcome = memory.run_with_ecc(iter([facts, grown]).__next__, lambda: (record, None))
    _, finding = memory.pattern_verdict("GPU 0 (GPU-a)", outcome)
    assert finding is not None and "correctable (volatile) +2" in finding.found


def _hbm_record(gbps: float) -> dict[str, Any]:
    return {"hbm": {"gbps": gbps, "gbps_best": gbps, "buffer_bytes": 2**30}}


def test_slow_hbm_fails_by_floor_and_by_the_host_best() -> None:
    h200 = load_profiles()["h200"]
    host = {f"GPU {i}": 4270.0 for i in range(8)}
    assert memory.hbm_verdict("GPU 0", _hbm_record(4270.0), h200, host)[1] is None
    slow = memory.hbm_verdict("GPU 2", _hbm_record(1400.0), h200, {**host, "GPU 2": 1400.0})[1]
    assert slow is not None and "GPU 2" in slow.found and "below the floor" in slow.found
    among = memory.hbm_verdict(
        "GPU 4", _hbm_record(3900.0), h200, {**host, "GPU 4": 3900.0, "GPU 7": 4400.0}
    )[1]
    assert among is not None and "host's best" in among.found


def test_pcie_floor_uses_the_link_read_during_the_copies() -> None:
    h200 = load_profiles()["h200"]
    record = {"pcie": {"h2d": {"gbps": 55.5}, "d2h": {"gbps": 40.0}, "data_ok": True, "pinned": True}}
    record["pcie"]["link"] = {"speed": "32.0 GT/s PCIe", "width": 16}
    assert memory.pcie_verdict("GPU 0", record, "h2d", h200)[1] is None
    slow = memory.pcie_verdict("GPU 0", record, "d2h", h200)[1]
    assert slow is not None and "Gen5 x16" in slow.found and "GPU 0" in slow.found
    record["pcie"]["link"] = {"speed": "16.0 GT/s PCIe", "width": 16}  # a Gen4 link: its own, lower floor
    assert memory.pcie_verdict("GPU 0", record, "d2h", h200)[1] is None


def test_fault_specs_map_to_the_workloads_flags() -> None:
    faults = memory.parse_faults(("flip:0", "slow:1:4", "alloc:0"))
    assert memory.workload_args(0, 2, faults) == [
        "--gpu-index", "0", "--passes", "2", "--inject-flip", memory.DEFAULT_FLIP, "--inject-alloc-limit", str(2**30)
    ]  # fmt: skip
    assert memory.workload_args(1, 1, faults)[-2:] == ["--inject-slow", "4"]
    with pytest.raises(ValueError, match="expected"):
        memory.parse_faults(("melt:0",))


# -- the all-reduce -------------------------------------------------------------------------------

ALLREDUCE = SCRIPT.parent / "allreduce.py"


def _gpus(count: int) -> list[GpuInfo]:
    return [
        GpuInfo(index=i, uuid=f"GPU-{i:08x}-0000", name="NVIDIA H200", pci_bus_id=f"0000:00:{6 + i:02x}.0")
        for i in range(count)
    ]


@needs_torch
def test_allreduce_on_gloo_checks_every_value_and_names_the_wrong_rank() -> None:
    """Two CPU processes on gloo run the same code as NCCL on GPUs; rank 1's wrong element is found."""
    env = {k: v for k, v in os.environ.items() if k != "GPUHOST_ALLOW_FAULT_INJECTION"}
    env["GPUHOST_ALLOW_FAULT_INJECTION"] = "1"
    argv = [
        sys.executable,
        str(ALLREDUCE),
        "--ranks",
        "2",
        "--backend",
        "gloo",
        "--sizes",
        "262144",
        "--iters",
        "2",
    ]
    proc = subprocess.run(
        [*argv, "--inject-wrong", "1"], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    rec = json.loads(proc.stdout.splitlines()[-1])
    size = rec["sizes"][0]
    assert size["wrong"] == {"1": 1} and size["first"][0]["index"] == 12345
    assert size["busbw_gbps"] == pytest.approx(size["algbw_gbps"])  # 2 (n - 1) / n = 1 for two ranks
    assert [r["sizes"][0]["wrong"] for r in rec["ranks"]] == [0, 1]  # rank 0 computed the exact sum
    gpus = _gpus(2)
    _, finding = allreduce.verdict(rec, gpus, load_profiles()["h200"])
    assert (
        finding is not None and "GPU 1 (GPU-00000001-0000)" in finding.found and "GPU 0 " not in finding.found
    )


def test_allreduce_expected_values_are_exact_in_float32() -> None:
    import struct

    for ranks in (2, 8):
        for index in (0, 250, 251, 12345):
            value = allreduce_script().expected_value(index, ranks)
            assert struct.unpack("f", struct.pack("f", value))[0] == value and value == int(value)


def allreduce_script() -> Any:
    return load_workload("allreduce")


def test_allreduce_floor_from_nvlink_and_pcie() -> None:
    h200 = load_profiles()["h200"]
    assert allreduce.link_gbps(h200) == (450.0, "NV18")
    sizes = [
        {"bytes": b, "busbw_gbps": v, "wrong": {}}
        for b, v in ((2**28, 150.0), (2**30, 323.0), (2**32, 345.0))
    ]
    metrics, finding = allreduce.verdict({"sizes": sizes}, _gpus(2), h200)
    assert finding is None and "allreduce.busbw_gbps_4096mib=345.0" in metrics  # 256 MiB is not floored
    sizes[2]["busbw_gbps"] = 170.0  # half speed: a node whose all-reduce runs over PCIe
    _, slow = allreduce.verdict({"sizes": sizes}, _gpus(8), h200)
    assert slow is not None and "4096 MiB" in slow.found and "8 GPUs" in slow.found
    pcie = load_profiles()["h100-pcie"]
    link = allreduce.link_gbps(pcie)
    assert link is not None and link[1] == "PCIe Gen5 x16" and link[0] == pytest.approx(63.015, rel=1e-4)


# -- the tier in the plugin -----------------------------------------------------------------------

HARDWARE_CHECKS = "test_hbm or test_pcie_bandwidth or test_nccl"


def test_the_tier_collects_per_gpu_cases_and_quick_leaves_them_out(gpuhost_pytester: Any) -> None:
    """On the 2 x H200 capture: one case per GPU (per direction for PCIe) and one all-reduce."""
    gpuhost_pytester.setup("h200x2")
    result = gpuhost_pytester.run_plain(
        "--gpuhost-tier", "hardware", "--collect-only", "-q", "-k", HARDWARE_CHECKS
    )
    result.stdout.fnmatch_lines(
        [
            "*test_hardware.py::test_hbm_bandwidth[[]gpu0-c5fa4f09[]]",
            "*test_hardware.py::test_hbm_patterns[[]gpu1-1b94c864[]]",
            "*test_hardware.py::test_pcie_bandwidth[[]gpu1-1b94c864-d2h[]]",
            "*test_hardware.py::test_nccl_all_reduce",
        ]
    )
    assert result.stdout.str().count("test_hardware.py::") == 9  # 2 + 2 + 2 x 2 + 1
    quick = gpuhost_pytester.run_plain(
        "--gpuhost-tier", "container", "--collect-only", "-q", "-k", HARDWARE_CHECKS
    )
    assert "test_hardware.py::" not in quick.stdout.str()


def test_without_a_gpu_the_tier_skips_with_the_reason(gpuhost_pytester: Any) -> None:
    gpuhost_pytester.setup(None)
    result = gpuhost_pytester.run_plain("--gpuhost-tier", "hardware", "-rs", "-k", HARDWARE_CHECKS)
    result.assert_outcomes(skipped=5)  # hbm, patterns, pcie x 2, all-reduce
    result.stdout.fnmatch_lines(["SKIPPED*needs gpu_listing*"])


def test_hardware_fault_injection_needs_the_switch(
    gpuhost_pytester: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUHOST_ALLOW_FAULT_INJECTION", raising=False)
    gpuhost_pytester.setup("h200x2")
    result = gpuhost_pytester.run_plain("--gpuhost-hardware-fault", "flip:0", "--collect-only", "-q")
    result.stderr.fnmatch_lines(["*--gpuhost-hardware-fault is for testing the suite*"])


def _eight_gpus(dump: dict[str, Any]) -> None:
    """The h200x2 capture grown to an 8-GPU host: the second GPU copied with new ids and buses."""
    import copy

    template = dump["gpus"][1]
    for i in range(2, 8):
        gpu = copy.deepcopy(template)
        gpu["uuid"] = f"GPU-{i}{template['uuid'][5:]}"
        gpu["minor"] = i
        gpu["pci"]["busId"] = f"00000000:00:{6 + i:02X}.0"
        gpu["pci"]["busIdLegacy"] = f"0000:00:{6 + i:02x}.0"
        gpu["pci"]["device"] = 6 + i
        dump["gpus"].append(gpu)
    dump["count"] = 8


def test_eight_gpus_make_28_pair_cases_with_readable_ids(gpuhost_pytester: Any) -> None:
    gpuhost_pytester.setup("h200x2", nvml_edit=_eight_gpus)
    result = gpuhost_pytester.run_plain(
        "--gpuhost-tier", "hardware", "--collect-only", "-q", "-k", "test_gpu_pair"
    )
    ids = [line for line in result.stdout.lines if "test_gpu_pair_p2p[" in line]
    assert len(ids) == len(set(ids)) == 28, result.stdout.str()
    assert ids[0].endswith("test_gpu_pair_p2p[gpu0-c5fa4f09-gpu1-1b94c864]")
    assert ids[-1].endswith("test_gpu_pair_p2p[gpu6-6b94c864-gpu7-7b94c864]")


def test_one_gpu_skips_the_pairs_with_the_reason(gpuhost_pytester: Any) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain(
        "--gpuhost-tier", "hardware", "-rs", "-k", "test_gpu_pair or test_nccl"
    )
    result.stdout.fnmatch_lines(["*GPU pairs need at least 2 GPUs; 1 selected*"])


def test_p2p_floors_and_verdicts() -> None:
    h200 = load_profiles()["h200"]
    link = p2p.pair_link(h200, None)
    assert link is not None and link.label == "NV18"
    good = {"peer": True, "data_ok": True, "oneway_gbps": 394.0, "bothway_gbps": 734.0}
    assert p2p.verdict(good, "GPU 0 and GPU 1", link, h200)[1] is None
    half = p2p.verdict({**good, "bothway_gbps": 400.0}, "GPU 0 and GPU 1", link, h200)[1]
    assert half is not None and "both ways" in half.found and "GPU 0 and GPU 1" in half.found
    no_peer = p2p.verdict({**good, "peer": False}, "GPU 2 and GPU 5", link, h200)[1]
    assert no_peer is not None and "GPU 2 and GPU 5" in no_peer.found
    pcie = p2p.pair_link(h200, 0)  # NVML says no NVLink is up: the pair talks over PCIe
    assert pcie is not None and pcie.kind == "pcie"
    assert p2p.verdict({**good, "oneway_gbps": 50.0, "bothway_gbps": 90.0}, "x", pcie, h200)[1] is None


@needs_torch
def test_p2p_workload_on_the_cpu() -> None:
    script = SCRIPT.parent / "p2p.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--pairs", "0:1,0:2", "--bytes", "65536", "--iters", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    rec = json.loads(proc.stdout.splitlines()[-1])
    assert proc.returncode == 0 and [p["pair"] for p in rec["pairs"]] == [[0, 1], [0, 2]]
    assert all(p["data_ok"] and p["bothway_gbps"] > 0 for p in rec["pairs"])
    assert p2p.workload_args(_gpus(3)) == ["--pairs", "0:1,0:2,1:2"]


# -- NVLink state ---------------------------------------------------------------------------------


class _FakeNvlinkNvml:
    """The NVLink calls of NVML for one GPU: ``states`` per link, ``errors`` per (link, counter)."""

    class NVMLError(Exception):
        pass

    def __init__(self, states: list[int], errors: dict[tuple[int, int], int] | None = None) -> None:
        self.states = states
        self.errors = errors or {}

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return uuid

    def nvmlDeviceGetNvLinkState(self, handle: str, link: int) -> int:
        if link >= len(self.states):
            raise self.NVMLError("Invalid Argument")
        return self.states[link]

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: str, link: int, counter: int) -> int:
        return self.errors.get((link, counter), 0)


def test_nvlink_all_18_up_and_clean_passes_and_a_dead_link_fails() -> None:
    h200 = load_profiles()["h200"]
    healthy = nvlink.read_nvlink(_FakeNvlinkNvml([1] * 18), "GPU-a")
    assert (healthy.links, healthy.up, healthy.errors) == (18, 18, {})
    metrics, finding, skip = nvlink.verdict(healthy, "GPU 0", h200, 2)
    assert finding is None and skip is None and "nvlink.up=18" in metrics
    dead = nvlink.read_nvlink(_FakeNvlinkNvml([1] * 17 + [0]), "GPU-a")
    _, finding, _ = nvlink.verdict(dead, "GPU 1 (GPU-b)", h200, 8)
    assert finding is not None and "17 of 18 links up" in finding.found and "GPU 1" in finding.found


def test_nvlink_replay_and_crc_errors_fail() -> None:
    state = nvlink.read_nvlink(_FakeNvlinkNvml([1] * 18, {(3, 0): 5, (7, 2): 1}), "GPU-a")
    assert state.errors == {"link 3 replay": 5, "link 7 crc_flit": 1}
    _, finding, _ = nvlink.verdict(state, "GPU 4", load_profiles()["h200"], 8)
    assert finding is not None and "link 3 replay 5" in finding.found


def test_nvlink_on_one_gpu_or_without_support_skips_with_the_reason() -> None:
    h200 = load_profiles()["h200"]
    down = nvlink.read_nvlink(_FakeNvlinkNvml([0] * 18), "GPU-a")
    assert (
        nvlink.verdict(down, "GPU 0", h200, 1)[2]
        == "GPU 0: no NVLink up on a host with one GPU (no peer to link to)"
    )
    none = nvlink.read_nvlink(_FakeNvlinkNvml([]), "GPU-a")
    assert none.unsupported is not None
    assert nvlink.verdict(none, "GPU 0", load_profiles()["h100-pcie"], 4)[2] is not None  # no NVLink profile
    _, finding, skip = nvlink.verdict(none, "GPU 0", h200, 8)  # NVML cannot tell: P2P still measures
    assert finding is None and skip is not None and "no NVLink state" in skip
