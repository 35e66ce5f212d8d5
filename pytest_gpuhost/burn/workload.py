"""The burn workload's command line and its JSON-lines output, typed.

The workload (``pytest_gpuhost/workloads/burn.py``) is a standalone script; this module is the
host side's only knowledge of its interface, so both change together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULT_ENV = "GPUHOST_ALLOW_FAULT_INJECTION"
EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_WORKER, EXIT_GUARD = 0, 1, 2, 3, 4, 5


def script_path() -> Path:
    """The workload script, to mount read-only into a container or to run on the host."""
    return Path(__file__).resolve().parent.parent / "workloads" / "burn.py"


def command(
    seconds: float,
    gpus: Sequence[int] | None = None,
    *,
    python: str = "python3",
    script: str | Path | None = None,
    dtype: str = "auto",
    stop_file: str | Path | None = None,
    verify: bool = True,
    mem_fraction: float | None = None,
    temp_limit: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """argv for the workload. ``gpus`` are CUDA indices as the workload's process sees them
    (inside a container usually 0..k-1); None means all it can see."""
    argv = [python, str(script or script_path()), "--seconds", f"{seconds:g}"]
    argv += ["--gpus", ",".join(str(g) for g in gpus) if gpus is not None else "all"]
    if dtype != "auto":
        argv += ["--dtype", dtype]
    if stop_file is not None:
        argv += ["--stop-file", str(stop_file)]
    if not verify:
        argv.append("--no-verify")
    if mem_fraction is not None:
        argv += ["--mem-fraction", f"{mem_fraction:g}"]
    if temp_limit is not None:
        argv += ["--temp-limit", f"{temp_limit:g}"]
    return argv + list(extra)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class WorkloadStart:
    """A worker's ``"start": true`` record: what it burns with."""

    gpu: int
    backend: str = ""
    device: str = ""
    uuid: str | None = None
    n: int = 0
    dtype: str = ""
    out_dtype: str = ""
    buffers: int = 0
    mem_gib: float = 0.0
    setup_seconds: float = 0.0


@dataclass(frozen=True)
class WorkloadProgress:
    """A progress record, about once a second per GPU."""

    gpu: int
    t: float
    iters: int
    errors: int | None
    tflops: float
    max_err_ratio: float | None = None


@dataclass(frozen=True)
class WorkloadResult:
    """A worker's final ``"done": true`` record. ``errors`` is None when it did not verify."""

    gpu: int
    iters: int
    errors: int | None
    tflops: float
    seconds: float = 0.0
    gemm_seconds: float = 0.0
    verify_seconds: float = 0.0
    max_err_ratio: float | None = None
    verified: bool = True
    stopped: str = ""
    error: str | None = None

    @property
    def verify_cost(self) -> float | None:
        """Verification time as a fraction of GEMM time, from the device's own timers."""
        if not self.verified or self.gemm_seconds <= 0:
            return None
        return self.verify_seconds / self.gemm_seconds


Record = WorkloadStart | WorkloadProgress | WorkloadResult


def parse_line(line: str) -> Record | str | None:
    """One output line: a typed record, an error message (str), or None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    gpu = _int(data.get("gpu"))
    if gpu is None:
        return str(data["error"]) if "error" in data else None
    if data.get("done") is True:
        return WorkloadResult(
            gpu=gpu,
            iters=_int(data.get("iters")) or 0,
            errors=_int(data.get("errors")),
            tflops=_float(data.get("tflops")) or 0.0,
            seconds=_float(data.get("seconds")) or 0.0,
            gemm_seconds=_float(data.get("gemm_seconds")) or 0.0,
            verify_seconds=_float(data.get("verify_seconds")) or 0.0,
            max_err_ratio=_float(data.get("max_err_ratio")),
            verified=data.get("verified") is not False,
            stopped=str(data.get("stopped", "")),
            error=str(data["error"]) if data.get("error") else None,
        )
    if data.get("start") is True:
        return WorkloadStart(
            gpu=gpu,
            backend=str(data.get("backend", "")),
            device=str(data.get("device", "")),
            uuid=str(data["uuid"]) if data.get("uuid") else None,
            n=_int(data.get("n")) or 0,
            dtype=str(data.get("dtype", "")),
            out_dtype=str(data.get("out_dtype", "")),
            buffers=_int(data.get("buffers")) or 0,
            mem_gib=_float(data.get("mem_gib")) or 0.0,
            setup_seconds=_float(data.get("setup_seconds")) or 0.0,
        )
    if "error" in data:
        return f"GPU {gpu}: {data['error']}"
    t, iters = _float(data.get("t")), _int(data.get("iters"))
    if t is None or iters is None:
        return None
    return WorkloadProgress(
        gpu=gpu,
        t=t,
        iters=iters,
        errors=_int(data.get("errors")),
        tflops=_float(data.get("tflops")) or 0.0,
        max_err_ratio=_float(data.get("max_err_ratio")),
    )


def _thermal_guard(line: str) -> str | None:
    """The reason in the workload guard's ``{"thermal_guard": ...}`` record, if this is one."""
    if '"thermal_guard"' not in line:
        return None
    try:
        data = json.loads(line.strip())
    except ValueError:
        return None
    return str(data["thermal_guard"]) if isinstance(data, dict) and "thermal_guard" in data else None


@dataclass
class WorkloadLog:
    """Everything the workload printed, sorted by kind; feed it lines as they arrive."""

    starts: dict[int, WorkloadStart] = field(default_factory=dict)
    progress: dict[int, list[WorkloadProgress]] = field(default_factory=dict)
    results: dict[int, WorkloadResult] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    thermal_guard: str | None = None  # why the workload's own guard stopped it, if it did

    def feed(self, line: str) -> Record | str | None:
        tripped = _thermal_guard(line)
        if tripped is not None:
            self.thermal_guard = tripped
            return None
        record = parse_line(line)
        if isinstance(record, WorkloadResult):
            self.results[record.gpu] = record
        elif isinstance(record, WorkloadStart):
            self.starts[record.gpu] = record
        elif isinstance(record, WorkloadProgress):
            self.progress.setdefault(record.gpu, []).append(record)
        elif isinstance(record, str):
            self.errors.append(record)
        elif line.strip():
            self.other.append(line.rstrip("\n"))
        return record

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> WorkloadLog:
        log = cls()
        for line in lines:
            log.feed(line)
        return log

    def total_tflops(self) -> float:
        return math.fsum(result.tflops for result in self.results.values())
