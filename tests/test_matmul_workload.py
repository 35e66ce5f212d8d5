"""The matmul workload script, run as the suite runs it (a subprocess) on the CPU, and in-process.

``--device cpu`` runs the same code as on a GPU with PyTorch's CPU kernels, so the numerics, the
JSON record, fault injection and the error paths are tested without a GPU. Sizes are small to
keep this file to a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pytester_support import GpuhostPytester
from workload_support import load_workload

from pytest_gpuhost.compute import numerics
from pytest_gpuhost.fixtures.workloads import MATMUL_DTYPES
from pytest_gpuhost.workloads import matmul_frameworks

SCRIPT = Path(__file__).resolve().parent.parent / "pytest_gpuhost" / "workloads" / "matmul.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (CPU build) is not installed")
SIZE = 256
# One corrupted element per dtype, each at its own place.
FAULTS = {
    "float64": (3, 5),
    "float32": (17, 250),
    "tf32": (255, 0),
    "bfloat16": (100, 100),
    "float16": (0, 255),
}


@dataclass(frozen=True)
class Run:
    code: int
    report: dict[str, Any]
    stderr: str


def run_script(*args: str, env: dict[str, str] | None = None) -> Run:
    """Run matmul.py as the suite does; stdout must be exactly one JSON line."""
    base = {k: v for k, v in os.environ.items() if k != "GPUHOST_ALLOW_FAULT_INJECTION"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=base | (env or {}),
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout is not one JSON line: {proc.stdout!r}\nstderr: {proc.stderr}"
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    return Run(proc.returncode, report, proc.stderr)


def load_script() -> ModuleType:
    return load_workload("matmul")


@pytest.fixture(scope="module")
def clean_run() -> Run:
    return run_script("--device", "cpu", "--size", str(SIZE), "--repeats", "2")


@pytest.fixture(scope="module")
def fault_run() -> Run:
    faults = [f"--inject-fault={dtype}:{row}:{col}" for dtype, (row, col) in FAULTS.items()]
    return run_script(
        "--device",
        "cpu",
        "--size",
        str(SIZE),
        "--repeats",
        "1",
        *faults,
        env={"GPUHOST_ALLOW_FAULT_INJECTION": "1"},
    )


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


# -- a clean run ----------------------------------------------------------------------------------


@needs_torch
def test_every_dtype_is_within_its_bound(clean_run: Run) -> None:
    assert clean_run.code == 0, clean_run.report
    assert clean_run.report["passed"] is True
    parsed = numerics.parse_report(json.dumps(clean_run.report))
    assert [r.dtype for r in parsed.results] == list(numerics.DTYPES)
    for result in parsed.results:
        assert result.status == "ok", result
        assert result.violations == 0
        assert result.error_to_bound is not None and 0 <= result.error_to_bound <= 1
        assert result.max_abs_err is not None and result.worst is not None
        assert result.max_abs_err <= result.worst.bound or result.max_abs_err < 1e-3
        ok, message = numerics.evaluate(result, "cpu")
        assert ok, message


@needs_torch
def test_low_precision_dtypes_really_ran_in_low_precision(clean_run: Run) -> None:
    """A float64 computation mislabelled bfloat16 would pass its bound; the error size gives it away."""
    err = {r["dtype"]: r["max_abs_err"] for r in clean_run.report["results"]}
    # inner products of length 256 with entries in [-1, 1]: |C| ~ 5, so one ulp of the result is
    # ~2**-5 in bfloat16, ~2**-8 in float16 and ~2**-21 in float32
    assert err["bfloat16"] > 2**-8
    assert 2**-12 < err["float16"] < err["bfloat16"]
    assert 0 < err["float32"] < 2**-12
    assert err["float64"] < 1e-12


@needs_torch
def test_record_shape(clean_run: Run) -> None:
    report = clean_run.report
    assert report["framework"].startswith("torch ")
    assert report["device"]["kind"] == "cpu"
    assert re.fullmatch(r"[0-9a-f]{32}", report["inputs_digest"])
    for r in report["results"]:
        assert r["elements"] == SIZE * SIZE
        assert r["timing"] == "cpu-wall-clock"
        assert r["seconds"] > 0 and r["tflops"] > 0
        worst = r["worst"]
        assert 0 <= worst["row"] < SIZE and 0 <= worst["col"] < SIZE
        assert abs(abs(worst["got"] - worst["want"]) - worst["abs_err"]) <= 1e-12 * max(
            1.0, abs(worst["want"])
        )
        # uniform inputs in [-1, 1]: (|A||B|)_ij is about SIZE / 4
        assert SIZE / 8 < worst["absprod"] < SIZE / 2


@needs_torch
def test_reported_bound_is_the_suites_bound(clean_run: Run) -> None:
    for r in clean_run.report["results"]:
        worst = r["worst"]
        expected = numerics.elementwise_bound(r["dtype"], SIZE, worst["absprod"], abs(worst["want"]))
        assert worst["bound"] == pytest.approx(expected, rel=1e-12)


# -- fault injection ------------------------------------------------------------------------------


@needs_torch
def test_injected_fault_fails_and_names_dtype_and_element(fault_run: Run) -> None:
    assert fault_run.code == 1
    assert fault_run.report["passed"] is False
    assert len(fault_run.report["fault_injection"]) == len(FAULTS)
    parsed = numerics.parse_report(json.dumps(fault_run.report))
    for result in parsed.results:
        row, col = FAULTS[result.dtype]
        assert result.violations == 1, result
        assert result.worst is not None and (result.worst.row, result.worst.col) == (row, col)
        assert result.error_to_bound is not None and result.error_to_bound > 1
        ok, message = numerics.evaluate(result, "GPU 3 (NVIDIA H100)")
        assert not ok
        assert "GPU 3 (NVIDIA H100)" in message and result.dtype in message
        assert f"C[{row},{col}]" in message
        assert "1 of 65536 elements" in message


@needs_torch
def test_inputs_are_reproducible_from_the_seed(clean_run: Run, fault_run: Run) -> None:
    assert fault_run.report["inputs_digest"] == clean_run.report["inputs_digest"]
    other = run_script("--device", "cpu", "--size", str(SIZE), "--dtypes", "float32", "--seed", "99")
    assert other.code == 0
    assert other.report["inputs_digest"] != clean_run.report["inputs_digest"]


def test_fault_injection_is_refused_without_the_switch() -> None:
    for env in ({}, {"GPUHOST_ALLOW_FAULT_INJECTION": "0"}, {"GPUHOST_ALLOW_FAULT_INJECTION": "yes"}):
        run = run_script("--device", "cpu", "--size", "64", "--inject-fault", "float32:0:0", env=env)
        assert run.code == 2
        assert run.report["kind"] == "fault-injection-refused"
        assert "GPUHOST_ALLOW_FAULT_INJECTION=1" in run.report["error"]
        assert not run.report.get("results")


def test_bad_command_lines_are_usage_errors() -> None:
    switch = {"GPUHOST_ALLOW_FAULT_INJECTION": "1"}
    for args, env in (
        (["--dtypes", "float8"], None),
        (["--size", "100000"], None),
        (["--repeats", "0"], None),
        (["--inject-fault", "float32:0"], switch),
        (["--inject-fault", "float32:64:0"], switch),
        (["--dtypes", "float64", "--inject-fault", "float32:0:0"], switch),
    ):
        run = run_script("--device", "cpu", "--size", "64", *args, env=env)  # a later --size wins
        assert run.code == 2, args
        assert run.report["kind"] == "usage", args


# -- errors become JSON ---------------------------------------------------------------------------


def test_no_framework_is_a_json_error(tmp_path: Path) -> None:
    """torch and cupy stubs that refuse to import shadow any installed ones via PYTHONPATH."""
    for name in ("torch", "cupy"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('no {name} in this image')\n")
    run = run_script("--size", "64", env={"PYTHONPATH": str(tmp_path)})
    assert run.code == 3
    assert run.report["error"] == "neither torch nor cupy"
    assert run.report["kind"] == "no-framework"
    assert (
        "no torch in this image" in run.report["detail"] and "no cupy in this image" in run.report["detail"]
    )
    finding = numerics.report_finding(numerics.parse_report(json.dumps(run.report)), "GPU 0")
    assert finding is not None and "CuPy" in finding.fix


@needs_torch
def test_missing_cuda_is_a_json_error_not_a_traceback() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the run would succeed")
    run = run_script("--size", "64", "--dtypes", "float32")
    assert run.code == 4
    assert run.report["kind"] in {"no-cuda-build", "no-driver", "no-gpu", "driver-too-old", "cuda-error"}
    assert run.report["error"]
    assert "Traceback" not in run.stderr


# -- in-process: the pieces -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("CUDA driver version is insufficient for CUDA runtime version", "driver-too-old"),
        ("The NVIDIA driver on your system is too old (found version 11040).", "driver-too-old"),
        ("Found no NVIDIA driver on your system.", "no-driver"),
        ("CUDA error: no CUDA-capable device is detected", "no-gpu"),
        ("CUDA error: invalid device ordinal", "no-gpu"),
        ("CUDA error: system not yet initialized", "fabric-manager"),
        ("CUDA-capable device(s) is/are busy or unavailable", "gpu-busy"),
        ("CUDA error: no kernel image is available for execution on the device", "unsupported-gpu"),
        ("CUDA out of memory. Tried to allocate 128.00 MiB", "out-of-memory"),
        ("CUDA error: uncorrectable ECC error encountered", "ecc-error"),
        ("CUDA error: unspecified launch failure", "gpu-fault"),
        ("CUDA error: an illegal memory access was encountered", "gpu-fault"),
        ("Torch not compiled with CUDA enabled", "no-cuda-build"),
        ("CUBLAS_STATUS_EXECUTION_FAILED", "cuda-error"),
    ],
)
def test_cuda_errors_are_classified(script: ModuleType, message: str, kind: str) -> None:
    assert script.classify_error(message) == kind
    assert kind in numerics.ERROR_KINDS


def test_every_kind_the_script_reports_has_a_diagnosis() -> None:
    source = SCRIPT.read_text() + SCRIPT.with_name("matmul_frameworks.py").read_text()
    kinds = set(re.findall(r'WorkloadError\(\s*"([a-z-]+)"', source))
    kinds |= set(re.findall(r'\("([a-z-]+)", \("', source))  # classify_error's table
    kinds |= set(re.findall(r'kind="([a-z-]+)"', source))
    assert {"no-framework", "fault-injection-refused", "driver-too-old", "internal-error"} <= kinds
    assert kinds <= set(numerics.ERROR_KINDS), kinds - set(numerics.ERROR_KINDS)


def _round_to_bits(x: float, bits: int) -> float:
    """Round-to-nearest-even of a float32 value to ``bits`` explicit mantissa bits, in pure Python."""
    (word,) = struct.unpack("<I", struct.pack("<f", x))
    drop = 23 - bits
    low, word = word & ((1 << drop) - 1), word >> drop
    half = 1 << (drop - 1)
    if low > half or (low == half and word & 1):
        word += 1
    (value,) = struct.unpack("<f", struct.pack("<I", word << drop))
    return float(value)


@needs_torch
def test_inputs_are_rounded_to_each_dtypes_grid(script: ModuleType) -> None:
    import torch

    fw = matmul_frameworks.TorchFramework(torch, "cpu", 0)
    a, b = fw.inputs(64, 7)
    a2, _ = fw.inputs(64, 7)
    assert torch.equal(a, a2) and not torch.equal(a, b)
    assert float(a.abs().max()) <= 1.0 and a.dtype == torch.float64
    flat = a.reshape(-1).tolist()
    for dtype, bits in (("tf32", 10), ("bfloat16", 7)):
        rounded = fw.rounded(a, dtype).reshape(-1).tolist()
        for x, r in zip(flat, rounded, strict=True):
            x32 = struct.unpack("<f", struct.pack("<f", x))[0]
            assert r == _round_to_bits(x32, bits), (dtype, x)
    for x, r in zip(flat, fw.rounded(a, "float16").reshape(-1).tolist(), strict=True):
        assert r == struct.unpack("<e", struct.pack("<e", r))[0]  # on the float16 grid
        # nearest, up to torch's double rounding through float32 at exact float32 ties
        assert abs(r - x) <= 2**-11 * abs(x) * (1 + 2**-12) + 2**-25, x
    assert fw.rounded(a, "float64") is a


def test_tf32_rounding_ties_go_to_even() -> None:
    # 1 + 2**-11 lies halfway between 1 and 1 + 2**-10: to even is 1; 1 + 3 * 2**-11 goes up
    assert _round_to_bits(1 + 2**-11, 10) == 1.0
    assert _round_to_bits(1 + 3 * 2**-11, 10) == 1 + 2**-9
    rng = random.Random(5)
    for _ in range(200):
        x = rng.uniform(-1, 1)
        r = _round_to_bits(x, 10)
        assert abs(r - x) <= 2**-11 * abs(x) + 2**-40


def test_script_and_suite_share_one_bound(script: ModuleType) -> None:
    for dtype in numerics.DTYPES:
        ours, theirs = numerics.BOUND_MODELS[dtype], script.BOUND_MODELS[dtype]
        assert (ours.u_acc, ours.u_out, ours.eta_acc, ours.eta_out) == (
            theirs.u_acc,
            theirs.u_out,
            theirs.eta_acc,
            theirs.eta_out,
        ), dtype
        for n in (2, 256, 4096, 8192):
            assert script.bound_terms(dtype, n) == numerics.bound_terms(dtype, n)
    assert script.DTYPES == numerics.DTYPES


@needs_torch
def test_nan_from_the_gpu_is_a_violation_not_a_pass(script: ModuleType) -> None:
    """NaN compares false with everything: the comparison must count it, not skip it."""
    import torch

    fw = matmul_frameworks.TorchFramework(torch, "cpu", 0)
    a, b = fw.inputs(600, 3)  # more rows than one comparison block
    got = a @ b
    got[550, 7] = math.nan
    got[20, 30] = math.inf
    result = script.compare(fw, a, b, got, "float32")
    assert result["violations"] == 2
    assert result["error_to_bound"] == math.inf and result["max_abs_err"] == math.inf
    assert (result["worst"]["row"], result["worst"]["col"]) in {(550, 7), (20, 30)}
    clean = script.compare(fw, a, b, a @ b, "float32")
    assert clean["violations"] == 0 and clean["error_to_bound"] <= 1e-6


# -- the shipped compute check against a recorded run ---------------------------------------------

RECORDED_MATMUL_CONFTEST = """
import json

import pytest

from pytest_gpuhost.docker.containers import ContainerResult
from pytest_gpuhost.compute.runner import WorkloadOutcome


class _Recorded:
    def get(self, gpu):
        text = open({path!r}).read()
        return WorkloadOutcome(json.loads(text), ContainerResult(0, text, "", False, 1.0), None)


@pytest.fixture(scope="session")
def gpuhost_matmul():
    return _Recorded()
"""


@needs_torch
def test_the_shipped_compute_check_judges_every_dtype_of_a_recorded_run(
    clean_run: Run, gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    """The check's dtype names and the script's are one list: each dtype is judged, none missing."""
    recorded = tmp_path / "matmul-record.json"
    recorded.write_text(json.dumps(clean_run.report))
    gpuhost_pytester.setup("h100", extra_conftest=RECORDED_MATMUL_CONFTEST.format(path=str(recorded)))
    result = gpuhost_pytester.run_plain(
        "--gpuhost-tier", "container", "-k", "test_matmul_matches_cpu_reference"
    )
    outcomes = result.parseoutcomes()
    judged = outcomes.get("passed", 0) + outcomes.get("skipped", 0)
    assert judged == len(MATMUL_DTYPES) and not outcomes.get("failed"), result.stdout.str()
    assert outcomes.get("passed", 0) >= 3, result.stdout.str()
    assert "reported nothing" not in result.stdout.str()
