#!/usr/bin/env python3
"""GEMM burn that verifies every product completely and cheaply: one worker thread per GPU.

Standalone on purpose: the plugin copies this folder into a container and runs this script with the
image's own ``python3`` (or runs it on the host), so it needs only the standard library and PyTorch,
or CuPy as a fallback, and it must run on Python 3.8 and later. It never imports pytest_gpuhost; its
parts are siblings in this folder (``burn_numerics``, ``burn_engines``, ``burn_guard``, ``burn_output``).

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
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

try:  # imported as part of the package (the unit tests, the host side)
    from .burn_output import Output, StopFlag
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from burn_output import Output, StopFlag  # type: ignore[no-redef, import-not-found, unused-ignore]

try:  # imported as part of the package (the unit tests, the host side)
    from .burn_engines import CupyEngine, TorchEngine, load_backend
    from .burn_guard import start_thermal_guard
    from .burn_numerics import (
        BATCH_MAX,
        BATCH_TARGET_S,
        ITEM_BYTES,
        N_STEP,
        finite_or_none,
        gemm_flops,
        parse_gpus,
        pick_dtype,
        pick_size,
    )
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from burn_engines import CupyEngine, TorchEngine, load_backend  # type: ignore[no-redef, import-not-found, unused-ignore]
    from burn_guard import start_thermal_guard  # type: ignore[no-redef, import-not-found, unused-ignore]
    from burn_numerics import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        BATCH_MAX,
        BATCH_TARGET_S,
        ITEM_BYTES,
        N_STEP,
        finite_or_none,
        gemm_flops,
        parse_gpus,
        pick_dtype,
        pick_size,
    )

FAULT_ENV = "GPUHOST_ALLOW_FAULT_INJECTION"
EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_NO_BACKEND, EXIT_WORKER, EXIT_GUARD = 0, 1, 2, 3, 4, 5

JOIN_GRACE_S = 10.0  # a worker stuck in the driver this long after the stop is reported as hung
SETUP_TIMEOUT_S = 300.0  # CUDA start-up, allocation and the reference: a worker still there is hung


# --- the run -------------------------------------------------------------------------------------


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
    if hasattr(signal, "pthread_sigmask"):  # a mask inherited from whoever started us survives exec
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


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
