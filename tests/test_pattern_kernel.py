"""The nvrtc engine of the HBM pattern test without a GPU: its word definitions, its C++ source,
its compile where an NVRTC library is installed, the fallback to torch and the reason, and
``memory.py``'s use of a kernel engine (a fake at the kernel boundary, fed by the Python mirror).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest
from workload_support import load_workload

from pytest_gpuhost.hardware import memory as host_memory
from pytest_gpuhost.reporting.json_report import parse_metrics

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (CPU build) is not installed")
DRIVER_SYMBOLS = (
    "cuGetErrorName",
    "cuGetErrorString",
    "cuInit",
    "cuDriverGetVersion",
    "cuCtxGetCurrent",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
)


@pytest.fixture
def kernels() -> Any:
    return load_workload("pattern_kernel")


def word64(kernels: Any, pattern: str, index: int, seed: int = 0) -> int:
    """The 8-byte word holding 32-bit word ``index`` (``index`` even), as the GPU stores it."""
    low = int(kernels.expected_word(pattern, index, seed))
    return low | int(kernels.expected_word(pattern, index + 1, seed)) << 32


# -- the word definitions ---------------------------------------------------------------------------


def test_the_kernels_run_the_same_six_patterns_as_the_torch_path(kernels: Any) -> None:
    module = load_workload("memory")
    assert tuple(kernels.PATTERN_CODES) == module.PATTERNS
    assert sorted(kernels.PATTERN_CODES.values()) == list(range(6))
    assert len(set(kernels.kernel_names())) == 12


def test_constant_words(kernels: Any) -> None:
    for index in (0, 1, 2**32 + 5, 2**40):
        assert kernels.expected_word("zeros", index, 7) == 0
        assert kernels.expected_word("ones", index, 7) == 0xFFFFFFFF
        assert kernels.expected_word("alternating", index, 7) == 0x55555555


def test_walking_ones_is_one_bit_with_period_32_across_2_pow_32_words(kernels: Any) -> None:
    start = 2**32 - 70
    words = [kernels.expected_word("walking-ones", i, 0) for i in range(start, start + 140)]
    assert all(bin(w).count("1") == 1 for w in words)
    assert all(words[k] == words[k + 32] for k in range(len(words) - 32))
    assert len(set(words)) == 32
    assert kernels.expected_word("walking-ones", 2**32, 0) == 1  # the bit follows the index, not a wrap


@pytest.mark.parametrize("start", [0, 2**30 - 64, 2**32 - 64, 2**36 + 2**31 - 64])
def test_address_words_hold_their_own_byte_offset_without_a_wrap(kernels: Any, start: int) -> None:
    """Each 8-byte word holds its byte offset; around 4 GiB (the high half turns 1), 16 GiB (where
    the torch path's int32 word index wraps) and 256 GiB, every one is unique."""
    evens = range(start, start + 128, 2)
    values = [word64(kernels, "address", i) for i in evens]
    assert values == [i * 4 for i in evens]
    assert len(set(values)) == len(values)


def test_address_words_differ_where_the_torch_path_repeats(kernels: Any) -> None:
    """The torch engine's address word is the int32 word index: words 0 and 2**32 read alike."""
    assert word64(kernels, "address", 0) != word64(kernels, "address", 2**32)
    assert word64(kernels, "address", 2**32) == 2**34


def test_random_words_depend_on_the_seed_and_the_index(kernels: Any) -> None:
    indices = [*range(1000), *range(2**32 - 500, 2**32 + 500)]
    a = [kernels.expected_word("random", i, 1234) for i in indices]
    b = [kernels.expected_word("random", i, 1235) for i in indices]
    assert a == [kernels.expected_word("random", i, 1234) for i in indices]  # deterministic
    assert all(x != y for x, y in zip(a, b, strict=True))  # a new seed changes every word
    assert len(set(a[:1000])) == 1000  # a bijection of the low 32 index bits
    assert all(0 <= w <= 0xFFFFFFFF for w in a + b)
    ones = sum(bin(w).count("1") for w in a) / len(a)
    assert 15.5 < ones < 16.5  # about half the bits set: not a constant in disguise
    assert kernels.expected_word("random", 2**32 + 7, 9) != kernels.expected_word("random", 7, 9)


def test_unknown_pattern_is_refused(kernels: Any) -> None:
    with pytest.raises(ValueError, match="checkerboard"):
        kernels.expected_word("checkerboard", 0, 0)


# -- the C++ source -----------------------------------------------------------------------------------

CPP_MAIN = r"""
#include <cstdio>
int main() {
  int k; unsigned long long i; unsigned seed;
  while (std::scanf("%d %llu %u", &k, &i, &seed) == 3) {
    u32 w = 0;
    switch (k) {
      case 0: w = want<0>(i, seed); break;
      case 1: w = want<1>(i, seed); break;
      case 2: w = want<2>(i, seed); break;
      case 3: w = want<3>(i, seed); break;
      case 4: w = want<4>(i, seed); break;
      default: w = want<5>(i, seed); break;
    }
    std::printf("%u\n", w);
  }
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")
def test_the_kernels_word_function_equals_the_python_mirror(kernels: Any, tmp_path: Path) -> None:
    """``want<K>`` of the kernel source, built for the host, word for word against ``expected_word``:
    the GPU's words and the words the report says were wanted are the same definition."""
    source = tmp_path / "words.cpp"
    source.write_text("#define GPUHOST_FN inline\n" + kernels.WORD_SOURCE + CPP_MAIN)
    binary = tmp_path / "words"
    subprocess.run(["g++", "-std=c++14", "-O1", "-o", str(binary), str(source)], check=True, timeout=120)
    cases = [
        (pattern, index, seed)
        for pattern in kernels.PATTERN_CODES
        for index in [
            0,
            1,
            2,
            31,
            32,
            33,
            2**30 - 1,
            2**30,
            2**32 - 1,
            2**32,
            2**32 + 1,
            2**40 + 3,
            2**63 + 5,
        ]
        for seed in (0, 1234, 0xFFFFFFFF)
    ]
    stdin = "".join(f"{kernels.PATTERN_CODES[p]} {i} {s}\n" for p, i, s in cases)
    out = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True, check=True, timeout=60)
    got = [int(line) for line in out.stdout.split()]
    assert got == [kernels.expected_word(p, i, s) for p, i, s in cases]


def nvrtc_or_skip(kernels: Any) -> Any:
    import torch

    try:
        return kernels.Nvrtc(*kernels.load_first(kernels.nvrtc_candidates(torch), "NVRTC"))
    except kernels.KernelUnavailable as exc:
        pytest.skip(f"no NVRTC library here (pip install nvidia-cuda-nvrtc-cu12 brings one): {exc}")


@needs_torch
def test_nvrtc_compiles_the_kernels_to_ptx_for_hopper(kernels: Any) -> None:
    """The real NVRTC (no GPU needed to compile): every fill and check entry is in the PTX."""
    nvrtc = nvrtc_or_skip(kernels)
    arch = kernels.pick_arch(90, nvrtc.archs())
    ptx = nvrtc.compile(kernels.SOURCE, arch).decode()
    entries = {line.split()[2].rstrip("(") for line in ptx.splitlines() if line.startswith(".visible .entry")}
    assert entries == set(kernels.kernel_names())
    assert f".target sm_{arch}" in ptx


@needs_torch
def test_a_compile_error_comes_back_with_the_nvrtc_log(kernels: Any) -> None:
    nvrtc = nvrtc_or_skip(kernels)
    with pytest.raises(kernels.KernelUnavailable) as caught:
        nvrtc.compile(kernels.SOURCE.replace("make_uint4(", "make_uint5("), 90)
    assert "could not compile" in str(caught.value) and "make_uint5" in str(caught.value)


def test_pick_arch_falls_back_to_the_newest_target_nvrtc_knows(kernels: Any) -> None:
    assert kernels.pick_arch(90, [80, 86, 90]) == 90
    assert kernels.pick_arch(103, [80, 90, 100]) == 100
    assert kernels.pick_arch(90, None) == 90
    with pytest.raises(kernels.KernelUnavailable, match="compute_70"):
        kernels.pick_arch(70, [80, 90])


# -- why the kernels are not used ----------------------------------------------------------------------


def fake_library(symbols: tuple[str, ...]) -> Any:
    """A loaded library that has exactly ``symbols`` (each returns CUDA_SUCCESS)."""
    return types.SimpleNamespace(**{name: (lambda *args: 0) for name in symbols})


def torch_stub() -> Any:
    return types.SimpleNamespace(
        __file__="/nonexistent/torch/__init__.py", version=types.SimpleNamespace(cuda=None)
    )


def test_no_driver_library_is_the_reason(kernels: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> Any:
        raise OSError(f"{path}: cannot open shared object file")

    monkeypatch.setattr(kernels, "open_library", refuse)
    with pytest.raises(kernels.KernelUnavailable) as caught:
        kernels.PatternKernel.load(torch_stub(), 0)
    assert "libcuda.so.1" in str(caught.value) and "cannot open" in str(caught.value)


def test_a_driver_without_a_symbol_is_the_reason_not_a_crash(
    kernels: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = fake_library(tuple(s for s in DRIVER_SYMBOLS if s != "cuLaunchKernel"))
    monkeypatch.setattr(kernels, "open_library", lambda path: partial)
    with pytest.raises(kernels.KernelUnavailable, match="has no cuLaunchKernel"):
        kernels.PatternKernel.load(torch_stub(), 0)


def test_no_nvrtc_is_the_reason(kernels: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = fake_library(DRIVER_SYMBOLS)

    def only_the_driver(path: str) -> Any:
        if "libcuda" in path:
            return driver
        raise OSError(f"{path}: cannot open shared object file")

    monkeypatch.setattr(kernels, "open_library", only_the_driver)
    with pytest.raises(kernels.KernelUnavailable) as caught:
        kernels.PatternKernel.load(torch_stub(), 0)
    assert "NVRTC" in str(caught.value) and "libnvrtc.so" in str(caught.value)


def test_nvrtc_is_looked_for_beside_torch_first_by_its_cuda_major(kernels: Any, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for folder, name in (
        ("cuda_nvrtc", "libnvrtc.so.12"),
        ("cu13", "libnvrtc.so.13"),
        ("cu13", "libnvrtc-builtins.so.13.0"),
    ):
        (site / "nvidia" / folder / "lib").mkdir(parents=True, exist_ok=True)
        (site / "nvidia" / folder / "lib" / name).write_bytes(b"")
    (site / "torch").mkdir()
    stub = types.SimpleNamespace(
        __file__=str(site / "torch" / "__init__.py"), version=types.SimpleNamespace(cuda="13.0")
    )
    found = kernels.nvrtc_candidates(stub)
    assert found[0] == str(site / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13")
    assert str(site / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so.12") in found
    assert not any("builtins" in path for path in found)
    assert found[-len(kernels.NVRTC_NAMES) :] == list(kernels.NVRTC_NAMES)  # then the loader's own search


# -- memory.py with the engines ------------------------------------------------------------------------


@pytest.fixture
def workload() -> Any:
    return load_workload("memory")


def cpu_args(workload: Any, *extra: str) -> Any:
    return workload.parse_args(["--device", "cpu", "--slice-words", "4096", "--cpu-memory-mib", "1", *extra])


@needs_torch
def test_on_a_gpu_without_the_libraries_torch_runs_and_says_why(
    workload: Any, kernels: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def refuse(path: str) -> Any:
        raise OSError(f"{path}: cannot open shared object file")

    monkeypatch.setattr(kernels, "open_library", refuse)
    test = workload.PatternTest(workload.Device(torch, "cuda", 0), cpu_args(workload))
    test.select_engine()
    assert test.kernel is None and test.engine == "torch"
    assert test.engine_reason is not None and "libcuda.so.1" in test.engine_reason
    forced = workload.PatternTest(
        workload.Device(torch, "cuda", 0), cpu_args(workload, "--pattern-engine", "nvrtc")
    )
    with pytest.raises(workload.WorkloadError) as caught:
        forced.select_engine()
    assert caught.value.kind == "no-pattern-kernel" and "libcuda.so.1" in str(caught.value)


@needs_torch
def test_the_cpu_device_and_an_explicit_choice_run_torch_with_the_reason(workload: Any) -> None:
    import torch

    cpu = workload.PatternTest(workload.Device(torch, "cpu", 0), cpu_args(workload))
    cpu.select_engine()
    assert (cpu.engine, cpu.engine_reason) == ("torch", "the CPU device (--device cpu) runs no CUDA kernels")
    asked = workload.PatternTest(
        workload.Device(torch, "cuda", 0), cpu_args(workload, "--pattern-engine", "torch")
    )
    asked.select_engine()  # asks for no library at all
    assert asked.engine == "torch" and "--pattern-engine torch" in str(asked.engine_reason)


class MirrorKernel:
    """The kernel engine's interface on CPU tensors, computed from ``expected_word``: what
    ``memory.py`` does with a kernel, tested without one."""

    def __init__(self, torch: Any, kernels: Any, slots: int) -> None:
        self.torch, self.kernels, self.slots = torch, kernels, slots
        self.count, self.located = 0, list[tuple[int, int]]()
        self.info = {"nvrtc": "mirror", "arch": "none", "compile_seconds": 0.0, "load_seconds": 0.0}
        self.closed = False

    def words(self, n: int, first: int, pattern: str, seed: int) -> list[int]:
        signed = [self.kernels.expected_word(pattern, first + k, seed) for k in range(n)]
        return [w - 2**32 if w >= 2**31 else w for w in signed]

    def fill(self, words: Any, first: int, pattern: str, seed: int) -> None:
        words.copy_(
            self.torch.tensor(self.words(int(words.numel()), first, pattern, seed), dtype=self.torch.int32)
        )

    def reset(self) -> None:
        self.count, self.located = 0, []

    def check(self, words: Any, first: int, pattern: str, seed: int) -> Any:
        want = self.words(int(words.numel()), first, pattern, seed)
        for k, (got, wanted) in enumerate(zip(words.tolist(), want, strict=True)):
            if got != wanted:
                self.count += 1
                if len(self.located) < self.slots:
                    self.located.append((first + k, got & 0xFFFFFFFF))
        return self.count

    def mismatches(self) -> tuple[int, list[tuple[int, int]]]:
        return self.count, sorted(self.located)

    def close(self) -> None:
        self.closed = True


@needs_torch
def test_with_a_kernel_engine_a_flip_is_counted_located_and_reported(
    workload: Any, kernels: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flips injected after the kernel fill (a far slice, the last word) are counted exactly, located
    with offset, got and want (from the mirror), and fail the host's verdict with the offset."""
    import torch

    mirror = MirrorKernel(torch, kernels, workload.MAX_REPORTED)

    def select(self: Any) -> None:
        self.kernel, self.engine, self.engine_reason = mirror, "nvrtc", None

    monkeypatch.setattr(workload.PatternTest, "select_engine", select)
    args = workload.parse_args(["--device", "cpu", "--slice-words", "1024"])
    words = 3 * 1024
    args.flips = [("address", 1030), ("address", words - 1), ("random", 7)]
    dev = workload.Device(torch, "cpu", 0)
    record = workload.run_patterns(dev, args, math.ceil(words * 4 / args.fraction))  # "free" memory
    assert record["allocated_bytes"] == words * 4
    assert record["engine"] == "nvrtc" and "engine_reason" not in record and mirror.closed
    assert record["engine_detail"]["nvrtc"] == "mirror"
    bad = {r["pattern"]: r for r in record["results"] if r["mismatches"]}
    assert sorted(bad) == ["address", "random"] and bad["address"]["mismatches"] == 2
    assert [f["offset"] for f in bad["address"]["first"]] == [1030 * 4, (words - 1) * 4]
    for pattern, result in bad.items():
        for found in result["first"]:
            assert found["want"] == kernels.expected_word(pattern, found["offset"] // 4, args.seed)
            assert found["got"] == found["want"] ^ 1
    metrics, finding = host_memory.pattern_verdict(
        "GPU 0 (GPU-abc)", host_memory.MemoryOutcome({"patterns": record}, None)
    )
    assert finding is not None and "3 word(s)" in finding.found and f"{1030 * 4:#x}" in finding.found
    assert "patterns.engine=nvrtc" in metrics


def test_the_engine_and_its_reason_reach_the_figures_intact() -> None:
    reason = "NVRTC (libnvrtc) could not be loaded (3 tried; libnvrtc.so.12: it's\n gone)"
    metrics = host_memory.engine_metrics({"engine": "torch", "engine_reason": reason})
    parsed = parse_metrics("gpuhost.metric " + " ".join(metrics))
    assert parsed["patterns.engine"] == "torch"
    assert parsed["patterns.engine_reason"] == " ".join(reason.split())
    detail = {"nvrtc": "12.9", "arch": "compute_90", "compile_seconds": 0.06, "load_seconds": 0.15}
    nvrtc = parse_metrics(
        "gpuhost.metric " + " ".join(host_memory.engine_metrics({"engine": "nvrtc", "engine_detail": detail}))
    )
    assert nvrtc["patterns.engine"] == "nvrtc" and nvrtc["patterns.engine_arch"] == "compute_90"
    assert "patterns.engine_reason" not in nvrtc
    assert host_memory.engine_metrics({}) == []  # a record from before the engines: no figure
