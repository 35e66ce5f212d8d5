"""The burn's numerics and sizing: pure functions of the dtype and matrix size, imported by the unit tests."""

from __future__ import annotations

import argparse
import math

N_MAX = 16384  # larger GEMMs draw no more power; this one is ~12 ms on an H100


N_STEP = 256


SIGMAS = 8.0  # tolerance in standard deviations of the (over-estimated) rounding noise


# Column sums in float64 straight from C cost about 13 % of a 16384 bf16 GEMM on an H200; summing
# blocks of 256 rows in float32 first, then the n/256 partial sums in float64, costs about 2 %.
BLOCK_ROWS = 256


REFERENCE_ROWS = 512  # rows of C computed in float64 to estimate each column's norm


BATCH_TARGET_S = 0.1  # GEMMs are enqueued in batches of about this long; bounds the stop latency


BATCH_MAX = 256


UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}


ITEM_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def pick_dtype(capability: tuple[int, int] | None, backend: str = "torch") -> str:
    """The fastest input type whose GEMM runs on tensor cores: bf16 from sm_80, fp16 from sm_70.

    CuPy gets float32 unless asked: its half-precision GEMM may accumulate in half precision,
    which the tolerance model below does not cover.
    """
    if backend == "cupy" or capability is None:
        return "float32"
    if capability >= (8, 0):
        return "bfloat16"
    if capability >= (7, 0):
        return "float16"
    return "float32"


def tolerance_scale(n: int, out_dtype: str) -> float:
    """Per-column tolerance divided by the column's 2-norm of the exact product.

    Rounding C to the output type adds at most u_out |c| per element, roughly uniform, so the
    column sum's error has a standard deviation of at most u_out ||c_j|| / sqrt(3). Float32
    accumulation over n terms adds per element at most about n u32 / 4 relative to |c| even with
    the truncating accumulators of tensor cores (a deliberate over-estimate: measured deviations
    are far smaller). SIGMAS such deviations make a false alarm in 10^11 column checks negligible.
    """
    u_out = UNIT_ROUNDOFF[out_dtype]
    u_acc = UNIT_ROUNDOFF["float32"]
    # The column sums add blocks of BLOCK_ROWS elements in float32 before float64: the same
    # per-element bound again, over BLOCK_ROWS terms instead of n.
    return SIGMAS * (u_out / math.sqrt(3.0) + (n + block_rows(n)) * u_acc / 4.0)


def block_rows(n: int) -> int:
    """Rows per float32 partial column sum; 1 (no blocking) when n is not a multiple."""
    return BLOCK_ROWS if n % BLOCK_ROWS == 0 else 1


def pick_size(
    free_bytes: int,
    mem_fraction: float,
    max_bytes: int,
    in_dtype: str,
    out_dtype: str,
    n_max: int = N_MAX,
) -> tuple[int, int]:
    """The GEMM order n (a multiple of 256) and how many output buffers to rotate through.

    A and B plus at least one output must fit in the budget with 10 % to spare for the
    reference computation; further outputs fill the budget (bounded by 64), so the burn also
    cycles through more of the memory.
    """
    budget = min(int(free_bytes * mem_fraction), max_bytes) * 0.9
    in_b, out_b = ITEM_BYTES[in_dtype], ITEM_BYTES[out_dtype]
    n = n_max - n_max % N_STEP
    while n > N_STEP and (2 * in_b + out_b) * n * n > budget:
        n -= N_STEP
    if (2 * in_b + out_b) * n * n > budget:
        raise MemoryError(f"{budget / 2**30:.2f} GiB of GPU memory is not enough for a {n}x{n} GEMM")
    buffers = int((budget - 2 * in_b * n * n) // (out_b * n * n))
    return n, max(1, min(buffers, 64))


def gemm_flops(n: int) -> float:
    return 2.0 * n * n * n


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a NaN or infinite deviation (itself an error) is written as null."""
    return value if math.isfinite(value) else None


def parse_gpus(text: str) -> list[int] | None:
    """``all`` is None; otherwise a comma list of CUDA device indices."""
    if text.strip() == "all":
        return None
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give 'all' or indices such as 0,1") from None
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give distinct indices such as 0,1")
    return gpus
