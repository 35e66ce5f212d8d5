"""The burn's GEMM engines: PyTorch (or the CPU, for the unit tests) and CuPy as a fallback, each verifying every product by its column sums."""

from __future__ import annotations

import ctypes
import importlib
import time
from typing import Any

try:  # imported as part of the package (the unit tests, the host side)
    from .burn_numerics import REFERENCE_ROWS, block_rows, tolerance_scale
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from burn_numerics import REFERENCE_ROWS, block_rows, tolerance_scale  # type: ignore[no-redef, import-not-found, unused-ignore]


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
