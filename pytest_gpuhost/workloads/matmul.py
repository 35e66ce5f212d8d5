#!/usr/bin/env python3
"""Compute verification: one GPU's matrix multiply against a float64 CPU reference.

Standalone on purpose: this folder is copied into a container and the script run by the image's
own ``python3``, so it imports only the standard library, the image's PyTorch (else CuPy with
numpy) and its sibling ``matmul_frameworks``, never ``pytest_gpuhost``. It prints exactly one JSON object on stdout; diagnostics go to
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
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .matmul_frameworks import Framework

try:  # imported as part of the package (the unit tests, the host side)
    from .report_line import ReportLine
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from report_line import ReportLine  # type: ignore[no-redef, import-not-found, unused-ignore]

try:  # imported as part of the package (the unit tests, the host side)
    from .matmul_frameworks import (
        WorkloadError,
        _median_timing,
        classify_error,
        load_framework,
    )
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from matmul_frameworks import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        WorkloadError,
        _median_timing,
        classify_error,
        load_framework,
    )

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_FRAMEWORK, EXIT_DEVICE, EXIT_BUG = 0, 1, 2, 3, 4, 5
FAULT_SWITCH = "GPUHOST_ALLOW_FAULT_INJECTION"
DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16")
ALIASES = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32"}
ALIASES.update({"bf16": "bfloat16", "fp16": "float16", "half": "float16"})
MAX_SIZE = 8192  # the float64 CPU reference grows as n**3: 8192 already takes minutes on few cores
CHUNK_ROWS = 512  # the comparison walks C in row blocks to keep host memory near 5 n**2 doubles


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
    line = ReportLine("matmul", device=None)  # from here on, everything else goes to stderr
    report = line.report
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
            line.discard()
            return EXIT_OK
    except BaseException as exc:
        line.crashed(exc)
    if "results" in report and code in (EXIT_OK, EXIT_MISMATCH):
        report["passed"] = code == EXIT_OK
    line.send()
    return code


if __name__ == "__main__":
    sys.exit(main())
