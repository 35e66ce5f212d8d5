#!/usr/bin/env python3
"""One GPU's memory: HBM copy bandwidth, a pattern test over its free memory, PCIe host<->device.

Standalone like ``matmul.py`` (it runs inside the workload image with the image's PyTorch and
imports only the standard library, torch and its siblings: ``matmul_frameworks.py`` for the CUDA
error kinds, ``memory_bandwidth.py``, ``pattern_kernel.py``);
one JSON object on stdout, diagnostics on stderr. ``pytest_gpuhost.hardware`` judges the record.

- HBM: ``dst.copy_(src)`` on two device buffers, timed with CUDA events; bytes moved are read plus
  written (2 x the buffer), as nvbandwidth and STREAM count a copy.
- Patterns: int32 slices filling at least ``--fraction`` of the memory free at start; six patterns
  (zeros, ones, alternating bits, walking ones, address-in-address, seeded random) are written over
  every slice and then every word is read back and compared with the expected value, on the GPU.
  On a CUDA GPU the sibling ``pattern_kernel.py`` does it (CUDA kernels compiled at run time with
  NVRTC: one write and one read per pattern, every wrong word counted and the first ones located
  in that read); where it cannot load, the torch path below runs and the record says why
  (``engine``, ``engine_reason``). The torch path only asks "any mismatch?" per slice; a failed
  pattern is read again to count every wrong word and locate the first ones. Either way time
  scales with memory size, see ``PatternTest``. A run that cannot allocate what it asked for says
  so (``allocated_bytes`` below ``requested``).
- PCIe: pinned host buffer, ``copy_(non_blocking=True)`` both ways timed with events; the link's
  generation and width are read from sysfs (visible read-only in containers) while the copies run.

Exit status as ``matmul.py``: 0 ok, 1 mismatches, 2 usage, 3 no torch, 4 CUDA error, 5 a bug.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

try:  # imported as part of the package (the unit tests, the host side)
    from .report_line import ReportLine
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from report_line import ReportLine  # type: ignore[no-redef, import-not-found, unused-ignore]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_FRAMEWORK, EXIT_DEVICE, EXIT_BUG = 0, 1, 2, 3, 4, 5
FAULT_SWITCH = "GPUHOST_ALLOW_FAULT_INJECTION"
PATTERNS = ("zeros", "ones", "alternating", "walking-ones", "address", "random")
CONSTANTS = {"zeros": 0, "ones": -1, "alternating": 0x55555555}
SLICE_WORDS = 64 * 2**20  # 256 MiB int32 slices: far larger than any L2, small enough to fill memory
RANDOM_WORDS = 2**20  # the random pattern repeats a 4 MiB tile: it stays in L2 while it is broadcast
MAX_REPORTED = 8
GOLDEN = 0x9E3779B1


def _sibling(name: str) -> Any:
    """A sibling workload script (copied into the container beside this one)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


class WorkloadError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def to_int32(value: int) -> int:
    """``value`` mod 2**32 as a signed 32-bit integer: what an int32 word holds."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def slice_key(slice_index: int, seed: int) -> int:
    """The word XORed into slice ``slice_index`` of the random pattern (an integer hash)."""
    x = (slice_index * GOLDEN + seed * 0x85EBCA6B + 1) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return to_int32(x ^ (x >> 16))


def expected_word(pattern: str, index: int, slice_words: int, seed: int, random_block: list[int]) -> int:
    """The word at global ``index`` of ``pattern`` (a reference for tests; the GPU never calls this)."""
    if pattern in CONSTANTS:
        return to_int32(CONSTANTS[pattern])
    if pattern == "walking-ones":
        return to_int32(1 << (index % 32))
    if pattern == "address":
        return to_int32(index)
    if pattern == "random":  # the tile repeats within a slice; each slice XORs its own key
        tile = random_block[index % slice_words % len(random_block)]
        return to_int32(tile ^ slice_key(index // slice_words, seed))
    raise ValueError(f"unknown pattern {pattern!r}")


class Device:
    """Torch on one CUDA device, or on the CPU (unit tests, with ``--cpu-memory-mib``)."""

    def __init__(self, torch: Any, kind: str, index: int) -> None:
        self.torch = torch
        self.kind = kind
        self.index = index
        self.device: Any = torch.device("cpu")

    def open(self) -> dict[str, Any]:
        torch = self.torch
        if self.kind == "cpu":
            return {"kind": "cpu", "index": None, "name": "cpu"}
        if getattr(torch.version, "cuda", None) is None:
            raise WorkloadError("no-cuda-build", f"torch {torch.__version__} was built without CUDA")
        frameworks = _sibling("matmul_frameworks")
        try:
            torch.cuda.init()
            count = int(torch.cuda.device_count())
        except Exception as exc:
            raise WorkloadError(frameworks.classify_error(str(exc)), str(exc)) from exc
        if not 0 <= self.index < count:
            raise WorkloadError("no-gpu", f"--gpu-index {self.index}, but {count} device(s) are visible")
        torch.cuda.set_device(self.index)
        self.device = torch.device("cuda", self.index)
        props = torch.cuda.get_device_properties(self.index)
        return {
            "kind": "cuda",
            "index": self.index,
            "name": str(props.name),
            "uuid": frameworks._uuid_text(getattr(props, "uuid", None)),
            "pci_bus_id": frameworks._pci_text(props),
            "memory_bytes": int(props.total_memory),
        }

    def sync(self) -> None:
        if self.kind == "cuda":
            self.torch.cuda.synchronize()

    def timer(self) -> Any:
        """start() / stop() -> seconds: CUDA events on a GPU, the wall clock on the CPU."""
        torch, kind = self.torch, self.kind

        class Timer:
            def start(self) -> None:
                if kind == "cuda":
                    self.a, self.b = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    self.a.record()
                else:
                    self.t = time.perf_counter()

            def stop(self) -> float:
                if kind == "cuda":
                    self.b.record()
                    self.b.synchronize()
                    return float(self.a.elapsed_time(self.b)) / 1000.0
                return time.perf_counter() - self.t

        return Timer()

    def free_bytes(self, cpu_memory: int) -> int:
        if self.kind == "cpu":
            return cpu_memory
        self.torch.cuda.empty_cache()
        free, _total = self.torch.cuda.mem_get_info(self.index)
        return int(free)


class PatternTest:
    """The six patterns over int32 slices allocated from the free memory, by one of two engines.

    Speed comes from what each pass costs in HBM traffic, so every pattern is built to touch each
    word as few times as it can (counted in passes over the slice; a bool temporary is 1/4 pass):

    ==============  =====================================================  =======  =====
    pattern         torch engine (``--device cpu``, or no NVRTC/driver)     torch    nvrtc
    ==============  =====================================================  =======  =====
    constants       ``fill_`` W1; ``(s != c).any()`` R1 + W1/4 + R1/4      2.5      2
    walking-ones    32-word row broadcast: copy W1; ``!= row`` .any()      2.5      2
    address         ``arange(out=)`` W1; ``sub_`` 32-word ramp R1 W1;       4.5      2
                    ``!=`` per-row base (1/32) .any()
    random          4 MiB tile broadcast (L2-resident): copy W1; ``!=``    2.5      2
    ==============  =====================================================  =======  =====

    The nvrtc engine (``pattern_kernel.py``, on CUDA GPUs) writes each word once from registers
    and reads it once, counting every wrong word exactly and keeping the first ``MAX_REPORTED``
    (index, value) in the same read: a failed pattern costs nothing more. Its address words hold
    their own 64-bit byte offset (per 8-byte word) and its random words hash (index, seed); the
    torch engine keeps its own definitions (``expected_word``). On an H200 the kernels tested 2.07
    TB/s (128 GiB x 6 patterns in 0.40 s), where these torch formulations reached 0.25 (address)
    to 1.49 (constants), 0.64 in all.

    The torch engine only asks "any mismatch?" per slice and syncs once per pattern (a stack of
    bools); ``count_nonzero`` cost 3x a ``.any()`` on an H200. Only a failed pattern takes the slow
    path, which counts every mismatching word exactly and locates the first ones.
    """

    def __init__(self, dev: Device, args: argparse.Namespace) -> None:
        self.dev = dev
        self.torch = dev.torch
        self.seed = int(args.seed)
        self.slice_words = int(args.slice_words)
        self.flips: list[tuple[str, int]] = args.flips
        self.slices: list[Any] = []
        self.wanted_engine = str(getattr(args, "pattern_engine", "auto"))
        self.kernel: Any = None  # a pattern_kernel.PatternKernel when the nvrtc engine runs
        self.engine = "torch"
        self.engine_reason: str | None = None

    def select_engine(self) -> None:
        """The nvrtc kernels where they load (CUDA device, NVRTC, the driver), else torch and why."""
        if self.wanted_engine == "torch":
            self.engine_reason = "--pattern-engine torch was asked for"
            return
        if self.dev.kind != "cuda":
            self.engine_reason = "the CPU device (--device cpu) runs no CUDA kernels"
        else:
            kernels = _sibling("pattern_kernel")
            try:
                self.kernel = kernels.PatternKernel.load(self.torch, self.dev.index, MAX_REPORTED)
            except kernels.KernelUnavailable as exc:
                self.engine_reason = " ".join(str(exc).split())[:800]
            except Exception as exc:  # a fault of the loader itself: the torch path still tests
                self.engine_reason = f"loading the pattern kernels: {type(exc).__name__}: {exc}"[:800]
            else:
                self.engine, self.engine_reason = "nvrtc", None
                return
        if self.wanted_engine == "nvrtc":
            raise WorkloadError("no-pattern-kernel", f"--pattern-engine nvrtc: {self.engine_reason}")

    def allocate(self, requested: int, limit: int | None) -> int:
        torch = self.torch
        left = requested // 4
        while left >= 32:
            words = min(self.slice_words, left - left % 32)
            if limit is not None and (len(self.slices) * self.slice_words + words) * 4 > limit:
                break  # an injected allocation failure
            try:
                self.slices.append(torch.empty(words, dtype=torch.int32, device=self.dev.device))
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                print(f"allocation stopped: {exc}", file=sys.stderr)
                break
            left -= words
        return sum(int(s.numel()) for s in self.slices) * 4

    def blocks(self) -> dict[str, Any]:
        """Small device tensors the patterns broadcast from (cached, so reading them costs no HBM pass)."""
        torch = self.torch
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        tile = min(self.slice_words, RANDOM_WORDS)
        random = torch.randint(-(2**31), 2**31, (tile,), generator=gen, dtype=torch.int64).to(torch.int32)
        shifts = torch.arange(32, dtype=torch.int64)
        walking = (torch.ones(32, dtype=torch.int64) << shifts).to(torch.int32)  # 1 << 31 wraps negative
        ramp = torch.arange(32, dtype=torch.int32)
        row_base = (torch.arange(self.slice_words // 32, dtype=torch.int64) * 32).to(torch.int32)
        return {
            k: v.to(self.dev.device)
            for k, v in (("random", random), ("walking", walking), ("ramp", ramp), ("row_base", row_base))
        }

    def row(self, pattern: str, s: int, blk: dict[str, Any]) -> Any:
        """The row that slice ``s`` of a repeating pattern repeats (walking-ones, random)."""
        if pattern == "walking-ones":
            return blk["walking"]
        return self.torch.bitwise_xor(blk["random"], slice_key(s, self.seed))

    def write(self, pattern: str, s: int, words: Any, blk: dict[str, Any]) -> None:
        """Write-only: each word is written once and nothing large is read."""
        if pattern in CONSTANTS:
            words.fill_(to_int32(CONSTANTS[pattern]))
        elif pattern == "address":
            write_ramp(self.torch, words, s * self.slice_words)
        else:
            row = self.row(pattern, s, blk)
            for part in as_rows(words, int(row.numel())):
                part.copy_(row[: part.shape[-1]])

    def differs(self, pattern: str, s: int, words: Any, blk: dict[str, Any]) -> list[Any]:
        """0-dim device bools, true where slice ``s`` holds a wrong word (no sync).

        Address consumes the slice (it subtracts the ramp in place); the others leave it as read.
        """
        if pattern in CONSTANTS:
            return [(words != to_int32(CONSTANTS[pattern])).any()]
        if pattern == "address":
            # word (r, j) of the (n/32, 32) view holds base + 32 r + j; less the row (base + j) it
            # must equal row_base[r] = 32 r. base is a multiple of 32, so base + 31 never wraps.
            start = self.torch.add(blk["ramp"], to_int32(s * self.slice_words))
            view = words.view(-1, 32)
            view.sub_(start)
            return [(view != blk["row_base"][: view.shape[0], None]).any()]
        row = self.row(pattern, s, blk)
        return [(part != row[: part.shape[-1]]).any() for part in as_rows(words, int(row.numel()))]

    def expected(self, pattern: str, s: int, n: int, blk: dict[str, Any]) -> Any:
        """The whole expected slice as one tensor (the slow path only)."""
        torch = self.torch
        if pattern in CONSTANTS:
            return torch.full((n,), to_int32(CONSTANTS[pattern]), dtype=torch.int32, device=self.dev.device)
        want = torch.empty(n, dtype=torch.int32, device=self.dev.device)
        self.write(pattern, s, want, blk)
        return want

    def recount(self, pattern: str, blk: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        """The slow path: every mismatching word counted, the first ones located (offset, got, want)."""
        torch = self.torch
        counts: list[Any] = []
        first: list[dict[str, Any]] = []
        for s, words in enumerate(self.slices):
            want = self.expected(pattern, s, int(words.numel()), blk)
            bad = words != want
            counts.append(torch.count_nonzero(bad))
            if len(first) < MAX_REPORTED:
                where = bad.nonzero().flatten()[: MAX_REPORTED - len(first)]
                for i, got, exp in zip(
                    where.tolist(), words[where].tolist(), want[where].tolist(), strict=True
                ):
                    offset = (s * self.slice_words + int(i)) * 4
                    first.append(
                        {"offset": offset, "got": int(got) & 0xFFFFFFFF, "want": int(exp) & 0xFFFFFFFF}
                    )
        total = int(torch.stack(counts).sum()) if counts else 0
        return total, first

    def write_all(self, pattern: str, blk: dict[str, Any]) -> None:
        for s, words in enumerate(self.slices):
            self.write(pattern, s, words, blk)
        self.inject_flips(pattern)

    def inject_flips(self, pattern: str) -> None:
        """An injected fault: one bit of each named word flips after the pattern was written."""
        for name, word in self.flips:
            if name == pattern:
                s, i = divmod(word, self.slice_words)
                if s < len(self.slices) and i < int(self.slices[s].numel()):
                    self.slices[s][i : i + 1].bitwise_xor_(1)

    def run_kernel_pattern(self, pattern: str) -> dict[str, Any]:
        """The nvrtc engine: fill every slice, then check every slice into one counter (one sync)."""
        kernel, kernels = self.kernel, _sibling("pattern_kernel")
        self.dev.sync()
        start = time.perf_counter()
        kernel.reset()
        for s, words in enumerate(self.slices):
            kernel.fill(words, s * self.slice_words, pattern, self.seed)
        self.inject_flips(pattern)
        for s, words in enumerate(self.slices):
            kernel.check(words, s * self.slice_words, pattern, self.seed)
        total, located = kernel.mismatches()  # the sync; a failed CUDA call raises, and run() reports it
        seconds = time.perf_counter() - start
        first = [
            {"offset": index * 4, "got": got, "want": kernels.expected_word(pattern, index, self.seed)}
            for index, got in located
        ]
        return {"pattern": pattern, "mismatches": total, "seconds": seconds, "first": first}

    def run_pattern(self, pattern: str, blk: dict[str, Any]) -> dict[str, Any]:
        """Write the pattern everywhere, then ask every slice "any mismatch?" (one sync at the end)."""
        if self.kernel is not None:
            return self.run_kernel_pattern(pattern)
        self.dev.sync()
        start = time.perf_counter()
        self.write_all(pattern, blk)
        flags = [flag for s, words in enumerate(self.slices) for flag in self.differs(pattern, s, words, blk)]
        failed = int(self.torch.stack(flags).sum()) if flags else 0  # slices (or slice parts) that differ
        seconds = time.perf_counter() - start
        total, first = 0, list[dict[str, Any]]()
        if failed:
            if pattern == "address":  # its check consumed the slices: write them again to count
                self.write_all(pattern, blk)
            total, first = self.recount(pattern, blk)
            # A word that read wrong once but right on the recount (address is rewritten) still
            # fails the run: never fewer mismatches than slices that differed.
            total = max(total, failed)
        return {"pattern": pattern, "mismatches": total, "seconds": seconds, "first": first}


def as_rows(words: Any, width: int) -> list[Any]:
    """``words`` as a (rows, width) view plus its shorter tail, so a ``width`` row broadcasts over it."""
    full = int(words.numel()) // width * width
    parts = [words[:full].view(-1, width)] if full else []
    if full < int(words.numel()):
        parts.append(words[full:])
    return parts


def write_ramp(torch: Any, out: Any, start: int) -> None:
    """``out[i] = to_int32(start + i)``, write-only (``arange(out=)``), split where int32 wraps."""
    n, first = int(out.numel()), to_int32(start)
    before_wrap = min(n, 2**31 - first)
    torch.arange(first, first + before_wrap, dtype=torch.int32, out=out[:before_wrap])
    if before_wrap < n:
        torch.arange(-(2**31), -(2**31) + n - before_wrap, dtype=torch.int32, out=out[before_wrap:])


def run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise WorkloadError("no-framework", f"torch: {exc}") from exc
    report["framework"] = f"torch {torch.__version__}"
    dev = Device(torch, args.device, args.gpu_index)
    report["device"] = dev.open()
    cpu_memory = int(args.cpu_memory_mib) * 2**20
    try:
        bandwidth = _sibling("memory_bandwidth")
        if "hbm" in args.checks:
            free = dev.free_bytes(cpu_memory)
            report["hbm"] = bandwidth.measure_hbm(dev, min(args.hbm_bytes, free // 8), args.slow)
        if "pcie" in args.checks:
            report["pcie"] = bandwidth.measure_pcie(dev, args.pcie_bytes, report["device"].get("pci_bus_id"))
        if "patterns" in args.checks:
            report["patterns"] = run_patterns(dev, args, cpu_memory)
    except WorkloadError:
        raise
    except Exception as exc:
        frameworks = _sibling("matmul_frameworks")
        raise WorkloadError(frameworks.classify_error(str(exc)), f"{type(exc).__name__}: {exc}") from exc
    patterns = report.get("patterns") or {}
    return EXIT_MISMATCH if any(r["mismatches"] for r in patterns.get("results", [])) else EXIT_OK


def run_patterns(dev: Device, args: argparse.Namespace, cpu_memory: int) -> dict[str, Any]:
    test = PatternTest(dev, args)
    test.select_engine()  # before the memory is measured: the module and its self-test use some
    blk = test.blocks() if test.kernel is None else {}
    free = dev.free_bytes(cpu_memory)
    # Headroom for the comparison's temporaries (one bool per word of a slice; on failure also one
    # expected slice) and the CUDA context.
    requested = int(free * args.fraction) // 128 * 128  # whole groups of 32 words
    allocated = test.allocate(requested, args.alloc_limit)
    record: dict[str, Any] = {
        "free_bytes": free,
        "requested_bytes": requested,
        "allocated_bytes": allocated,
        "fraction": args.fraction,
        "slices": len(test.slices),
        "slice_words": test.slice_words,
        "passes": args.passes,
        "seed": args.seed,
        "engine": test.engine,
        "results": [],
    }
    if test.engine_reason:
        record["engine_reason"] = test.engine_reason
    if test.kernel is not None:
        record["engine_detail"] = test.kernel.info
    start = time.perf_counter()
    if allocated >= requested:
        for number in range(args.passes):
            for pattern in PATTERNS:
                result = test.run_pattern(pattern, blk)
                result["pass"] = number
                record["results"].append(result)
    record["seconds"] = time.perf_counter() - start
    test.slices.clear()
    if test.kernel is not None:
        test.kernel.close()
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpu-index", type=int, default=0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: unit tests only")
    parser.add_argument("--checks", default="hbm,pcie,patterns", help="comma list of hbm, pcie, patterns")
    parser.add_argument("--passes", type=int, default=1, help="times to run the six patterns")
    parser.add_argument("--fraction", type=float, default=0.92, help="share of the free memory to test")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--hbm-bytes", type=int, default=2**30)
    parser.add_argument("--pcie-bytes", type=int, default=2**28)
    parser.add_argument("--slice-words", type=int, default=SLICE_WORDS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--pattern-engine",
        choices=("auto", "nvrtc", "torch"),
        default="auto",
        help="auto: the NVRTC kernels on a CUDA GPU where they load, else torch; nvrtc: fail without them",
    )
    parser.add_argument("--cpu-memory-mib", type=int, default=64, help="--device cpu: the 'free' memory")
    parser.add_argument("--inject-flip", action="append", default=[], metavar="PATTERN:WORD")
    parser.add_argument("--inject-slow", type=int, default=1, metavar="FACTOR")
    parser.add_argument("--inject-alloc-limit", type=int, default=None, metavar="BYTES")
    args = parser.parse_args(argv)
    args.checks = [c.strip() for c in str(args.checks).split(",") if c.strip()]
    unknown = sorted(set(args.checks) - {"hbm", "pcie", "patterns"})
    if unknown or not args.checks:
        raise WorkloadError("usage", f"--checks: unknown {', '.join(unknown) or 'empty list'}")
    if args.passes < 1 or not 0.0 < args.fraction <= 0.99 or args.slice_words < 32 or args.slice_words % 32:
        raise WorkloadError("usage", "--passes >= 1, 0 < --fraction <= 0.99, --slice-words a multiple of 32")
    faults = bool(args.inject_flip) or args.inject_slow != 1 or args.inject_alloc_limit is not None
    if faults and os.environ.get(FAULT_SWITCH) != "1":
        raise WorkloadError("fault-injection-refused", f"fault injection needs {FAULT_SWITCH}=1")
    if args.inject_slow < 1:
        raise WorkloadError("usage", "--inject-slow must be at least 1")
    args.slow = args.inject_slow
    args.alloc_limit = args.inject_alloc_limit
    args.flips = []
    for spec in args.inject_flip:
        name, _, word = spec.partition(":")
        if name not in PATTERNS or not word.isdigit():
            raise WorkloadError(
                "usage", f"--inject-flip {spec!r}: expected PATTERN:WORD, PATTERN one of {PATTERNS}"
            )
        args.flips.append((name, int(word)))
    return args


def main(argv: list[str] | None = None) -> int:
    line = ReportLine("memory", device=None)
    report = line.report
    code = EXIT_BUG
    try:
        args = parse_args(argv)
        report["checks"] = args.checks
        if args.flips or args.slow != 1 or args.alloc_limit is not None:
            report["fault_injection"] = {
                "flips": args.flips,
                "slow": args.slow,
                "alloc_limit": args.alloc_limit,
            }
        code = run(args, report)
    except WorkloadError as exc:
        report.update(error=str(exc), kind=exc.kind)
        codes = {
            "usage": EXIT_USAGE,
            "fault-injection-refused": EXIT_USAGE,
            "no-framework": EXIT_NO_FRAMEWORK,
        }
        code = codes.get(exc.kind, EXIT_DEVICE)
    except SystemExit as exc:
        report.update(error="invalid command line (see stderr)", kind="usage")
        code = EXIT_USAGE if exc.code else EXIT_OK
    except BaseException as exc:
        line.crashed(exc)
    line.send()
    return code


if __name__ == "__main__":
    sys.exit(main())
