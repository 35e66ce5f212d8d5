#!/usr/bin/env python3
"""All-reduce across the container's GPUs: one process per GPU, bus bandwidth, and exact results.

Standalone like ``matmul.py``: the standard library and the image's PyTorch only. The parent
spawns one process per rank (``torch.distributed``, NCCL on GPUs, gloo on the CPU for unit tests),
rendezvous through a file store, gathers each rank's findings and prints one JSON object.

Per size: a few warm-up reductions, then ``--iters`` timed with CUDA events; the slowest rank's
time is the operation's time; algbw = bytes / time, busbw = algbw x 2 (n - 1) / n (nccl-tests'
definition). Then the buffer is refilled and reduced once more and checked exactly: rank r holds
(r + 1) x (i mod 251 + 1) at element i, so every element of the sum is n (n + 1) / 2 x (i mod 251
+ 1), an integer float32 holds exactly. nccl-tests checks speed; this also checks the values.

Exit status: 0 ok, 1 wrong values, 2 usage, 3 no torch, 4 a rank failed or hung.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from typing import Any

try:  # imported as part of the package (the unit tests, the host side)
    from .report_line import ReportLine
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from report_line import ReportLine  # type: ignore[no-redef, import-not-found, unused-ignore]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_FRAMEWORK, EXIT_DEVICE = 0, 1, 2, 3, 4
FAULT_SWITCH = "GPUHOST_ALLOW_FAULT_INJECTION"
PERIOD = 251  # the input pattern's period (a prime: no alignment with power-of-two chunks)
CHECK_WORDS = 32 * 2**20  # the exact check walks the result in chunks of this many elements
WRONG_ELEMENT = 12345


def expected_value(index: int, ranks: int) -> float:
    """The reduced value at ``index``: sum over r of (r + 1) (index mod PERIOD + 1)."""
    return ranks * (ranks + 1) / 2 * (index % PERIOD + 1)


def fill(torch: Any, x: Any, rank: int) -> None:
    n = int(x.numel())
    for lo in range(0, n, CHECK_WORDS):
        hi = min(n, lo + CHECK_WORDS)
        idx = torch.arange(lo, hi, device=x.device, dtype=torch.int64)
        x[lo:hi] = ((idx % PERIOD) + 1).to(x.dtype) * float(rank + 1)


def count_wrong(torch: Any, x: Any, ranks: int) -> tuple[int, list[dict[str, Any]]]:
    """Elements that differ from the exact sum, and the first few of them."""
    n = int(x.numel())
    total, first = 0, []  # type: tuple[int, list[dict[str, Any]]]
    scale = ranks * (ranks + 1) / 2
    for lo in range(0, n, CHECK_WORDS):
        hi = min(n, lo + CHECK_WORDS)
        idx = torch.arange(lo, hi, device=x.device, dtype=torch.int64)
        want = ((idx % PERIOD) + 1).to(x.dtype) * scale
        bad = x[lo:hi] != want
        count = int(bad.sum())
        if count:
            total += count
            for i in bad.nonzero().flatten()[: 8 - len(first)].tolist():
                first.append(
                    {"index": lo + int(i), "got": float(x[lo + int(i)]), "want": float(want[int(i)])}
                )
    return total, first


def rank_main(rank: int, args: argparse.Namespace, store: str, queue: Any) -> None:
    result: dict[str, Any] = {"rank": rank}
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
        import torch.distributed as dist  # type: ignore[import-not-found, unused-ignore]

        if args.backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
            props = torch.cuda.get_device_properties(rank)
            uuid = getattr(props, "uuid", None)
            result["uuid"] = (
                None if uuid is None else (str(uuid) if str(uuid).startswith("GPU-") else f"GPU-{uuid}")
            )
        else:
            device = torch.device("cpu")
        dist.init_process_group(args.backend, init_method=f"file://{store}", rank=rank, world_size=args.ranks)
        sizes = []
        for nbytes in args.sizes:
            x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
            fill(torch, x, rank)
            for _ in range(2):
                dist.all_reduce(x)
            seconds = timed(torch, dist, x, args.iters, args.backend == "nccl")
            fill(torch, x, rank)
            dist.all_reduce(x)
            if args.wrong_rank == rank:  # an injected fault: one wrong element on one rank
                x[WRONG_ELEMENT % x.numel()] += 1.0
            wrong, first = count_wrong(torch, x, args.ranks)
            sizes.append({"bytes": nbytes, "seconds": seconds, "wrong": wrong, "first": first})
            del x
        result["sizes"] = sizes
        dist.destroy_process_group()
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    queue.put(result)


def timed(torch: Any, dist: Any, x: Any, iters: int, cuda: bool) -> float:
    """Seconds per all-reduce on the slowest rank."""
    dist.barrier()
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            dist.all_reduce(x)
        end.record()
        end.synchronize()
        mine = float(start.elapsed_time(end)) / 1000.0 / iters
    else:
        t = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        mine = (time.perf_counter() - t) / iters
    slowest = torch.tensor([mine], dtype=torch.float64, device=x.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest.item())


def run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    import multiprocessing as mp

    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        report.update(error=f"torch: {exc}", kind="no-framework")
        return EXIT_NO_FRAMEWORK
    report["framework"] = f"torch {torch.__version__}"
    if args.backend == "nccl":
        visible = int(torch.cuda.device_count())
        if args.ranks > visible:
            report.update(error=f"{args.ranks} ranks but {visible} GPU(s) visible", kind="no-gpu")
            return EXIT_DEVICE
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="gpuhost-allreduce-") as folder:
        store = os.path.join(folder, "store")
        procs = [ctx.Process(target=rank_main, args=(r, args, store, queue)) for r in range(args.ranks)]
        for p in procs:
            p.start()
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + args.timeout
        while len(results) < args.ranks and time.monotonic() < deadline:
            try:
                results.append(queue.get(timeout=1.0))
            except Exception:
                if all(not p.is_alive() for p in procs) and queue.empty():
                    break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    results.sort(key=lambda r: int(r["rank"]))
    report["ranks"] = results
    errors = [r for r in results if "error" in r]
    if errors or len(results) < args.ranks:
        missing = args.ranks - len(results)
        text = errors[0]["error"] if errors else f"{missing} rank(s) gave no result in {args.timeout:g} s"
        report.update(error=text, kind="rank-failed" if errors else "hang")
        return EXIT_DEVICE
    report["sizes"] = [
        {
            "bytes": s["bytes"],
            "seconds": s["seconds"],
            "algbw_gbps": s["bytes"] / s["seconds"] / 1e9 if s["seconds"] > 0 else None,
            "busbw_gbps": s["bytes"] / s["seconds"] / 1e9 * 2 * (args.ranks - 1) / args.ranks
            if s["seconds"] > 0
            else None,
            "wrong": {str(r["rank"]): r["sizes"][i]["wrong"] for r in results if r["sizes"][i]["wrong"]},
            "first": next((r["sizes"][i]["first"] for r in results if r["sizes"][i]["first"]), []),
        }
        for i, s in enumerate(results[0]["sizes"])
    ]
    return EXIT_MISMATCH if any(s["wrong"] for s in report["sizes"]) else EXIT_OK


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ranks", type=int, required=True, help="processes, one per visible GPU")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default="nccl", help="gloo: CPU unit tests")
    parser.add_argument("--sizes", default=f"{2**28},{2**30},{2**32}", help="comma list of bytes")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--inject-wrong", type=int, default=None, metavar="RANK")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(v) for v in str(args.sizes).split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--sizes {args.sizes!r}: bytes, comma separated") from None
    if args.ranks < 1 or args.iters < 1 or not args.sizes or any(s < 4 * PERIOD or s % 4 for s in args.sizes):
        raise SystemExit("--ranks and --iters >= 1; each size a multiple of 4 bytes, at least 1004")
    if args.inject_wrong is not None and os.environ.get(FAULT_SWITCH) != "1":
        raise SystemExit(f"--inject-wrong corrupts a result on purpose; it needs {FAULT_SWITCH}=1")
    args.wrong_rank = args.inject_wrong
    return args


def main(argv: list[str] | None = None) -> int:
    line = ReportLine("allreduce")
    report = line.report
    try:
        args = parse_args(argv)
        report.update(ranks_asked=args.ranks, backend=args.backend, iters=args.iters)
        if args.wrong_rank is not None:
            report["fault_injection"] = {"wrong_rank": args.wrong_rank, "element": WRONG_ELEMENT}
        code = run(args, report)
    except SystemExit as exc:
        report.update(error=str(exc.code), kind="usage")
        code = EXIT_USAGE
    except BaseException as exc:
        line.crashed(exc)
        code = EXIT_DEVICE
    line.send()
    return code


if __name__ == "__main__":
    sys.exit(main())
