"""The matmul's frameworks: PyTorch and CuPy behind one interface (inputs, rounding, timed products), and the device's identity."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import platform
import statistics
import time
from typing import TYPE_CHECKING, Any


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


WARMUP_S = 0.15  # long enough for an idle GPU to leave its low clocks before the timed batches


BATCH_S = 0.02  # each timed batch holds enough matmuls to last this long, so events resolve it


MAX_INNER = 1000


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
