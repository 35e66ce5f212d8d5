#!/usr/bin/env python3
"""GEMM burn that verifies every product completely and cheaply: one worker thread per GPU.

Standalone on purpose: the plugin mounts this file read-only into a container and runs it with the
image's own ``python3`` (or runs it on the host), so it needs only the standard library and PyTorch,
or CuPy as a fallback, and it must run on Python 3.8 and later. It never imports pytest_gpuhost.

Verification. A and B are random and fixed; each iteration computes C = A B on the GPU. Once, in
float64, the worker computes r = (1^T A) B, the column sums of the exact product of the rounded
inputs, and a per-column tolerance from the unit roundoff of the output and accumulation types and
n. After every GEMM it compares the column sums of C (summed in float64 on the GPU) with r. A GPU
that is consistently wrong fails every iteration, which comparing with its own first result (the
usual burn check) cannot see. The cost is one read of C per GEMM, a few per cent of its time.

Output: JSON lines on stdout, flushed. Per GPU one ``"start": true`` record, a progress record about
once a second ``{"gpu", "t", "iters", "errors", "tflops", "max_err_ratio"}`` and one final
``"done": true`` record with ``iters, errors, tflops, verify_seconds, gemm_seconds, stopped``.
``errors`` counts iterations whose product failed verification (null with --no-verify);
``max_err_ratio`` is the largest column deviation seen, as a fraction of its tolerance (null if NaN).

Exit status: 0 clean, 1 verification errors, 2 usage (a refused fault injection too), 3 neither
PyTorch nor CuPy (or no GPU), 4 a worker failed (CUDA error, out of memory) or hung in the driver,
5 the burn's own thermal guard stopped it.

The thermal guard (``--temp-limit``) is the second guard, inside the workload: it reads its GPUs'
temperatures through NVML (``libnvidia-ml.so.1``, which the toolkit or the driver mounts give the
container; ctypes, so no pynvml is needed) five times a second and stops the burn at the limit,
even when the runner's guard never acts. A GPU it cannot read for two seconds stops the burn too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

FAULT_ENV = "GPUHOST_ALLOW_FAULT_INJECTION"
EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_WORKER, EXIT_GUARD = 0, 1, 2, 3, 4, 5
GUARD_PERIOD_S = 0.2
GUARD_BLIND_S = 2.0
GUARD_STOP = "thermal-guard"
# The loader's search first (the toolkit updates the container's cache), then where driver mounts put it.
NVML_LIBRARIES = (
    "libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
)

N_MAX = 16384  # larger GEMMs draw no more power; this one is ~12 ms on an H100
N_STEP = 256
SIGMAS = 8.0  # tolerance in standard deviations of the (over-estimated) rounding noise
# Column sums in float64 straight from C cost about 13 % of a 16384 bf16 GEMM on an H200; summing
# blocks of 256 rows in float32 first, then the n/256 partial sums in float64, costs about 2 %.
BLOCK_ROWS = 256
REFERENCE_ROWS = 512  # rows of C computed in float64 to estimate each column's norm
BATCH_TARGET_S = 0.1  # GEMMs are enqueued in batches of about this long; bounds the stop latency
BATCH_MAX = 256
JOIN_GRACE_S = 10.0  # a worker stuck in the driver this long after the stop is reported as hung
SETUP_TIMEOUT_S = 300.0  # CUDA start-up, allocation and the reference: a worker still there is hung

UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}
ITEM_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# --- numerics and sizing: pure, imported by the unit tests ------------------------------------


def pick_dtype(capability: tuple[int, int] | None, backend: str = "torch") -> str:
    """The fastest input type whose GEMM runs on tensor cores: bf16 from sm_80, fp16 from sm_70.

    CuPy gets float32 unless asked: its half-precision GEMM may accumulate in half precision,
    which the tolerance model below does not cover.
    """
    if backend == "cupy" or capability is None:
        return "float32"
    if capability >= (8, 0):
        return "bfloat16"
    if capability >= (7, 0):
        return "float16"
    return "float32"


def tolerance_scale(n: int, out_dtype: str) -> float:
    """Per-column tolerance divided by the column's 2-norm of the exact product.

    Rounding C to the output type adds at most u_out |c| per element, roughly uniform, so the
    column sum's error has a standard deviation of at most u_out ||c_j|| / sqrt(3). Float32
    accumulation over n terms adds per element at most about n u32 / 4 relative to |c| even with
    the truncating accumulators of tensor cores (a deliberate over-estimate: measured deviations
    are far smaller). SIGMAS such deviations make a false alarm in 10^11 column checks negligible.
    """
    u_out = UNIT_ROUNDOFF[out_dtype]
    u_acc = UNIT_ROUNDOFF["float32"]
    # The column sums add blocks of BLOCK_ROWS elements in float32 before float64: the same
    # per-element bound again, over BLOCK_ROWS terms instead of n.
    return SIGMAS * (u_out / math.sqrt(3.0) + (n + block_rows(n)) * u_acc / 4.0)


def block_rows(n: int) -> int:
    """Rows per float32 partial column sum; 1 (no blocking) when n is not a multiple."""
    return BLOCK_ROWS if n % BLOCK_ROWS == 0 else 1


def pick_size(
    free_bytes: int,
    mem_fraction: float,
    max_bytes: int,
    in_dtype: str,
    out_dtype: str,
    n_max: int = N_MAX,
) -> tuple[int, int]:
    """The GEMM order n (a multiple of 256) and how many output buffers to rotate through.

    A and B plus at least one output must fit in the budget with 10 % to spare for the
    reference computation; further outputs fill the budget (bounded by 64), so the burn also
    cycles through more of the memory.
    """
    budget = min(int(free_bytes * mem_fraction), max_bytes) * 0.9
    in_b, out_b = ITEM_BYTES[in_dtype], ITEM_BYTES[out_dtype]
    n = n_max - n_max % N_STEP
    while n > N_STEP and (2 * in_b + out_b) * n * n > budget:
        n -= N_STEP
    if (2 * in_b + out_b) * n * n > budget:
        raise MemoryError(f"{budget / 2**30:.2f} GiB of GPU memory is not enough for a {n}x{n} GEMM")
    buffers = int((budget - 2 * in_b * n * n) // (out_b * n * n))
    return n, max(1, min(buffers, 64))


def gemm_flops(n: int) -> float:
    return 2.0 * n * n * n


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a NaN or infinite deviation (itself an error) is written as null."""
    return value if math.isfinite(value) else None


def parse_gpus(text: str) -> list[int] | None:
    """``all`` is None; otherwise a comma list of CUDA device indices."""
    if text.strip() == "all":
        return None
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give 'all' or indices such as 0,1") from None
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give distinct indices such as 0,1")
    return gpus


# --- backends ------------------------------------------------------------------------------------


class BatchResult:
    """What the worker learns when a batch has finished on the device."""

    def __init__(self, iters: int, errors: int, worst: float, gemm_s: float, verify_s: float) -> None:
        self.iters = iters
        self.errors = errors
        self.worst = worst
        self.gemm_s = gemm_s
        self.verify_s = verify_s


class TorchEngine:
    """PyTorch on one CUDA device, or on the CPU (unit tests only)."""

    backend = "torch"

    def __init__(self, torch: Any, device: str, index: int) -> None:
        self.torch = torch
        self.cuda = device == "cuda"
        self.index = index
        if self.cuda:
            torch.cuda.set_device(index)
            self.device = torch.device("cuda", index)
            props = torch.cuda.get_device_properties(index)
            self.name = str(props.name)
            self.capability: tuple[int, int] | None = (int(props.major), int(props.minor))
            uuid = getattr(props, "uuid", None)
            self.uuid: str | None = f"GPU-{uuid}" if uuid is not None else None
        else:
            # One thread: OpenMP workers spinning at barriers slow tiny GEMMs 100-fold on a busy host.
            torch.set_num_threads(1)
            self.device = torch.device("cpu")
            self.name = "cpu"
            self.capability = None
            self.uuid = None
        self.host_slot = 0

    def free_bytes(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.mem_get_info(self.index)[0])
        return 4 << 30

    def dtype(self, name: str) -> Any:
        return getattr(self.torch, name)

    def float32_output_works(self, in_dtype: str) -> bool:
        """Whether ``torch.mm(..., out_dtype=float32)`` (cuBLAS, torch >= 2.8) is available here."""
        torch = self.torch
        if in_dtype == "float32":
            return True
        if not self.cuda:
            return False
        try:
            a = torch.ones(256, 256, device=self.device, dtype=self.dtype(in_dtype))
            out = torch.empty(256, 256, device=self.device, dtype=torch.float32)
            torch.mm(a, a, out_dtype=torch.float32, out=out)
            return bool((out == 256).all().item())
        except (TypeError, RuntimeError, NotImplementedError):
            return False

    def setup(self, n: int, in_dtype: str, out_dtype: str, buffers: int, seed: int) -> None:
        torch = self.torch
        if self.cuda:
            # The tolerance model assumes float32 accumulation with no reduced-precision shortcuts.
            torch.set_float32_matmul_precision("highest")
            for flag in ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction"):
                if hasattr(torch.backends.cuda.matmul, flag):
                    setattr(torch.backends.cuda.matmul, flag, False)
        dt, f64 = self.dtype(in_dtype), torch.float64
        self.out_dt = self.dtype(out_dtype)
        self.mixed = out_dtype != in_dtype
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        self.a = torch.randn(n, n, device=self.device, dtype=torch.float32, generator=gen).to(dt)
        self.b = torch.randn(n, n, device=self.device, dtype=torch.float32, generator=gen).to(dt)
        self.c = [torch.empty(n, n, device=self.device, dtype=self.out_dt) for _ in range(buffers)]
        # Reference in float64, from the rounded inputs: column sums r = (1^T A) B, and each
        # column's norm ||A b_j|| estimated from up to REFERENCE_ROWS evenly spaced rows of A.
        col_a = self.a.sum(dim=0, dtype=f64)
        m = min(n, REFERENCE_ROWS)
        rows = torch.arange(m, device=self.device) * (n // m)
        a_rows = self.a[rows].to(f64)
        self.r = torch.zeros(n, device=self.device, dtype=f64)
        c_rows = torch.zeros(m, n, device=self.device, dtype=f64)
        step = max(1, (256 << 20) // (8 * n))
        for k in range(0, n, step):
            b64 = self.b[k : k + step].to(f64)
            self.r += col_a[k : k + step] @ b64
            c_rows += a_rows[:, k : k + step] @ b64
            del b64
        norms = ((c_rows * c_rows).sum(dim=0) * (n / m)).sqrt()
        self.tol = (norms * tolerance_scale(n, out_dtype)).clamp_min(1e-30)
        del col_a, a_rows, c_rows, norms
        self.errors = torch.zeros((), device=self.device, dtype=torch.int64)
        self.worst = torch.zeros((), device=self.device, dtype=f64)
        self.n = n
        if self.cuda:
            self.hosts = [torch.zeros(2, dtype=f64, pin_memory=True) for _ in range(2)]
            torch.cuda.synchronize(self.index)
        self.timing: list[tuple[Any, Any, Any]] = []
        self.cpu_gemm = 0.0
        self.cpu_verify = 0.0

    def enqueue(self, it: int, verify: bool, inject: bool) -> None:
        torch = self.torch
        c = self.c[it % len(self.c)]
        if self.cuda:
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            marks[0].record()
        else:
            t0 = time.perf_counter()
        if self.mixed:
            torch.mm(self.a, self.b, out_dtype=self.out_dt, out=c)
        else:
            torch.mm(self.a, self.b, out=c)
        if self.cuda:
            marks[1].record()
        else:
            t1 = time.perf_counter()
            self.cpu_gemm += t1 - t0
        if inject:  # an error far above one column's tolerance, as a flipped exponent bit would be
            row, col = it % self.n, (7 * it) % self.n
            c[row, col] += (64.0 * self.tol[col]).to(self.out_dt)
        if verify:
            rows = block_rows(self.n)
            partial = c.view(self.n // rows, rows, self.n).sum(dim=1, dtype=torch.float32)
            sums = partial.sum(dim=0, dtype=torch.float64)
            ratio = ((sums - self.r).abs_() / self.tol).max()
            self.errors += ratio.le(1.0).logical_not()  # NaN counts as an error
            self.worst = torch.maximum(self.worst, ratio)
        if self.cuda:
            marks[2].record()
            self.timing.append((marks[0], marks[1], marks[2] if verify else None))
        elif verify:
            self.cpu_verify += time.perf_counter() - t1

    def end_batch(self, iters: int) -> Any:
        """Queue a snapshot of the counters; ``collect`` waits for it without draining the queue."""
        torch = self.torch
        if not self.cuda:
            result = BatchResult(
                iters, int(self.errors.item()), float(self.worst.item()), self.cpu_gemm, self.cpu_verify
            )
            self.cpu_gemm = self.cpu_verify = 0.0
            return result
        host = self.hosts[self.host_slot]
        self.host_slot ^= 1
        host.copy_(torch.stack([self.errors.to(torch.float64), self.worst]), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        timing, self.timing = self.timing, []
        return (iters, host, done, timing)

    def collect(self, token: Any) -> BatchResult:
        if isinstance(token, BatchResult):
            return token
        iters, host, done, timing = token
        done.synchronize()
        gemm = sum(m0.elapsed_time(m1) for m0, m1, _ in timing) / 1000.0
        verify = sum(m1.elapsed_time(m2) for _, m1, m2 in timing if m2 is not None) / 1000.0
        return BatchResult(iters, int(host[0].item()), float(host[1].item()), gemm, verify)

    def close(self) -> None:
        for name in ("a", "b", "c", "r", "tol", "errors", "worst", "hosts", "timing"):
            if hasattr(self, name):
                delattr(self, name)
        if self.cuda:
            self.torch.cuda.synchronize(self.index)
            self.torch.cuda.empty_cache()


class CupyEngine:
    """CuPy on one CUDA device: the fallback for images without PyTorch."""

    backend = "cupy"

    def __init__(self, cupy: Any, device: str, index: int) -> None:
        if device != "cuda":
            raise RuntimeError("the CuPy backend needs a CUDA device")
        self.cp = cupy
        self.index = index
        self.dev = cupy.cuda.Device(index)
        self.dev.use()
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props.get("name", b"")
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        cc = str(self.dev.compute_capability)
        self.capability: tuple[int, int] | None = (int(cc[:-1]), int(cc[-1]))
        self.uuid: str | None = None
        self.timing: list[tuple[Any, Any, Any]] = []

    def free_bytes(self) -> int:
        return int(self.dev.mem_info[0])

    def float32_output_works(self, in_dtype: str) -> bool:
        return in_dtype == "float32"

    def setup(self, n: int, in_dtype: str, out_dtype: str, buffers: int, seed: int) -> None:
        cp = self.cp
        if in_dtype == "bfloat16":
            raise RuntimeError("CuPy has no bfloat16: use --dtype float16 or float32")
        self.dev.use()
        dt, f64 = getattr(cp, in_dtype), cp.float64
        rs = cp.random.RandomState(seed)
        self.a = rs.standard_normal((n, n), dtype=cp.float32).astype(dt)
        self.b = rs.standard_normal((n, n), dtype=cp.float32).astype(dt)
        self.c = [cp.empty((n, n), dtype=dt) for _ in range(buffers)]
        col_a = self.a.sum(axis=0, dtype=f64)
        m = min(n, REFERENCE_ROWS)
        a_rows = self.a[cp.arange(m) * (n // m)].astype(f64)
        self.r = cp.zeros(n, dtype=f64)
        c_rows = cp.zeros((m, n), dtype=f64)
        step = max(1, (256 << 20) // (8 * n))
        for k in range(0, n, step):
            b64 = self.b[k : k + step].astype(f64)
            self.r += col_a[k : k + step] @ b64
            c_rows += a_rows[:, k : k + step] @ b64
        norms = cp.sqrt((c_rows * c_rows).sum(axis=0) * (n / m))
        self.tol = cp.maximum(norms * tolerance_scale(n, out_dtype), 1e-30)
        self.errors = cp.zeros((), dtype=cp.int64)
        self.worst = cp.zeros((), dtype=f64)
        self.n = n
        self.stream = cp.cuda.get_current_stream()
        self.hosts = [cp.cuda.alloc_pinned_memory(16) for _ in range(2)]
        self.host_slot = 0
        self.dev.synchronize()

    def enqueue(self, it: int, verify: bool, inject: bool) -> None:
        cp = self.cp
        c = self.c[it % len(self.c)]
        marks = [cp.cuda.Event() for _ in range(3)]
        marks[0].record()
        cp.matmul(self.a, self.b, out=c)
        marks[1].record()
        if inject:
            row, col = it % self.n, (7 * it) % self.n
            c[row, col] += (64.0 * self.tol[col]).astype(c.dtype)
        if verify:
            rows = block_rows(self.n)
            sums = (
                c.reshape(self.n // rows, rows, self.n)
                .sum(axis=1, dtype=cp.float32)
                .sum(axis=0, dtype=cp.float64)
            )
            ratio = (cp.abs(sums - self.r) / self.tol).max()
            self.errors += cp.logical_not(ratio <= 1.0)
            self.worst = cp.maximum(self.worst, ratio)
        marks[2].record()
        self.timing.append((marks[0], marks[1], marks[2] if verify else None))

    def end_batch(self, iters: int) -> Any:
        cp = self.cp
        host = self.hosts[self.host_slot]
        self.host_slot ^= 1
        snap = cp.stack([self.errors.astype(cp.float64), self.worst])
        cp.cuda.runtime.memcpyAsync(host.ptr, snap.data.ptr, 16, 2, self.stream.ptr)  # 2: device->host
        done = cp.cuda.Event()
        done.record()
        timing, self.timing = self.timing, []
        return (iters, host, snap, done, timing)

    def collect(self, token: Any) -> BatchResult:
        import ctypes

        iters, host, _snap, done, timing = token
        done.synchronize()
        values = (ctypes.c_double * 2).from_address(host.ptr)
        gemm = sum(self.cp.cuda.get_elapsed_time(m0, m1) for m0, m1, _ in timing) / 1000.0
        verify = sum(self.cp.cuda.get_elapsed_time(m1, m2) for _, m1, m2 in timing if m2 is not None) / 1000.0
        return BatchResult(iters, int(values[0]), float(values[1]), gemm, verify)

    def close(self) -> None:
        for name in ("a", "b", "c", "r", "tol", "errors", "worst", "timing"):
            if hasattr(self, name):
                delattr(self, name)
        self.dev.synchronize()
        self.cp.get_default_memory_pool().free_all_blocks()


def load_backend(device: str) -> tuple[str, Any]:
    """PyTorch if importable (and, for CUDA, built with CUDA), else CuPy."""
    try:
        torch = importlib.import_module("torch")
        if device == "cpu" or torch.cuda.is_available():
            return "torch", torch
    except ImportError:
        torch = None
    if device == "cuda":
        try:
            return "cupy", importlib.import_module("cupy")
        except ImportError:
            pass
    if torch is not None:
        raise RuntimeError("PyTorch is installed but sees no CUDA device, and CuPy is not installed")
    raise RuntimeError("neither PyTorch nor CuPy can be imported")


# --- the thermal guard inside the workload --------------------------------------------------------


class Nvml:
    """The few NVML calls the guard needs, through ctypes: the image needs no pynvml."""

    def __init__(self, libraries: Sequence[str] = NVML_LIBRARIES) -> None:
        errors = []
        for library in libraries:
            try:
                self.lib = ctypes.CDLL(library)
                break
            except OSError as exc:
                errors.append(str(exc))
        else:
            raise OSError("; ".join(errors[:2]))
        self._check(self.lib.nvmlInit_v2(), "nvmlInit")

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with NVML error {code}")

    def handles(self) -> dict[str, Any]:
        """Every GPU this process sees, by UUID (inside a container: the container's GPUs)."""
        count = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        found = {}
        for index in range(count.value):
            handle = ctypes.c_void_p()
            self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)), "handle")
            uuid = ctypes.create_string_buffer(96)
            self._check(self.lib.nvmlDeviceGetUUID(handle, uuid, 96), "nvmlDeviceGetUUID")
            found[uuid.value.decode()] = handle
        return found

    def temperature(self, handle: Any) -> float:
        value = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetTemperature(handle, 0, ctypes.byref(value)), "temperature")
        return float(value.value)


class ThermalGuard(threading.Thread):
    """Stops the burn when a watched GPU reaches ``limit_c`` or cannot be read for a while.

    ``watched`` gives the UUIDs of the GPUs the workers burn, once they know them (None: all
    the GPUs NVML shows this process). ``read`` is a seam for the tests: uuid -> temperature.
    """

    def __init__(
        self,
        limit_c: float,
        stop: StopFlag,
        out: Output,
        watched: Callable[[], list[str] | None],
        read: Callable[[], dict[str, float | None]],
        period_s: float = GUARD_PERIOD_S,
    ) -> None:
        super().__init__(name="thermal-guard", daemon=True)
        self.limit_c = limit_c
        self.stop = stop
        self.out = out
        self.watched = watched
        self.read = read
        self.period_s = period_s
        self.tripped: str | None = None

    def run(self) -> None:
        last_read: dict[str, float] = {}
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                temps = self.read()
            except Exception as exc:  # NVML failing now: counted as unreadable below
                temps = {}
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = ""
            wanted = self.watched()
            for uuid in wanted if wanted is not None else list(temps):
                temp = temps.get(uuid)
                if temp is None:
                    since = last_read.setdefault(uuid, now)
                    if now - since >= GUARD_BLIND_S:
                        self.trip(f"{uuid} temperature unreadable for {now - since:.1f} s {error}".strip())
                        return
                    continue
                last_read[uuid] = now
                if temp >= self.limit_c:
                    self.trip(f"{uuid} reached {temp:g} °C, at or above the limit of {self.limit_c:g} °C")
                    return
            self.stop.event.wait(self.period_s)

    def trip(self, reason: str) -> None:
        self.tripped = reason
        self.stop.set(GUARD_STOP)
        self.out.emit({"thermal_guard": reason, "limit_c": self.limit_c})


def start_thermal_guard(
    limit_c: float, stop: StopFlag, out: Output, workers: Sequence[Any]
) -> ThermalGuard | None:
    """The guard on this process's GPUs through NVML; None (said on stdout) where NVML is missing."""
    try:
        nvml = Nvml()
        handles = nvml.handles()
    except (OSError, RuntimeError, AttributeError) as exc:
        out.emit({"thermal_guard_unavailable": f"NVML: {exc}"})
        return None

    def read() -> dict[str, float | None]:
        temps: dict[str, float | None] = {}
        for uuid, handle in handles.items():
            try:
                temps[uuid] = nvml.temperature(handle)
            except RuntimeError:
                temps[uuid] = None
        return temps

    def watched() -> list[str] | None:
        uuids = [w.uuid for w in workers if getattr(w, "uuid", None)]
        return [u for u in uuids if u in handles] or None

    guard = ThermalGuard(limit_c, stop, out, watched, read)
    guard.start()
    return guard


# --- the run -------------------------------------------------------------------------------------


class Output:
    """JSON lines to stdout, one writer at a time, flushed at once for the host side to follow."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.broken = False

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            if self.broken:
                return
            try:
                stream = self.stream or sys.stdout
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, OSError):
                self.broken = True


class StopFlag:
    """Why the run stops: the first reason given wins."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.lock = threading.Lock()

    def set(self, reason: str) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


class Worker(threading.Thread):
    """Burns one GPU until its time is up or the stop flag is set."""

    def __init__(
        self,
        gpu: int,
        args: argparse.Namespace,
        make_engine: Callable[[int], Any],
        stop: StopFlag,
        out: Output,
    ) -> None:
        super().__init__(name=f"burn-gpu{gpu}", daemon=True)
        self.gpu = gpu
        self.args = args
        self.make_engine = make_engine
        self.stop = stop
        self.out = out
        self.final: dict[str, Any] | None = None
        self.iters = 0
        self.errors = 0
        self.deadline: float | None = None  # monotonic end of the burn, once it has begun
        self.uuid: str | None = None  # the GPU's UUID once its engine is up, for the thermal guard

    def run(self) -> None:
        engine = None
        try:
            engine = self.make_engine(self.gpu)
            self.uuid = getattr(engine, "uuid", None)
            self.burn(engine)
        except BaseException as exc:  # reported as a record: the host side reads no traceback
            message = f"{type(exc).__name__}: {exc}".strip()
            self.out.emit({"gpu": self.gpu, "error": message})
            self.final = self.final or self.final_record(
                "error", 0.0, 0.0, 0.0, float("nan"), 0, error=message
            )
        finally:
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.close()
            if self.final is not None:
                self.out.emit(self.final)

    def final_record(
        self,
        stopped: str,
        seconds: float,
        gemm_s: float,
        verify_s: float,
        worst: float,
        n: int,
        error: str | None = None,
    ) -> dict[str, Any]:
        verify = not self.args.no_verify
        record: dict[str, Any] = {
            "gpu": self.gpu,
            "done": True,
            "iters": self.iters,
            "errors": self.errors if verify else None,
            "tflops": round(gemm_flops(n) * self.iters / seconds / 1e12, 3) if seconds > 0 else 0.0,
            "seconds": round(seconds, 3),
            "gemm_seconds": round(gemm_s, 4),
            "verify_seconds": round(verify_s, 4),
            "max_err_ratio": finite_or_none(round(worst, 6)) if verify else None,
            "verified": verify,
            "stopped": stopped,
        }
        if error is not None:
            record["error"] = error
        return record

    def burn(self, engine: Any) -> None:
        args = self.args
        started = time.monotonic()
        in_dtype = args.dtype if args.dtype != "auto" else pick_dtype(engine.capability, engine.backend)
        if args.out_dtype == "input":
            out_dtype = in_dtype
        elif engine.float32_output_works(in_dtype):
            out_dtype = "float32"
        elif args.out_dtype == "float32":
            raise RuntimeError("float32 output needs torch.mm(out_dtype=...) on CUDA (PyTorch >= 2.8)")
        else:
            out_dtype = in_dtype
        if args.n:
            n, buffers = args.n, 2
        else:
            n, buffers = pick_size(
                engine.free_bytes(), args.mem_fraction, int(args.max_mem_gib * 2**30), in_dtype, out_dtype
            )
        if self.stop.is_set():
            self.final = self.final_record(self.stop.reason or "signal", 0.0, 0.0, 0.0, 0.0, n)
            return
        engine.setup(n, in_dtype, out_dtype, buffers, args.seed + self.gpu)
        mem = (2 * ITEM_BYTES[in_dtype] + buffers * ITEM_BYTES[out_dtype]) * n * n
        self.out.emit(
            {
                "gpu": self.gpu,
                "start": True,
                "backend": engine.backend,
                "device": engine.name,
                "uuid": engine.uuid,
                "n": n,
                "dtype": in_dtype,
                "out_dtype": out_dtype,
                "buffers": buffers,
                "mem_gib": round(mem / 2**30, 2),
                "setup_seconds": round(time.monotonic() - started, 3),
            }
        )
        self.loop(engine, n)

    def loop(self, engine: Any, n: int) -> None:
        args = self.args
        verify, every = not args.no_verify, args.inject_fault_every or 0
        begin = time.monotonic()
        deadline = begin + args.seconds if args.seconds > 0 else math.inf
        self.deadline = deadline
        queued = done_iters = 0
        batch = 1
        gemm_s = verify_s = 0.0
        worst = 0.0
        last_report = begin
        pending = None
        stopped = "time"
        while True:
            if self.stop.is_set():
                stopped = self.stop.reason or "signal"
                break
            if time.monotonic() >= deadline:
                break
            for _ in range(batch):
                engine.enqueue(queued, verify, every > 0 and (queued + 1) % every == 0)
                queued += 1
                if self.stop.is_set() or time.monotonic() >= deadline:  # a slow device: stop mid-batch
                    break
            token = engine.end_batch(queued)
            if pending is not None:
                result = engine.collect(pending)
                count = result.iters - done_iters
                done_iters, self.errors, worst = result.iters, result.errors, result.worst
                gemm_s += result.gemm_s
                verify_s += result.verify_s
                per_iter = (result.gemm_s + result.verify_s) / max(1, count)
                batch = max(1, min(BATCH_MAX, int(BATCH_TARGET_S / per_iter) if per_iter > 0 else BATCH_MAX))
            pending = token
            self.iters = done_iters
            now = time.monotonic()
            if now - last_report >= args.progress_interval and done_iters:
                last_report = now
                self.out.emit(
                    {
                        "gpu": self.gpu,
                        "t": round(now - begin, 3),
                        "iters": done_iters,
                        "errors": self.errors if verify else None,
                        "tflops": round(gemm_flops(n) * done_iters / (now - begin) / 1e12, 3),
                        "max_err_ratio": finite_or_none(round(worst, 6)) if verify else None,
                    }
                )
        if pending is not None:  # drain: the last queued batch finishes before memory is freed
            result = engine.collect(pending)
            self.iters, self.errors, worst = result.iters, result.errors, result.worst
            gemm_s += result.gemm_s
            verify_s += result.verify_s
        seconds = time.monotonic() - begin
        self.final = self.final_record(stopped, seconds, gemm_s, verify_s, worst, n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="GEMM burn with complete verification of every product (pytest-gpuhost)."
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="burn duration; 0: until stopped")
    parser.add_argument("--gpus", type=parse_gpus, default=None, help="'all' (default) or CUDA indices: 0,1")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument(
        "--out-dtype",
        default="auto",
        choices=("auto", "input", "float32"),
        help="product type: auto is float32 where the backend can (tighter verification)",
    )
    parser.add_argument("--mem-fraction", type=float, default=0.5, help="of free GPU memory (default 0.5)")
    parser.add_argument("--max-mem-gib", type=float, default=20.0, help="per GPU, at most (default 20)")
    parser.add_argument("--n", type=int, default=0, help="GEMM order override (tests: --n 128)")
    parser.add_argument("--stop-file", default=None, help="stop when this path exists")
    parser.add_argument(
        "--temp-limit",
        type=float,
        default=None,
        help="the burn's own guard: stop when a GPU reaches this temperature (°C)",
    )
    parser.add_argument(
        "--setup-timeout",
        type=float,
        default=SETUP_TIMEOUT_S,
        help="a worker not burning this long after the start is hung (default %(default)g s)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip verification (to measure its cost)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: unit tests only")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--progress-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--inject-fault-every",
        type=int,
        default=0,
        metavar="K",
        help=f"corrupt every K-th product (tests only; needs {FAULT_ENV}=1)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.inject_fault_every:
        if os.environ.get(FAULT_ENV) != "1":
            parser.error(f"--inject-fault-every needs the environment variable {FAULT_ENV}=1")
        if args.inject_fault_every < 0:
            parser.error("--inject-fault-every must be positive")
        if args.no_verify:
            parser.error("--inject-fault-every needs verification: drop --no-verify")
    if args.n and (args.n < 16 or (args.device == "cuda" and args.n % N_STEP)):
        parser.error(f"--n must be at least 16, and a multiple of {N_STEP} on a GPU")
    if not 0 < args.mem_fraction <= 1:
        parser.error("--mem-fraction must be in (0, 1]")
    if args.device == "cpu" and args.gpus is None:
        args.gpus = [0]
    return args


def install_signal_handlers(stop: StopFlag) -> None:
    """SIGTERM (docker stop, the guard) and SIGINT stop the work cleanly; as PID 1 in a container
    the process gets no default handlers, so these are needed there too."""

    def handler(signum: int, _frame: Any) -> None:
        stop.set("signal")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    stop = StopFlag()
    install_signal_handlers(stop)  # before the slow import of the backend
    args = parse_args(argv)
    out = Output()
    # NVML and nvidia-smi number GPUs by PCI bus; make CUDA's indices agree on the host.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    try:
        backend, module = load_backend(args.device)
    except RuntimeError as exc:
        out.emit({"error": str(exc)})
        return EXIT_NO_BACKEND
    engine_class = TorchEngine if backend == "torch" else CupyEngine
    if args.gpus is None:
        count = int(
            module.cuda.device_count() if backend == "torch" else module.cuda.runtime.getDeviceCount()
        )
        args.gpus = list(range(count))
        if not args.gpus:
            out.emit({"error": "no CUDA device is visible"})
            return EXIT_NO_BACKEND

    def make_engine(gpu: int) -> Any:
        return engine_class(module, args.device, gpu)

    workers = [Worker(gpu, args, make_engine, stop, out) for gpu in args.gpus]
    for worker in workers:
        worker.start()
    guard = None
    if args.temp_limit is not None:
        guard = start_thermal_guard(args.temp_limit, stop, out, workers)
    stop_seen: float | None = None
    # A worker hung in CUDA start-up never sets its deadline: the setup deadline holds instead.
    setup_deadline = time.monotonic() + args.setup_timeout
    while any(worker.is_alive() for worker in workers):
        now = time.monotonic()
        if args.stop_file and os.path.exists(args.stop_file):
            stop.set("stop-file")
        if stop.is_set() and stop_seen is None:
            stop_seen = now
        deadlines = [
            w.deadline if w.deadline is not None else setup_deadline for w in workers if w.is_alive()
        ]
        overdue = min([stop_seen] if stop_seen is not None else deadlines or [math.inf])
        if now > overdue + JOIN_GRACE_S:  # stuck in the driver: report it and leave
            for worker in workers:
                if worker.is_alive():
                    out.emit(worker.final_record("hung", now - overdue, 0.0, 0.0, math.nan, 0, error="hung"))
            sys.stdout.flush()
            os._exit(EXIT_WORKER)
        for worker in workers:
            worker.join(0.1 / len(workers))
    finals = [worker.final or {} for worker in workers]
    if guard is not None and guard.tripped:
        return EXIT_GUARD
    if any(final.get("error") or not final for final in finals):
        return EXIT_WORKER
    if any(final.get("errors") for final in finals):
        return EXIT_ERRORS
    return EXIT_OK


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    # The work is drained and its memory freed; skipping the interpreter's teardown (half a second
    # with PyTorch loaded) keeps the exit after SIGTERM well inside a second.
    os._exit(status)
