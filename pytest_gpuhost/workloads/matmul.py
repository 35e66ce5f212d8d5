#!/usr/bin/env python3
"""Compute verification: one GPU's matrix multiply against a float64 CPU reference.

Standalone on purpose: it is mounted read-only into a container and run by the image's own
``python3``, so it imports only the standard library and the image's PyTorch (else CuPy with
numpy), never ``pytest_gpuhost``. It prints exactly one JSON object on stdout; diagnostics go to
stderr. ``pytest_gpuhost.compute.numerics`` parses that object and re-derives the error bound defined in
``BOUND_MODELS`` below, so the two copies of the formula are tested against each other.

For each dtype: seeded inputs, uniform in [-1, 1], generated in float64 and rounded to the grid
the hardware multiplies on (so rounding the inputs is not counted as error); C = A @ B on the
device, timed with CUDA events; the float64 reference from the same rounded inputs; and an
elementwise comparison against a deterministic forward error bound (docs/compute-verification.md).

Exit status: 0 every computed dtype is within its bound; 1 some dtype is not; 2 usage error (a
refused fault injection included); 3 neither torch nor cupy; 4 a CUDA or device error; 5 a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_FRAMEWORK, EXIT_DEVICE, EXIT_BUG = 0, 1, 2, 3, 4, 5
FAULT_SWITCH = "GPUHOST_ALLOW_FAULT_INJECTION"
DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16")
ALIASES = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32"}
ALIASES.update({"bf16": "bfloat16", "fp16": "float16", "half": "float16"})
MAX_SIZE = 8192  # the float64 CPU reference grows as n**3: 8192 already takes minutes on few cores
CHUNK_ROWS = 512  # the comparison walks C in row blocks to keep host memory near 5 n**2 doubles
WARMUP_S = 0.15  # long enough for an idle GPU to leave its low clocks before the timed batches
BATCH_S = 0.02  # each timed batch holds enough matmuls to last this long, so events resolve it
MAX_INNER = 1000


@dataclass(frozen=True)
class BoundModel:
    """How one dtype's GEMM rounds: the inputs to the elementwise bound."""

    u_acc: float  # unit roundoff of accumulation, as the hardware rounds it
    u_out: float  # unit roundoff of the final rounding to the output dtype; 0: output is the accumulator
    eta_acc: float  # underflow: absolute error of one accumulation step (half the smallest subnormal)
    eta_out: float  # underflow of the output rounding


# Tensor cores (tf32, bf16, fp16) accumulate in fp32 but have been measured to truncate rather
# than round to nearest, so their accumulation unit is 2**-23, twice fp32's 2**-24.
BOUND_MODELS = {
    "float64": BoundModel(2.0**-53, 0.0, 2.0**-1074, 0.0),
    "float32": BoundModel(2.0**-24, 0.0, 2.0**-150, 0.0),
    "tf32": BoundModel(2.0**-23, 0.0, 2.0**-150, 0.0),
    "bfloat16": BoundModel(2.0**-23, 2.0**-8, 2.0**-150, 2.0**-134),
    "float16": BoundModel(2.0**-23, 2.0**-11, 2.0**-150, 2.0**-25),
}
REFERENCE_U = 2.0**-53  # the float64 reference and |A||B| carry their own (tiny) rounding error


def gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u): the classic bound on n successive roundings."""
    nu = n * u
    if nu >= 1.0:
        raise ValueError(f"n * u = {nu} >= 1: no error bound exists at this size")
    return nu / (1.0 - nu)


def bound_terms(dtype: str, n: int) -> tuple[float, float, float]:
    """(coef, u_out, absolute) such that bound_ij = coef * (|A||B|)_ij + u_out * |Cref_ij| + absolute.

    |GPU - exact| <= (1 + u_out) gamma_n(u_acc) |A||B| + u_out |C| + underflow; the reference and
    |A||B| themselves are float64 results, within gamma_n(2**-53) of exact, which is folded in.
    """
    model = BOUND_MODELS[dtype]
    g_ref = gamma(n, REFERENCE_U)
    coef = (1.0 + model.u_out) * (gamma(n, model.u_acc) + g_ref) / (1.0 - g_ref)
    absolute = (1.0 + model.u_out) * n * model.eta_acc + model.eta_out
    return coef, model.u_out, absolute


def elementwise_bound(dtype: str, n: int, absprod: float, abs_ref: float) -> float:
    """The bound for one element, for callers holding plain floats (tests, the suite)."""
    coef, u_out, absolute = bound_terms(dtype, n)
    return coef * absprod + u_out * abs_ref + absolute


def classify_error(message: str) -> str:
    """A CUDA or framework error message to the ``kind`` the suite turns into a diagnosis."""
    text = message.lower()
    patterns = (
        ("driver-too-old", ("driver version is insufficient", "driver on your system is too old")),
        ("driver-too-old", ("insufficient_driver", "forward compatibility was attempted")),
        ("no-cuda-build", ("not compiled with cuda",)),
        ("no-driver", ("found no nvidia driver", "libcuda.so", "no nvidia driver")),
        ("no-gpu", ("no cuda-capable device", "invalid device ordinal", "no cuda gpus are available")),
        ("fabric-manager", ("system not yet initialized",)),
        ("gpu-busy", ("busy or unavailable",)),
        ("unsupported-gpu", ("no kernel image is available",)),
        ("out-of-memory", ("out of memory",)),
        ("ecc-error", ("ecc error",)),
        ("gpu-fault", ("unspecified launch failure", "illegal memory access", "illegal instruction")),
        ("gpu-fault", ("fallen off the bus", "gpu is lost", "launch timed out", "hardware stop")),
        ("gpu-fault", ("misaligned address", "unknown error")),
    )
    for kind, needles in patterns:
        if any(needle in text for needle in needles):
            return kind
    return "cuda-error"


class WorkloadError(Exception):
    """An error the run reports as ``{"error": ..., "kind": ...}``."""

    def __init__(self, kind: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


if TYPE_CHECKING:  # typing.Protocol is newer than some images' Python
    from typing import Protocol

    class Framework(Protocol):
        """What the run needs from PyTorch or CuPy; host arrays are torch CPU tensors or numpy arrays."""

        name: str
        timing: str

        def open_device(self) -> dict[str, Any]: ...
        def unsupported(self, dtype: str) -> str | None: ...
        def inputs(self, n: int, seed: int) -> tuple[Any, Any]: ...
        def rounded(self, x64: Any, dtype: str) -> Any: ...
        def multiply(self, a64: Any, b64: Any, dtype: str, repeats: int) -> tuple[Any, list[float], int]: ...
        def nan_to_inf(self, x: Any) -> Any: ...
        def digest(self, *arrays: Any) -> str: ...
        def release(self) -> None: ...


def _median_timing(n: int, seconds: list[float], timing: str) -> dict[str, Any]:
    flops = 2.0 * n**3
    median, best = statistics.median(seconds), min(seconds)
    return {
        "seconds": median,
        "tflops": flops / median / 1e12 if median > 0 else None,
        "tflops_best": flops / best / 1e12 if best > 0 else None,
        "timing": timing,
    }


def _warmup_then_batches(
    call: Any, sync: Any, repeats: int, batch: Any, same_as_first: Any, on_gpu: bool
) -> tuple[list[float], int]:
    """Warm up, size batches, return per-matmul seconds and how many batches ended with a different C.

    On the CPU (unit tests) there are no clocks to ramp up and the timing means little: keep it short.
    """
    warmup_s, batch_s = (WARMUP_S, BATCH_S) if on_gpu else (0.0, 0.0)
    count, start = 0, time.perf_counter()
    while True:
        call()
        sync()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= warmup_s and count >= 2:
            break
    inner = max(1, min(MAX_INNER, math.ceil(batch_s / max(elapsed / count, 1e-9))))
    seconds: list[float] = []
    mismatches = 0
    for _ in range(repeats):
        seconds.append(batch(inner) / inner)
        if not same_as_first():
            mismatches += 1
    return seconds, mismatches


class TorchFramework:
    """PyTorch on a CUDA device (or the CPU, for unit tests of this script)."""

    def __init__(self, torch: Any, device: str, index: int) -> None:
        self.torch = torch
        self.kind = device
        self.index = index
        self.name = f"torch {torch.__version__}"
        self.timing = "cuda-events" if device == "cuda" else "cpu-wall-clock"
        self.device: Any = None
        self.capability: tuple[int, int] | None = None

    def open_device(self) -> dict[str, Any]:
        torch = self.torch
        if self.kind == "cpu":
            self.device = torch.device("cpu")
            name = platform.processor() or platform.machine() or "cpu"
            return {"kind": "cpu", "index": None, "name": name, "threads": torch.get_num_threads()}
        if getattr(torch.version, "cuda", None) is None:
            raise WorkloadError("no-cuda-build", f"{self.name} was built without CUDA (a CPU-only image?)")
        try:
            torch.cuda.init()
            count = int(torch.cuda.device_count())
        except Exception as exc:
            raise WorkloadError(classify_error(str(exc)), str(exc)) from exc
        if count == 0:
            raise WorkloadError("no-gpu", "no CUDA device is visible (torch.cuda.device_count() == 0)")
        if not 0 <= self.index < count:
            raise WorkloadError("no-gpu", f"--gpu-index {self.index}, but {count} device(s) are visible")
        torch.cuda.set_device(self.index)
        self.device = torch.device("cuda", self.index)
        props = torch.cuda.get_device_properties(self.index)
        self.capability = (int(props.major), int(props.minor))
        info: dict[str, Any] = {
            "kind": "cuda",
            "index": self.index,
            "name": str(props.name),
            "uuid": _uuid_text(getattr(props, "uuid", None)),
            "pci_bus_id": _pci_text(props),
            "capability": list(self.capability),
            "memory_mib": int(props.total_memory) // 2**20,
            "multiprocessors": int(props.multi_processor_count),
            "visible_devices": count,
            "cuda_runtime": torch.version.cuda,
        }
        return info

    def unsupported(self, dtype: str) -> str | None:
        cap = self.capability
        if cap is None:  # the CPU runs every dtype, tf32 as exact float32 on tf32-representable inputs
            return None
        if dtype in ("tf32", "bfloat16") and cap < (8, 0):
            return f"{dtype} needs compute capability 8.0 (Ampere) or newer; this GPU is {cap[0]}.{cap[1]}"
        if dtype == "float16" and cap < (5, 3):
            return f"float16 needs compute capability 5.3 or newer; this GPU is {cap[0]}.{cap[1]}"
        return None

    def inputs(self, n: int, seed: int) -> tuple[Any, Any]:
        torch = self.torch
        gen = torch.Generator(device="cpu").manual_seed(seed)
        a = torch.rand((n, n), generator=gen, dtype=torch.float64) * 2.0 - 1.0
        b = torch.rand((n, n), generator=gen, dtype=torch.float64) * 2.0 - 1.0
        return a, b

    def rounded(self, x64: Any, dtype: str) -> Any:
        torch = self.torch
        if dtype == "float64":
            return x64
        if dtype == "tf32":
            bits = x64.to(torch.float32).view(torch.int32)
            bits = (bits + 0xFFF + ((bits >> 13) & 1)) & -8192  # round to nearest even, 10 mantissa bits
            return bits.view(torch.float32).to(torch.float64)
        return x64.to(self._storage(dtype)).to(torch.float64)

    def _storage(self, dtype: str) -> Any:
        torch = self.torch
        names = {"float64": "float64", "float32": "float32", "tf32": "float32"}
        return getattr(torch, names.get(dtype, dtype))

    def _configure(self, dtype: str) -> None:
        """TF32 only for the tf32 dtype; no reduced-precision reductions, which the bound excludes."""
        backends = self.torch.backends
        tf32 = dtype == "tf32"
        # allow_tf32 sets both the old and the (torch >= 2.9) new precision switches, which cuBLAS
        # calls require to agree; reading it back checks that they do.
        backends.cuda.matmul.allow_tf32 = tf32
        backends.cudnn.allow_tf32 = tf32
        if bool(backends.cuda.matmul.allow_tf32) != tf32:
            raise WorkloadError("internal-error", f"torch did not take allow_tf32 = {tf32}")
        for flag in (
            "allow_fp16_reduced_precision_reduction",
            "allow_bf16_reduced_precision_reduction",
            "allow_fp16_accumulation",
        ):
            # an older torch without this switch never reduces in low precision
            with contextlib.suppress(AttributeError, RuntimeError):
                setattr(backends.cuda.matmul, flag, False)

    def multiply(self, a64: Any, b64: Any, dtype: str, repeats: int) -> tuple[Any, list[float], int]:
        torch = self.torch
        self._configure(dtype)
        storage = self._storage(dtype)
        a = a64.to(storage).to(self.device)
        b = b64.to(storage).to(self.device)
        c = torch.matmul(a, b)
        torch.matmul(a, b, out=c)
        self._sync()
        first = c.clone()

        def call() -> None:
            torch.matmul(a, b, out=c)

        def batch(inner: int) -> float:
            if self.kind == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    call()
                end.record()
                end.synchronize()
                return float(start.elapsed_time(end)) / 1000.0
            t0 = time.perf_counter()
            for _ in range(inner):
                call()
            return time.perf_counter() - t0

        seconds, mismatches = _warmup_then_batches(
            call, self._sync, repeats, batch, lambda: bool(torch.equal(c, first)), self.kind == "cuda"
        )
        return c.to("cpu").to(torch.float64), seconds, mismatches

    def _sync(self) -> None:
        if self.kind == "cuda":
            self.torch.cuda.synchronize()

    def nan_to_inf(self, x: Any) -> Any:
        return x.masked_fill(self.torch.isnan(x), math.inf)

    def digest(self, *arrays: Any) -> str:
        h = hashlib.blake2b(digest_size=16)
        for x in arrays:
            x = x.contiguous()
            h.update(ctypes.string_at(x.data_ptr(), x.numel() * x.element_size()))
        return h.hexdigest()

    def release(self) -> None:
        if self.kind == "cuda":
            self.torch.cuda.empty_cache()


class CupyFramework:
    """CuPy on a CUDA device, for images without PyTorch. Host arrays are numpy arrays."""

    def __init__(self, cupy: Any, numpy: Any, index: int) -> None:
        self.cupy = cupy
        self.np = numpy
        self.index = index
        self.name = f"cupy {cupy.__version__}"
        self.timing = "cuda-events"
        self.capability: tuple[int, int] | None = None

    def open_device(self) -> dict[str, Any]:
        cupy = self.cupy
        runtime = cupy.cuda.runtime
        try:
            count = int(runtime.getDeviceCount())
            if count == 0:
                raise WorkloadError("no-gpu", "no CUDA device is visible (getDeviceCount() == 0)")
            if not 0 <= self.index < count:
                raise WorkloadError("no-gpu", f"--gpu-index {self.index}, but {count} device(s) are visible")
            cupy.cuda.Device(self.index).use()
            props = runtime.getDeviceProperties(self.index)
        except WorkloadError:
            raise
        except Exception as exc:
            raise WorkloadError(classify_error(str(exc)), str(exc)) from exc
        self.capability = (int(props["major"]), int(props["minor"]))
        raw_uuid = props.get("uuid")
        uuid = None
        if isinstance(raw_uuid, bytes) and len(raw_uuid) == 16:
            h = raw_uuid.hex()
            uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        name = props.get("name", b"")
        return {
            "kind": "cuda",
            "index": self.index,
            "name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            "uuid": uuid,
            "pci_bus_id": _pci_from(
                props.get("pciDomainID"), props.get("pciBusID"), props.get("pciDeviceID")
            ),
            "capability": list(self.capability),
            "memory_mib": int(props.get("totalGlobalMem", 0)) // 2**20,
            "multiprocessors": props.get("multiProcessorCount"),
            "visible_devices": count,
            "cuda_runtime": str(runtime.runtimeGetVersion()),
        }

    def _linalg(self) -> Any:
        import importlib

        return importlib.import_module("cupy._core._routines_linalg")

    def unsupported(self, dtype: str) -> str | None:
        cap = self.capability or (0, 0)
        if dtype == "bfloat16":
            return "the CuPy path does not test bfloat16 (no bfloat16 dtype in numpy)"
        if dtype == "tf32":
            if cap < (8, 0):
                return f"tf32 needs compute capability 8.0 (Ampere) or newer; this GPU is {cap[0]}.{cap[1]}"
            if not hasattr(self._linalg(), "COMPUTE_TYPE_TF32"):
                return "this CuPy cannot switch TF32 on at run time"
        if dtype == "float16" and cap < (5, 3):
            return f"float16 needs compute capability 5.3 or newer; this GPU is {cap[0]}.{cap[1]}"
        return None

    def inputs(self, n: int, seed: int) -> tuple[Any, Any]:
        rng = self.np.random.default_rng(seed)
        return rng.uniform(-1.0, 1.0, (n, n)), rng.uniform(-1.0, 1.0, (n, n))

    def rounded(self, x64: Any, dtype: str) -> Any:
        np = self.np
        if dtype == "float64":
            return x64
        if dtype == "tf32":
            bits = x64.astype(np.float32).view(np.int32)
            bits = (bits + 0xFFF + ((bits >> 13) & 1)) & -8192
            return bits.view(np.float32).astype(np.float64)
        return x64.astype(np.float16 if dtype == "float16" else np.float32).astype(np.float64)

    def multiply(self, a64: Any, b64: Any, dtype: str, repeats: int) -> tuple[Any, list[float], int]:
        cupy, np = self.cupy, self.np
        linalg = self._linalg()
        wanted = "COMPUTE_TYPE_TF32" if dtype == "tf32" else "COMPUTE_TYPE_DEFAULT"
        if hasattr(linalg, wanted):
            linalg.set_compute_type(np.float32, getattr(linalg, wanted))
        storage = {"float64": np.float64, "float16": np.float16}.get(dtype, np.float32)
        a = cupy.asarray(a64.astype(storage))
        b = cupy.asarray(b64.astype(storage))
        c = cupy.matmul(a, b)
        cupy.matmul(a, b, out=c)
        cupy.cuda.Device().synchronize()
        first = c.copy()

        def call() -> None:
            cupy.matmul(a, b, out=c)

        def batch(inner: int) -> float:
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            for _ in range(inner):
                call()
            end.record()
            end.synchronize()
            return float(cupy.cuda.get_elapsed_time(start, end)) / 1000.0

        seconds, mismatches = _warmup_then_batches(
            call,
            cupy.cuda.Device().synchronize,
            repeats,
            batch,
            lambda: bool(cupy.array_equal(c, first)),
            True,
        )
        return cupy.asnumpy(c).astype(np.float64), seconds, mismatches

    def nan_to_inf(self, x: Any) -> Any:
        return self.np.where(self.np.isnan(x), math.inf, x)

    def digest(self, *arrays: Any) -> str:
        h = hashlib.blake2b(digest_size=16)
        for x in arrays:
            h.update(self.np.ascontiguousarray(x).tobytes())
        return h.hexdigest()

    def release(self) -> None:
        self.cupy.get_default_memory_pool().free_all_blocks()


def _uuid_text(raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _pci_text(props: Any) -> str | None:
    return _pci_from(
        getattr(props, "pci_domain_id", None),
        getattr(props, "pci_bus_id", None),
        getattr(props, "pci_device_id", None),
    )


def _pci_from(domain: Any, bus: Any, device: Any) -> str | None:
    if not all(isinstance(v, int) for v in (domain, bus, device)):
        return None
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


def load_framework(device: str, index: int) -> Framework:
    """PyTorch if it imports, else CuPy; neither is a WorkloadError of kind ``no-framework``."""
    problems: list[str] = []
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]

        return TorchFramework(torch, device, index)
    except ImportError as exc:
        problems.append(f"torch: {exc}")
    except Exception as exc:  # a broken install (a missing shared library) is worth reporting
        problems.append(f"torch: {type(exc).__name__}: {exc}")
    if device == "cpu":
        raise WorkloadError(
            "no-framework", "neither torch nor cupy", "--device cpu needs torch; " + "; ".join(problems)
        )
    try:
        import cupy  # type: ignore[import-not-found, unused-ignore]
        import numpy  # type: ignore[import-not-found, unused-ignore]

        return CupyFramework(cupy, numpy, index)
    except ImportError as exc:
        problems.append(f"cupy: {exc}")
    except Exception as exc:
        problems.append(f"cupy: {type(exc).__name__}: {exc}")
    raise WorkloadError("no-framework", "neither torch nor cupy", "; ".join(problems))


@dataclass(frozen=True)
class Fault:
    dtype: str
    row: int
    col: int
    delta: float


def compare(fw: Framework, a64: Any, b64: Any, got: Any, dtype: str) -> dict[str, Any]:
    """Elementwise |got - A@B| against bound_ij, in row blocks; the worst element by error/bound."""
    n = int(a64.shape[0])
    coef, u_out, absolute = bound_terms(dtype, n)
    abs_b = abs(b64)
    worst: dict[str, Any] = {}
    worst_ratio, max_abs, max_rel, violations = -1.0, 0.0, 0.0, 0
    for r0 in range(0, n, CHUNK_ROWS):
        a_blk = a64[r0 : r0 + CHUNK_ROWS]
        want = a_blk @ b64
        absprod = abs(a_blk) @ abs_b
        bound = absprod * coef + abs(want) * u_out + absolute
        err = fw.nan_to_inf(abs(got[r0 : r0 + CHUNK_ROWS] - want))
        ratio = err / bound
        violations += int((ratio > 1.0).sum())
        max_abs = max(max_abs, float(err.max()))
        max_rel = max(max_rel, float((err / (absprod + 1e-300)).max()))
        flat = int(ratio.argmax())
        i, j = divmod(flat, n)
        if float(ratio[i, j]) > worst_ratio:
            worst_ratio = float(ratio[i, j])
            worst = {
                "row": r0 + i,
                "col": j,
                "got": float(got[r0 + i, j]),
                "want": float(want[i, j]),
                "abs_err": float(err[i, j]),
                "absprod": float(absprod[i, j]),
                "bound": float(bound[i, j]),
            }
    return {
        "max_abs_err": max_abs,
        "max_rel_err": max_rel,
        "bound": worst["bound"],
        "error_to_bound": worst_ratio,
        "violations": violations,
        "elements": n * n,
        "worst": worst,
    }


def run_dtype(fw: Framework, dtype: str, base: tuple[Any, Any], args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.size)
    model = BOUND_MODELS[dtype]
    record: dict[str, Any] = {"dtype": dtype, "size": n}
    reason = fw.unsupported(dtype)
    if reason:
        record.update(status="skipped", reason=reason)
        return record
    a64, b64 = fw.rounded(base[0], dtype), fw.rounded(base[1], dtype)
    try:
        got, seconds, mismatches = fw.multiply(a64, b64, dtype, int(args.repeats))
    except WorkloadError:
        raise
    except Exception as exc:  # CUDA errors surface as RuntimeError (torch) or CUDARuntimeError (cupy)
        raise WorkloadError(classify_error(str(exc)), f"{dtype} matmul: {exc}") from exc
    finally:
        with contextlib.suppress(
            Exception
        ):  # after a GPU fault freeing memory fails too: keep the first error
            fw.release()
    for fault in args.faults:
        if fault.dtype == dtype:
            got[fault.row, fault.col] += fault.delta
    record.update(status="ok", repeats=int(args.repeats), repeat_mismatches=mismatches)
    record.update(_median_timing(n, seconds, fw.timing))
    record.update(compare(fw, a64, b64, got, dtype))
    record["model"] = {"u_acc": model.u_acc, "u_out": model.u_out}
    record["passed"] = record["violations"] == 0 and (mismatches == 0 or fw.timing != "cuda-events")
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpu-index", type=int, default=0, help="device index as this process sees it")
    parser.add_argument("--size", type=int, default=4096, help="n of the n x n matrices (default 4096)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma list of " + ", ".join(DTYPES))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches after the warm-up")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: for unit tests only")
    parser.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="DTYPE:ROW:COL[:DELTA]",
        help=f"add DELTA (default 1.0) to one result element (repeatable); needs {FAULT_SWITCH}=1",
    )
    args = parser.parse_args(argv)
    dtypes: list[str] = []
    for token in (t.strip().lower() for t in str(args.dtypes).split(",") if t.strip()):
        name = ALIASES.get(token, token)
        if name not in DTYPES:
            raise WorkloadError("usage", f"unknown dtype {token!r}; choose from {', '.join(DTYPES)}")
        if name not in dtypes:
            dtypes.append(name)
    if not dtypes:
        raise WorkloadError("usage", "--dtypes names no dtype")
    args.dtypes = dtypes
    if not 2 <= args.size <= MAX_SIZE:
        raise WorkloadError("usage", f"--size must be between 2 and {MAX_SIZE}")
    if args.repeats < 1:
        raise WorkloadError("usage", "--repeats must be at least 1")
    args.faults = [_parse_fault(spec, args.size) for spec in args.inject_fault]
    unused = sorted({f.dtype for f in args.faults} - set(dtypes))
    if unused:  # a self-test whose fault is never injected would pass for the wrong reason
        raise WorkloadError("usage", f"--inject-fault names {', '.join(unused)}, which --dtypes does not run")
    return args


def _parse_fault(spec: str, n: int) -> Fault:
    if os.environ.get(FAULT_SWITCH) != "1":
        raise WorkloadError(
            "fault-injection-refused",
            f"--inject-fault corrupts results on purpose; it needs {FAULT_SWITCH}=1",
        )
    parts = spec.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        dtype = ALIASES.get(parts[0].lower(), parts[0].lower())
        row, col = int(parts[1]), int(parts[2])
        delta = float(parts[3]) if len(parts) == 4 else 1.0
    except ValueError:
        raise WorkloadError("usage", f"--inject-fault {spec!r}: expected DTYPE:ROW:COL[:DELTA]") from None
    if dtype not in DTYPES or not (0 <= row < n and 0 <= col < n):
        raise WorkloadError("usage", f"--inject-fault {spec!r}: no such dtype or element at --size {n}")
    return Fault(dtype, row, col, delta)


def run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    fw = load_framework(args.device, args.gpu_index)
    report["framework"] = fw.name
    report["device"] = fw.open_device()
    base = fw.inputs(args.size, args.seed)
    report["inputs_digest"] = fw.digest(*base)
    results: list[dict[str, Any]] = report["results"]
    for position, dtype in enumerate(args.dtypes):
        try:
            results.append(run_dtype(fw, dtype, base, args))
        except WorkloadError as exc:
            results.append({"dtype": dtype, "status": "error", "error": str(exc), "kind": exc.kind})
            report.setdefault("error", str(exc))
            report.setdefault("kind", exc.kind)
            if exc.kind != "out-of-memory":  # after a sticky CUDA error every later call fails too
                reason = f"not run: {dtype} hit a CUDA error ({exc.kind})"
                results.extend(
                    {"dtype": d, "status": "skipped", "reason": reason} for d in args.dtypes[position + 1 :]
                )
                break
    if "error" in report:
        return EXIT_DEVICE
    return EXIT_OK if all(r.get("passed", True) for r in results) else EXIT_MISMATCH


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    # Everything but the final JSON goes to stderr, including C libraries writing to fd 1.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    report: dict[str, Any] = {"workload": "matmul", "version": 1, "framework": None, "device": None}
    code = EXIT_BUG
    try:
        args = parse_args(argv)
        report.update(size=args.size, seed=args.seed, dtypes=args.dtypes, results=[])
        if args.faults:
            report["fault_injection"] = [vars(f) for f in args.faults]
        report["env"] = {
            k: os.environ[k]
            for k in ("NVIDIA_TF32_OVERRIDE", "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        }
        code = run(args, report)
    except WorkloadError as exc:
        report.update(error=str(exc), kind=exc.kind)
        if exc.detail:
            report["detail"] = exc.detail
        code = {
            "usage": EXIT_USAGE,
            "fault-injection-refused": EXIT_USAGE,
            "no-framework": EXIT_NO_FRAMEWORK,
        }.get(exc.kind, EXIT_DEVICE)
    except SystemExit as exc:  # argparse: its message is already on stderr
        report.update(error="invalid command line (see stderr)", kind="usage")
        code = EXIT_USAGE if exc.code else EXIT_OK
        if not exc.code:  # --help
            json_out.close()
            return EXIT_OK
    except BaseException as exc:
        traceback.print_exc()
        report.update(error=f"{type(exc).__name__}: {exc}", kind="internal-error")
    if "results" in report and code in (EXIT_OK, EXIT_MISMATCH):
        report["passed"] = code == EXIT_OK
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    json_out.write(json.dumps(report) + "\n")
    json_out.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
