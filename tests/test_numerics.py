"""pytest_gpuhost.compute.numerics: unit roundoffs, the elementwise bound, parsing the record, verdicts."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from pytest_gpuhost.compute import numerics
from pytest_gpuhost.compute.numerics import DtypeResult, Element


def f32(x: float) -> float:
    """Round to float32, to nearest even (what C's double-to-float conversion does)."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def f32_truncate(x: float) -> float:
    """Round to float32 toward zero, as tensor cores have been measured to accumulate."""
    r = f32(x)
    if abs(r) > abs(x):
        (word,) = struct.unpack("<I", struct.pack("<f", r))
        r = float(struct.unpack("<f", struct.pack("<I", word - 1))[0])  # one ulp toward zero
    return r


def accumulate(products: list[float], rounding: Callable[[float], float]) -> float:
    total = 0.0
    for p in products:
        total = rounding(total + p)  # total + p is exact in float64 for the values used here
    return total


# -- formats and the bound ------------------------------------------------------------------------


def test_unit_roundoff_is_half_an_ulp_of_one() -> None:
    for fmt, pack in (("float64", "<d"), ("float32", "<f"), ("float16", "<e")):
        u = numerics.unit_roundoff(fmt)

        def rt(x: float, pack: str = pack) -> float:
            return float(struct.unpack(pack, struct.pack(pack, x))[0])

        assert rt(1.0 + u) == 1.0, fmt  # a tie, to even
        assert rt(1.0 + 2 * u) == 1.0 + 2 * u, fmt  # the next representable number
    assert numerics.unit_roundoff("bfloat16") == 2.0**-8
    assert numerics.unit_roundoff("tf32") == 2.0**-11
    with pytest.raises(ValueError, match="unknown format"):
        numerics.unit_roundoff("float8")


def test_gamma() -> None:
    assert numerics.gamma(1000, 2.0**-24) == pytest.approx(1000 * 2.0**-24, rel=1e-4)
    assert numerics.gamma(10, 0.05) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        numerics.gamma(2**24, 2.0**-24)


def test_bound_grows_with_n_absprod_and_output_size() -> None:
    for dtype in numerics.DTYPES:
        b = numerics.elementwise_bound
        assert b(dtype, 4096, 1000.0, 10.0) > b(dtype, 256, 1000.0, 10.0) > 0
        assert b(dtype, 4096, 1000.0, 10.0) > b(dtype, 4096, 500.0, 10.0)
        grows_with_c = numerics.BOUND_MODELS[dtype].u_out > 0
        assert (b(dtype, 4096, 1000.0, 50.0) > b(dtype, 4096, 1000.0, 10.0)) == grows_with_c


def test_sixteen_bit_outputs_are_charged_one_rounding() -> None:
    for dtype in ("bfloat16", "float16"):
        u = numerics.unit_roundoff(dtype)
        # a bound for n = 1, |A||B| = 0 is the output rounding alone
        assert numerics.elementwise_bound(dtype, 1, 0.0, 100.0) == pytest.approx(100.0 * u, rel=1e-6)


def test_nearest_rounding_worst_case_stays_within_the_float32_bound() -> None:
    """1 + t + t + ...: every addition of t = half an ulp of 1 rounds back to 1 (ties to even)."""
    n, t = 4096, 2.0**-24
    products = [1.0] + [t] * (n - 1)
    exact = math.fsum(products)
    error = abs(accumulate(products, f32) - exact)
    bound = numerics.elementwise_bound("float32", n, exact, exact)
    assert error / bound > 0.99  # the bound is attained, not just loose
    assert error <= bound


def test_truncating_accumulation_needs_the_tensor_core_unit() -> None:
    """Truncation loses a whole ulp per addition: within the tf32/bf16/fp16 bound, twice float32's."""
    n, t = 4096, 2.0**-23 * (1 - 2.0**-10)
    products = [1.0] + [t] * (n - 1)
    exact = math.fsum(products)
    error = abs(accumulate(products, f32_truncate) - exact)
    for dtype in ("tf32", "bfloat16", "float16"):
        accumulation = (
            numerics.elementwise_bound(dtype, n, exact, exact) - numerics.BOUND_MODELS[dtype].u_out * exact
        )
        assert 0.99 < error / accumulation <= 1, dtype
    assert error > 1.9 * numerics.elementwise_bound("float32", n, exact, exact)


def test_bfloat16_output_rounding_worst_case_is_within_the_bound() -> None:
    want = 16.0 + 0.0624  # just below half an ulp (0.0625) above 16: rounds down to 16
    assert abs(16.0 - want) <= numerics.elementwise_bound("bfloat16", 1, want, want)


@pytest.mark.parametrize("dtype", numerics.DTYPES)
def test_a_one_unit_fault_is_detectable_at_size_4096(dtype: str) -> None:
    """Uniform inputs in [-1, 1], n = 4096: (|A||B|)_ij is 1024 +- 15 and |C_ij| is 21 on average.

    A correct GPU's error is at most its output rounding (which can reach u_out |C|) plus an
    accumulation error far below the worst case; +1.0 must exceed the bound on top of both, for
    any element with |C_ij| up to 64 (3 standard deviations).
    """
    n, absprod, c = 4096, 1110.0, 64.0
    bound = numerics.elementwise_bound(dtype, n, absprod, c)
    rounding = numerics.BOUND_MODELS[dtype].u_out * c / 2  # half an ulp, at most u |C|
    assert 1.0 - rounding - 0.05 > bound, (dtype, bound)


# -- the record -----------------------------------------------------------------------------------


def ok_record(**changes: Any) -> dict[str, Any]:
    n, absprod, want = 256, 64.0, 5.0
    bound = numerics.elementwise_bound("float32", n, absprod, want)
    record: dict[str, Any] = {
        "dtype": "float32",
        "size": n,
        "status": "ok",
        "repeats": 5,
        "repeat_mismatches": 0,
        "seconds": 0.004,
        "tflops": 50.5,
        "tflops_best": 51.0,
        "timing": "cuda-events",
        "max_abs_err": 2e-6,
        "max_rel_err": 3e-8,
        "bound": bound,
        "error_to_bound": 2e-6 / bound,
        "violations": 0,
        "elements": n * n,
        "worst": {
            "row": 12,
            "col": 34,
            "got": want + 2e-6,
            "want": want,
            "abs_err": 2e-6,
            "absprod": absprod,
            "bound": bound,
        },
        "passed": True,
    }
    return record | changes


def report_text(*results: dict[str, Any], **top: Any) -> str:
    device = {"kind": "cuda", "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-042f1913-aa"}
    device |= {"capability": [9, 0], "pci_bus_id": "0000:19:00.0", "cuda_runtime": "13.0"}
    record = {"workload": "matmul", "framework": "torch 2.11.0", "device": device, "results": list(results)}
    return json.dumps(record | top)


def test_parse_report_skips_banners_and_reads_the_last_record() -> None:
    text = "== PyTorch ==\nNVIDIA Release 25.01\n{not json\n" + report_text(ok_record()) + "\n"
    report = numerics.parse_report(text)
    assert report.framework == "torch 2.11.0"
    assert report.device is not None and report.device.capability == (9, 0)
    assert report.device.label == "GPU 0 (NVIDIA H100 80GB HBM3, GPU-042f1913-aa)"
    result = report.result("float32")
    assert result is not None and result.worst is not None
    assert (result.worst.row, result.worst.col, result.tflops) == (12, 34, 50.5)
    assert report.result("bfloat16") is None


def test_parse_report_reads_nan_and_infinity() -> None:
    worst = ok_record()["worst"] | {"got": math.nan, "abs_err": math.inf}
    report = numerics.parse_report(report_text(ok_record(worst=worst, max_abs_err=math.inf)))
    result = report.results[0]
    assert result.worst is not None and math.isnan(result.worst.got)
    assert result.max_abs_err == math.inf


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n",
        '{"results": "many"}',
        report_text({"status": "ok"}),
        report_text(ok_record(violations="none")),
        report_text(ok_record(worst={"row": 1})),
    ],
)
def test_parse_report_rejects_unusable_output(text: str) -> None:
    with pytest.raises(numerics.WorkloadOutputError):
        numerics.parse_report(text)


def test_parse_report_of_a_failed_run() -> None:
    text = report_text(
        error="CUDA driver version is insufficient for CUDA runtime version", kind="driver-too-old"
    )
    report = numerics.parse_report(text)
    assert report.kind == "driver-too-old" and not report.results
    finding = numerics.report_finding(report, "GPU 1")
    assert finding is not None
    assert "GPU 1" in finding.found and "insufficient" in finding.found
    assert "upgrade the host driver" in finding.fix
    assert numerics.report_finding(numerics.parse_report(report_text(ok_record())), "GPU 1") is None


# -- verdicts -------------------------------------------------------------------------------------


def parsed(record: dict[str, Any]) -> DtypeResult:
    return numerics.parse_report(report_text(record)).results[0]


def test_evaluate_passes_a_result_within_its_bound() -> None:
    ok, message = numerics.evaluate(parsed(ok_record()), "GPU 0")
    assert ok
    assert message.startswith("GPU 0: float32 max error 2e-06") and "50.5 TFLOP/s" in message


def test_evaluate_names_gpu_dtype_and_element_of_a_single_fault() -> None:
    result = parsed(ok_record())
    assert result.worst is not None
    worst = replace(result.worst, got=result.worst.want + 1.0, abs_err=1.0)
    ok, message = numerics.evaluate(
        replace(result, worst=worst, violations=1, error_to_bound=9.0), "GPU 2 (H100)"
    )
    assert not ok
    assert "GPU 2 (H100): float32 matmul (256x256) is wrong: C[12,34] = 6.0, expected 5.0" in message
    assert "1 of 65536 elements exceed their bound" in message
    assert "isolated wrong elements" in message and "RMA" in message


def test_evaluate_fails_even_if_the_count_was_lost() -> None:
    """The worst element is checked on the host too: a record saying 0 violations cannot hide it."""
    result = parsed(ok_record())
    assert result.worst is not None
    worst = replace(result.worst, got=result.worst.want + 1.0, abs_err=1.0)
    ok, _ = numerics.evaluate(replace(result, worst=worst), "GPU 0")
    assert not ok


def test_evaluate_explains_widespread_error_and_nan() -> None:
    many = parsed(ok_record(violations=40000, error_to_bound=3.0))
    ok, message = numerics.evaluate(many, "GPU 0")
    assert not ok and "NVIDIA_TF32_OVERRIDE" in message
    result = parsed(ok_record())
    assert result.worst is not None
    nan = replace(result, worst=replace(result.worst, got=math.nan), violations=1, error_to_bound=math.inf)
    ok, message = numerics.evaluate(nan, "GPU 0")
    assert not ok and "NaN" in message


def test_evaluate_rejects_a_stale_scripts_bound() -> None:
    result = parsed(ok_record())
    assert result.worst is not None
    stale = replace(result, worst=replace(result.worst, bound=result.worst.bound * 2))
    ok, message = numerics.evaluate(stale, "GPU 0")
    assert not ok and "disagree on the error bound" in message


def test_evaluate_repeat_mismatches_fail_on_gpus_only() -> None:
    ok, message = numerics.evaluate(parsed(ok_record(repeat_mismatches=2)), "GPU 0")
    assert not ok and "2 of the timed repeats" in message
    ok, _ = numerics.evaluate(parsed(ok_record(repeat_mismatches=2, timing="cpu-wall-clock")), "cpu")
    assert ok


def test_evaluate_skipped_and_error() -> None:
    skipped = DtypeResult(dtype="bfloat16", status="skipped", reason="needs compute capability 8.0")
    assert numerics.evaluate(skipped, "GPU 0") == (
        True,
        "GPU 0: bfloat16 skipped: needs compute capability 8.0",
    )
    error = DtypeResult(dtype="float16", status="error", error="float16 matmul: ECC error", kind="ecc-error")
    ok, message = numerics.evaluate(error, "GPU 5")
    assert not ok and "GPU 5: float16 matmul failed" in message and "ECC" in message
    assert numerics.evaluate(DtypeResult(dtype="float16", status="done"), "GPU 5").ok is False
    assert numerics.evaluate(DtypeResult(dtype="float16", status="ok"), "GPU 5").ok is False


def test_element_fields_round_trip() -> None:
    element = numerics.parse_report(report_text(ok_record())).results[0].worst
    bound = numerics.elementwise_bound("float32", 256, 64.0, 5.0)
    assert element == Element(row=12, col=34, got=5.000002, want=5.0, abs_err=2e-6, absprod=64.0, bound=bound)


def test_every_error_kind_has_cause_and_fix() -> None:
    for kind, (cause, fix) in numerics.ERROR_KINDS.items():
        assert cause and fix, kind
    assert numerics.explain_error("something-new") == numerics.ERROR_KINDS["cuda-error"]
    assert numerics.explain_error(None) == numerics.ERROR_KINDS["cuda-error"]


# -- performance ----------------------------------------------------------------------------------


def test_perf_finding_flags_a_slow_but_correct_gpu() -> None:
    message = numerics.perf_finding(287.0, 700.0, 0.5, label="GPU 4 bfloat16")
    assert message is not None
    assert message.startswith("GPU 4 bfloat16: computes correctly but at 41% of the expected 700 TFLOP/s")
    assert "a healthy GPU reaches 50%" in message and "low clocks" in message


def test_perf_finding_uses_the_profiles_meaning_of_tolerance() -> None:
    """tolerance is the fraction of the expected TFLOP/s to reach, like Profile.tflops_tolerance."""
    assert numerics.perf_finding(351.0, 700.0, 0.5) is None
    assert numerics.perf_finding(349.0, 700.0, 0.5) is not None
    assert numerics.perf_finding(250.0, 700.0, 0.3) is None
    assert numerics.perf_finding(900.0, 700.0, 1.0) is None
    assert numerics.perf_finding(None, 700.0, 0.5) is None


def test_perf_finding_rejects_nonsense_expectations() -> None:
    for expected, tolerance in ((0.0, 0.5), (700.0, 0.0), (700.0, 1.5)):
        with pytest.raises(ValueError):
            numerics.perf_finding(1.0, expected, tolerance)
