"""Compute verification, host side: the matmul workload's JSON, its error bound, and verdicts.

Pure Python with no third-party import, so the suite evaluates results without numpy. The bound
is defined twice on purpose: here, derived from the formats' unit roundoffs, and as constants in
``workloads/matmul.py``, which must stay standalone because it runs inside the workload image.
``evaluate`` recomputes the bound at the worst element and rejects a result whose script
disagrees, and the unit tests compare the two definitions directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from pytest_gpuhost.diagnosis import Diagnosis

DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16")

# Unit roundoff u = 2**-p of each format with p significand bits (implicit bit included),
# round to nearest: |fl(x) - x| <= u |x| for x in the normal range.
_SIGNIFICAND_BITS = {"float64": 53, "float32": 24, "tf32": 11, "bfloat16": 8, "float16": 11}
# Half the smallest subnormal: the absolute error of one rounding that underflows (float64: the
# smallest subnormal itself, as half of it is not representable).
_UNDERFLOW = {"float64": 2.0**-1074, "float32": 2.0**-150, "bfloat16": 2.0**-134, "float16": 2.0**-25}
# The float64 reference and |A||B| are themselves computed in float64.
REFERENCE_FORMAT = "float64"
# Fewer violating elements than this look like isolated hardware faults, more like a wrong mode.
ISOLATED_FAULTS = 16


def unit_roundoff(fmt: str) -> float:
    """u of a floating-point format: float64, float32, tf32, bfloat16 or float16."""
    try:
        return 2.0 ** -_SIGNIFICAND_BITS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(_SIGNIFICAND_BITS)}") from None


@dataclass(frozen=True)
class BoundModel:
    """How one dtype's GEMM rounds: accumulation unit, output rounding unit, underflow terms."""

    u_acc: float
    u_out: float
    eta_acc: float
    eta_out: float


def _tensor_core_model(output: str | None) -> BoundModel:
    # Tensor cores accumulate in fp32 but truncate instead of rounding to nearest, which doubles
    # the accumulation unit; a 16-bit output is then rounded (to nearest) once more.
    return BoundModel(
        u_acc=2 * unit_roundoff("float32"),
        u_out=unit_roundoff(output) if output else 0.0,
        eta_acc=_UNDERFLOW["float32"],
        eta_out=_UNDERFLOW[output] if output else 0.0,
    )


BOUND_MODELS: dict[str, BoundModel] = {
    "float64": BoundModel(unit_roundoff("float64"), 0.0, _UNDERFLOW["float64"], 0.0),
    "float32": BoundModel(unit_roundoff("float32"), 0.0, _UNDERFLOW["float32"], 0.0),
    "tf32": _tensor_core_model(None),
    "bfloat16": _tensor_core_model("bfloat16"),
    "float16": _tensor_core_model("float16"),
}


def gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u), the bound on the relative effect of n roundings of unit u."""
    nu = n * u
    if nu >= 1.0:
        raise ValueError(f"n * u = {nu:g} >= 1: no bound exists for n = {n}")
    return nu / (1.0 - nu)


def bound_terms(dtype: str, n: int) -> tuple[float, float, float]:
    """``(coef, u_out, absolute)``: bound_ij = coef * (|A||B|)_ij + u_out * |Cref_ij| + absolute.

    For an inner product of length n, |C_gpu - C| <= (1 + u_out) gamma_n(u_acc) (|A||B|) + u_out |C|
    plus underflow. The float64 reference and |A||B| are within gamma_n(2**-53) of exact; that is
    folded into coef so the bound holds against the computed reference, not the exact product.
    """
    model = BOUND_MODELS[dtype]
    g_ref = gamma(n, unit_roundoff(REFERENCE_FORMAT))
    coef = (1.0 + model.u_out) * (gamma(n, model.u_acc) + g_ref) / (1.0 - g_ref)
    absolute = (1.0 + model.u_out) * n * model.eta_acc + model.eta_out
    return coef, model.u_out, absolute


def elementwise_bound(dtype: str, n: int, absprod: float, abs_ref: float) -> float:
    """The bound on |C_gpu_ij - Cref_ij| given (|A||B|)_ij and |Cref_ij|."""
    coef, u_out, absolute = bound_terms(dtype, n)
    return coef * absprod + u_out * abs_ref + absolute


# -- the workload's JSON ------------------------------------------------------------------------


class WorkloadOutputError(ValueError):
    """The workload's stdout holds no usable JSON record."""


@dataclass(frozen=True)
class Element:
    """One element of C: where, what the GPU gave, what the reference says, and its bound."""

    row: int
    col: int
    got: float
    want: float
    abs_err: float
    absprod: float
    bound: float


@dataclass(frozen=True)
class DtypeResult:
    """One dtype's outcome: ``ok`` (computed and compared), ``skipped`` or ``error``."""

    dtype: str
    status: str
    size: int | None = None
    reason: str | None = None
    error: str | None = None
    kind: str | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    bound: float | None = None
    error_to_bound: float | None = None
    violations: int | None = None
    elements: int | None = None
    worst: Element | None = None
    tflops: float | None = None
    tflops_best: float | None = None
    seconds: float | None = None
    timing: str | None = None
    repeat_mismatches: int | None = None
    passed: bool | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """The device as the workload saw it: inside a container its index may differ from the host's."""

    kind: str
    index: int | None
    name: str
    uuid: str | None = None
    pci_bus_id: str | None = None
    capability: tuple[int, int] | None = None
    cuda_runtime: str | None = None

    @property
    def label(self) -> str:
        ident = ", ".join(x for x in (self.name, self.uuid) if x)
        where = f"GPU {self.index}" if self.kind == "cuda" else self.kind
        return f"{where} ({ident})" if ident else where


@dataclass(frozen=True)
class WorkloadReport:
    """The whole JSON record; ``error``/``kind`` are set when the run failed as a whole."""

    framework: str | None
    device: DeviceInfo | None
    results: tuple[DtypeResult, ...]
    error: str | None
    kind: str | None
    detail: str | None
    passed: bool | None
    raw: dict[str, Any]

    def result(self, dtype: str) -> DtypeResult | None:
        return next((r for r in self.results if r.dtype == dtype), None)


def _opt(d: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        raise WorkloadOutputError(f"{key!r} is {value!r}, not a number")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise WorkloadOutputError(f"{key!r} is {value!r}, not {getattr(kind, '__name__', kind)}")
    return value


def _element(d: Any) -> Element | None:
    if not isinstance(d, dict) or not d:
        return None
    try:
        return Element(
            row=int(d["row"]),
            col=int(d["col"]),
            got=float(d["got"]),
            want=float(d["want"]),
            abs_err=float(d["abs_err"]),
            absprod=float(d["absprod"]),
            bound=float(d["bound"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkloadOutputError(f"malformed worst element {d!r}: {exc}") from None


def _result(d: Any) -> DtypeResult:
    if not isinstance(d, dict) or not isinstance(d.get("dtype"), str) or not isinstance(d.get("status"), str):
        raise WorkloadOutputError(f"malformed result {d!r}")
    return DtypeResult(
        dtype=d["dtype"],
        status=d["status"],
        size=_opt(d, "size", int),
        reason=_opt(d, "reason", str),
        error=_opt(d, "error", str),
        kind=_opt(d, "kind", str),
        max_abs_err=_opt(d, "max_abs_err", float),
        max_rel_err=_opt(d, "max_rel_err", float),
        bound=_opt(d, "bound", float),
        error_to_bound=_opt(d, "error_to_bound", float),
        violations=_opt(d, "violations", int),
        elements=_opt(d, "elements", int),
        worst=_element(d.get("worst")),
        tflops=_opt(d, "tflops", float),
        tflops_best=_opt(d, "tflops_best", float),
        seconds=_opt(d, "seconds", float),
        timing=_opt(d, "timing", str),
        repeat_mismatches=_opt(d, "repeat_mismatches", int),
        passed=_opt(d, "passed", bool),
    )


def _device(d: Any) -> DeviceInfo | None:
    if not isinstance(d, dict):
        return None
    cap = d.get("capability")
    capability = (int(cap[0]), int(cap[1])) if isinstance(cap, list) and len(cap) == 2 else None
    index = d.get("index")
    return DeviceInfo(
        kind=str(d.get("kind", "cuda")),
        index=index if isinstance(index, int) else None,
        name=str(d.get("name") or ""),
        uuid=_opt(d, "uuid", str),
        pci_bus_id=_opt(d, "pci_bus_id", str),
        capability=capability,
        cuda_runtime=_opt(d, "cuda_runtime", str),
    )


def parse_report(stdout: str) -> WorkloadReport:
    """The workload's record: the last line of stdout that is a JSON object.

    Images may print banners before the script runs, so earlier lines are ignored.
    """
    from pytest_gpuhost.compute.runner import last_json_object

    raw = last_json_object(stdout)
    if raw is None:
        tail = stdout.strip()[-300:]
        raise WorkloadOutputError(f"no JSON record in the workload's output: {tail!r}")
    return report_from_record(raw)


def report_from_record(raw: dict[str, Any]) -> WorkloadReport:
    """The typed form of the workload's JSON record."""
    results = raw.get("results") or []
    if not isinstance(results, list):
        raise WorkloadOutputError(f"'results' is {results!r}, not a list")
    passed = raw.get("passed")
    return WorkloadReport(
        framework=_opt(raw, "framework", str),
        device=_device(raw.get("device")),
        results=tuple(_result(r) for r in results),
        error=_opt(raw, "error", str),
        kind=_opt(raw, "kind", str),
        detail=_opt(raw, "detail", str),
        passed=passed if isinstance(passed, bool) else None,
        raw=raw,
    )


# -- verdicts -------------------------------------------------------------------------------------


# A failure as the suite reports it: what was found, the likely cause, the fix.
Finding = Diagnosis


class Verdict(NamedTuple):
    ok: bool
    message: str


RMA_FIX = (
    "look for Xid and ECC events (`sudo dmesg | grep -i xid`, `nvidia-smi -q -d ECC,ROW_REMAPPER`), "
    "run the vendor diagnostic (`dcgmi diag -r 3`) and re-run this check; if the error repeats on this "
    "GPU, drain it and RMA it"
)
ERROR_KINDS: dict[str, tuple[str, str]] = {
    "driver-too-old": (
        "the image's CUDA runtime is newer than the host's NVIDIA driver supports",
        "upgrade the host driver to one whose `nvidia-smi` 'CUDA Version' is at least the image's CUDA "
        "version, or use an image built for an older CUDA",
    ),
    "no-driver": (
        "the container has no NVIDIA driver libraries (libcuda): the NVIDIA Container Toolkit did not "
        "inject them",
        "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`; with CDI, "
        "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
    ),
    "no-gpu": (
        "the container sees no GPU, or fewer than the index asked for",
        "check the container's GPU request (`--gpus`, NVIDIA_VISIBLE_DEVICES) and `nvidia-smi -L` inside it",
    ),
    "no-cuda-build": (
        "the image's PyTorch is a CPU-only build",
        "use a CUDA build of the workload image (--gpuhost-workload-image)",
    ),
    "no-framework": (
        "the workload image has neither PyTorch nor CuPy",
        "point --gpuhost-workload-image at an image with a CUDA build of PyTorch or CuPy",
    ),
    "fabric-manager": (
        "CUDA says 'system not yet initialized': on NVSwitch systems (HGX, DGX) the fabric manager is "
        "not running or failed to start",
        "`sudo systemctl enable --now nvidia-fabricmanager` (its version must equal the driver's); read "
        "`journalctl -u nvidia-fabricmanager`",
    ),
    "gpu-busy": (
        "the GPU is busy or unavailable: Exclusive_Process compute mode with another process on it",
        "`nvidia-smi -q -d COMPUTE`; `sudo nvidia-smi -i <index> -c DEFAULT`, or stop the other process",
    ),
    "unsupported-gpu": (
        "the image's framework has no kernels for this GPU's architecture",
        "use a workload image built for this GPU's compute capability (a newer CUDA and PyTorch)",
    ),
    "out-of-memory": (
        "not enough free GPU memory for a few matrices: other processes hold the GPU's memory",
        "find them with `nvidia-smi` and run the check on an idle GPU",
    ),
    "ecc-error": ("the GPU reported an uncorrectable ECC error", "reset the GPU or reboot; " + RMA_FIX),
    "gpu-fault": (
        "the GPU failed while computing (launch failure, illegal address, or it fell off the bus): a "
        "hardware, power, cooling or PCIe fault",
        "reset the GPU (`sudo nvidia-smi -r -i <index>`) or reboot; " + RMA_FIX,
    ),
    "cuda-error": ("CUDA reported an error", "read the message and `sudo dmesg | grep -i xid`, then re-run"),
    "fault-injection-refused": (
        "--inject-fault was given without GPUHOST_ALLOW_FAULT_INJECTION=1",
        "fault injection is for self-tests of the suite only; do not pass --inject-fault",
    ),
    "usage": ("the suite called the workload with an invalid command line", "a bug in the suite: report it"),
    "internal-error": (
        "the workload script crashed",
        "read the traceback on the workload's stderr and report it",
    ),
}


def explain_error(kind: str | None) -> tuple[str, str]:
    """``(cause, fix)`` for an error ``kind`` the workload reported."""
    return ERROR_KINDS.get(kind or "", ERROR_KINDS["cuda-error"])


def report_finding(report: WorkloadReport, gpu_label: str) -> Finding | None:
    """The whole run's error (before or during the dtypes), or None if the run completed."""
    if report.error is None:
        return None
    cause, fix = explain_error(report.kind)
    detail = f" ({report.detail})" if report.detail else ""
    return Finding(f"{gpu_label}: the matmul workload failed: {report.error}{detail}", cause, fix)


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def diagnose(result: DtypeResult, gpu_label: str) -> Finding | None:
    """None when the dtype passed (or was skipped), else a Finding that names GPU, dtype and element."""
    what = f"{gpu_label}: {result.dtype} matmul"
    if result.status == "skipped":
        return None
    if result.status == "error":
        cause, fix = explain_error(result.kind)
        return Finding(f"{what} failed: {result.error}", cause, fix)
    if result.status != "ok":
        return Finding(f"{what}: unknown status {result.status!r}", "a stale workload script", "report it")
    worst, n = result.worst, result.size
    if worst is None or n is None or result.violations is None or result.elements is None:
        return Finding(f"{what}: the record lacks the comparison", "a stale workload script", "report it")
    expected = elementwise_bound(result.dtype, n, worst.absprod, abs(worst.want))
    if not math.isclose(expected, worst.bound, rel_tol=1e-9, abs_tol=0.0):
        return Finding(
            f"{what}: the workload's bound {worst.bound!r} at C[{worst.row},{worst.col}] differs from the "
            f"suite's {expected!r}",
            "workloads/matmul.py and pytest_gpuhost/compute/numerics.py disagree on the error bound",
            "mount the matmul.py shipped with this version of pytest-gpuhost",
        )
    shape = f"{n}x{n}"
    element = (
        f"C[{worst.row},{worst.col}] = {worst.got!r}, expected {worst.want!r} ± {worst.bound:.3g} "
        f"(error {worst.abs_err:.3g})"
    )
    wrong = (
        result.violations > 0
        or not _finite(worst.got, result.error_to_bound)
        or abs(worst.got - worst.want) > worst.bound
    )
    if wrong:
        count = f"{result.violations} of {result.elements} elements exceed their bound"
        if not _finite(worst.got):
            cause = "the GPU produced NaN or infinity from finite inputs in [-1, 1]: a hardware fault"
        elif result.violations <= ISOLATED_FAULTS:
            cause = "isolated wrong elements: a fault in the GPU's memory or in one of its compute units"
        else:
            cause = (
                "widespread error beyond rounding: the GPU computes at a lower precision than asked "
                "(NVIDIA_TF32_OVERRIDE=1 in the image turns float32 into TF32) or it is faulty"
            )
        return Finding(f"{what} ({shape}) is wrong: {element}; {count}", cause, RMA_FIX)
    mismatches = result.repeat_mismatches or 0
    if mismatches and result.timing == "cuda-events":
        return Finding(
            f"{what} ({shape}): identical inputs gave a different C in {mismatches} of the timed repeats",
            "cuBLAS is bitwise reproducible on one GPU, so differing results point at a flaky GPU",
            RMA_FIX,
        )
    return None


def evaluate(result: DtypeResult, gpu_label: str) -> Verdict:
    """(ok, message): the message says why on failure, and what was measured on success."""
    finding = diagnose(result, gpu_label)
    if finding is not None:
        return Verdict(False, str(finding))
    if result.status == "skipped":
        return Verdict(True, f"{gpu_label}: {result.dtype} skipped: {result.reason}")
    share = f"{result.error_to_bound:.2%}" if result.error_to_bound is not None else "?"
    speed = f", {result.tflops:.3g} TFLOP/s" if result.tflops is not None else ""
    return Verdict(
        True, f"{gpu_label}: {result.dtype} max error {result.max_abs_err:.3g}, {share} of its bound{speed}"
    )


def perf_finding(
    tflops: float | None, expected_tflops: float, tolerance: float, label: str = ""
) -> str | None:
    """A warning when a correct GPU reaches less than ``tolerance`` of ``expected_tflops``, else None.

    ``tolerance`` has the meaning of a profile's ``tflops_tolerance``: the fraction of the
    datasheet peak that a healthy GPU reaches in this short matmul (``Profile.min_tflops``).
    """
    if expected_tflops <= 0 or not 0 < tolerance <= 1:
        raise ValueError(f"expected_tflops={expected_tflops}, tolerance={tolerance}: need > 0 and (0, 1]")
    if tflops is None or not math.isfinite(tflops):
        return None
    fraction = tflops / expected_tflops
    if fraction >= tolerance:
        return None
    prefix = f"{label}: " if label else ""
    return (
        f"{prefix}computes correctly but at {fraction:.0%} of the expected {expected_tflops:g} TFLOP/s "
        f"({tflops:.3g} TFLOP/s; a healthy GPU reaches {tolerance:.0%}): stuck at low clocks? Read the "
        "throttle reasons with `nvidia-smi -q -d PERFORMANCE,CLOCK,POWER` (power cap, thermal or HW "
        "slowdown), check cooling and the power limit, and that no other process shares the GPU"
    )
