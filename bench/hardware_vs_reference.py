"""The hardware tier's measurements against reference tools on the same machine, in one run.

For the GPU machine, not CI. Per GPU: our ``workloads/memory.py`` (HBM copy, pinned H2D and D2H,
and the pattern test's rate) and ``bench/copy_reference.cu``, plain ``cudaMemcpy`` copies of the
same sizes, compiled here with nvcc at run time. With two GPUs or more and ``--nccl-tests`` (a
built ``all_reduce_perf``), our ``workloads/allreduce.py`` against nccl-tests' bus bandwidth; with
one GPU that comparison is skipped and says so. Prints a table of ratios ours / reference; the
goal is >= 0.95 for every bandwidth and >= 1 TB/s of memory pattern-tested per GPU (allocated
bytes x patterns run / pattern seconds), with the engine that ran the patterns (the NVRTC
kernels, or torch and why) and each pattern's rate; ``--compare-torch-patterns`` runs the torch
engine too.

    /opt/torch/.venv/bin/python3 bench/hardware_vs_reference.py [--gpu 0] [--nccl-tests PATH]
        [--compare-torch-patterns]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ROOT / "pytest_gpuhost" / "workloads"
REFERENCE_SOURCE = Path(__file__).resolve().parent / "copy_reference.cu"
GOAL_RATIO = 0.95
GOAL_PATTERN_TBPS = 1.0
D2D_BYTES, PCIE_BYTES = 2**30, 2**28  # the sizes memory.py uses by default


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/local/cuda*/bin/nvcc")) + sorted(
        glob.glob("/opt/torch/.venv/lib/python3*/site-packages/nvidia/cu*/bin/nvcc")
    )
    return candidates[0] if candidates else None


def run_json(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            value: dict[str, Any] = json.loads(line)
            return value
    return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}"}


def ours(python: str, gpu: int, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    return run_json([python, str(WORKLOADS / "memory.py"), "--gpu-index", "0", *extra], 300, env)


def pattern_rate(pat: dict[str, Any]) -> tuple[float, int, float]:
    """(TB/s of memory tested, patterns run, seconds): allocated bytes x patterns / pattern seconds."""
    runs = len(pat.get("results") or [])
    seconds = float(pat.get("seconds") or 0)
    tested = float(pat.get("allocated_bytes") or 0) * runs
    return (tested / seconds / 1e12 if seconds else 0.0), runs, seconds


def engine_text(pat: dict[str, Any]) -> str:
    """Which engine ran the patterns, with its compile and load times or why the kernels were not used."""
    engine = str(pat.get("engine") or "unknown (an older memory.py)")
    detail = pat.get("engine_detail") or {}
    if detail:
        return (
            f"{engine} (NVRTC {detail.get('nvrtc')}, {detail.get('arch')}, compile {detail.get('compile_seconds')} s, "
            f"load {detail.get('load_seconds')} s, self-test {detail.get('self_test_seconds')} s)"
        )
    return f"{engine} ({pat['engine_reason']})" if pat.get("engine_reason") else engine


def print_patterns(label: str, pat: dict[str, Any]) -> float:
    rate, runs, seconds = pattern_rate(pat)
    verdict = "ok" if rate >= GOAL_PATTERN_TBPS else "BELOW GOAL"
    print(
        f"{label}: {pat.get('allocated_bytes', 0) / 2**30:.1f} GiB x {runs} patterns in {seconds:.2f} s = "
        f"{rate:.2f} TB/s tested (goal {GOAL_PATTERN_TBPS} TB/s: {verdict}); engine {engine_text(pat)}"
    )
    allocated = float(pat.get("allocated_bytes") or 0)
    for result in pat.get("results") or []:
        each = float(result.get("seconds") or 0)
        print(
            f"  {result.get('pattern'):12} {each * 1e3:8.1f} ms {allocated / each / 1e12 if each else 0:6.2f} TB/s "
            f"mismatches {result.get('mismatches')}"
        )
    return rate


def reference(gpu: int, workdir: Path) -> dict[str, Any]:
    nvcc = find_nvcc()
    if nvcc is None:
        return {"skipped": "no nvcc on this machine"}
    binary = workdir / "copy_reference"
    build = subprocess.run(
        [nvcc, "-O2", "-o", str(binary), str(REFERENCE_SOURCE)], capture_output=True, text=True, check=False
    )
    if build.returncode != 0:
        return {"skipped": f"nvcc failed: {build.stderr.strip()[-300:]}"}
    return run_json([str(binary), str(gpu), str(D2D_BYTES), str(PCIE_BYTES)], 120)


def nccl_tests(binary: str | None, gpus: int) -> dict[int, float]:
    """Bus bandwidth (out-of-place) per size in bytes from ``all_reduce_perf -g N``."""
    if binary is None:
        return {}
    argv = [binary, "-b", str(2**28), "-e", str(2**32), "-f", "4", "-g", str(gpus)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    rows: dict[int, float] = {}
    for line in proc.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[0].isdigit() and re.fullmatch(r"[0-9.]+", cols[7]):
            rows[int(cols[0])] = float(cols[7])  # size count type redop root time algbw busbw
    return rows


def ratio(mine: Any, theirs: Any) -> str:
    if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)) or theirs <= 0:
        return "n/a"
    value = mine / theirs
    return f"{value:.3f} {'ok' if value >= GOAL_RATIO else 'BELOW GOAL'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--python", default=sys.executable, help="a python with CUDA PyTorch")
    parser.add_argument("--nccl-tests", default=None, help="all_reduce_perf, for >= 2 GPUs")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs for the all-reduce comparison")
    parser.add_argument(
        "--compare-torch-patterns",
        action="store_true",
        help="also run the pattern test on its torch engine and print the speed-up",
    )
    args = parser.parse_args(argv)
    mine = ours(args.python, args.gpu)
    with tempfile.TemporaryDirectory(prefix="gpuhost-bench-") as folder:
        ref = reference(args.gpu, Path(folder))
    print(json.dumps({"ours": mine, "reference": ref}))
    if "error" in mine:
        print(f"our workload failed: {mine['error']}")
        return 1
    hbm, pcie, pat = mine.get("hbm", {}), mine.get("pcie", {}), mine.get("patterns", {})
    rows = [
        ("HBM D2D copy (read+write) GB/s", hbm.get("gbps"), ref.get("d2d_gbps")),
        ("pinned H2D GB/s", pcie.get("h2d", {}).get("gbps"), ref.get("h2d_gbps")),
        ("pinned D2H GB/s", pcie.get("d2h", {}).get("gbps"), ref.get("d2h_gbps")),
    ]
    print(f"{'measure':34} {'ours':>10} {'reference':>10}  ratio")
    for name, a, b in rows:
        a_text = f"{a:10.1f}" if isinstance(a, (int, float)) else f"{'n/a':>10}"
        b_text = f"{b:10.1f}" if isinstance(b, (int, float)) else f"{'n/a':>10}"
        print(f"{name:34} {a_text} {b_text}  {ratio(a, b)}")
    if "skipped" in ref:
        print(f"reference copies skipped: {ref['skipped']}")
    rate = print_patterns("pattern test", pat)
    if args.compare_torch_patterns:
        torch_run = ours(args.python, args.gpu, "--checks", "patterns", "--pattern-engine", "torch")
        if "error" in torch_run:
            print(f"pattern test on the torch engine failed: {torch_run['error']}")
        else:
            torch_rate = print_patterns("pattern test, torch engine", torch_run.get("patterns", {}))
            if torch_rate > 0:
                print(f"pattern test speed-up over the torch engine: {rate / torch_rate:.2f}x")
    if args.gpus < 2:
        print("all-reduce vs nccl-tests: skipped (one GPU: an all-reduce needs two or more)")
        return 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(args.gpus))}
    ar = run_json([args.python, str(WORKLOADS / "allreduce.py"), "--ranks", str(args.gpus)], 400, env)
    theirs = nccl_tests(args.nccl_tests, args.gpus)
    for size in ar.get("sizes") or []:
        ref_bw = theirs.get(int(size["bytes"]))
        print(
            f"all-reduce {int(size['bytes']) // 2**20:5d} MiB busbw: ours {size.get('busbw_gbps') or 0:.1f} GB/s, "
            f"nccl-tests {ref_bw if ref_bw is not None else 'n/a'}  ratio {ratio(size.get('busbw_gbps'), ref_bw)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
