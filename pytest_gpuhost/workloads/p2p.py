#!/usr/bin/env python3
"""GPU pairs: peer access, P2P copy bandwidth one way and both ways at once, and the data copied.

Standalone like ``matmul.py`` (the standard library and the image's PyTorch). The container sees
every selected GPU; ``--pairs 0:1,0:2,...`` names pairs by the container's device indices. Per
pair: ``torch.cuda.can_device_access_peer`` both ways; ``--iters`` copies of ``--bytes`` from the
first GPU to the second (one way), then copies in both directions on one stream per GPU (both
ways: bytes moved in both directions over the time); wall clock around synchronized batches,
which for copies of 256 MiB is exact to well under a percent. The copied buffer is compared with
its source. One JSON object on stdout. ``--device cpu`` runs the same code on CPU tensors (tests).

Exit status: 0 ok, 1 a pair without peer access or with changed data, 2 usage, 3 no torch, 4 CUDA.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

try:  # imported as part of the package (the unit tests, the host side)
    from .report_line import ReportLine
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from report_line import ReportLine  # type: ignore[no-redef, import-not-found, unused-ignore]


def timed(sync: Any, call: Any, iters: int) -> float:
    call()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    sync()
    return (time.perf_counter() - start) / iters


def measure_pair(torch: Any, a: int, b: int, nbytes: int, iters: int, on_gpu: bool) -> dict[str, Any]:
    words = nbytes // 4
    dev_a = torch.device("cuda", a) if on_gpu else torch.device("cpu")
    dev_b = torch.device("cuda", b) if on_gpu else torch.device("cpu")
    record: dict[str, Any] = {"pair": [a, b], "bytes": words * 4}
    if on_gpu:
        record["peer"] = bool(
            torch.cuda.can_device_access_peer(a, b) and torch.cuda.can_device_access_peer(b, a)
        )
    else:
        record["peer"] = True
    src_a = torch.arange(words, dtype=torch.int32, device=dev_a)
    dst_b = torch.empty(words, dtype=torch.int32, device=dev_b)
    src_b = torch.arange(words, dtype=torch.int32, device=dev_b).neg_()
    dst_a = torch.empty(words, dtype=torch.int32, device=dev_a)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(a)
            torch.cuda.synchronize(b)

    one = timed(sync, lambda: dst_b.copy_(src_a, non_blocking=True), iters)
    if on_gpu:
        s_a, s_b = torch.cuda.Stream(device=dev_a), torch.cuda.Stream(device=dev_b)

        def both() -> None:
            with torch.cuda.stream(s_a):
                dst_b.copy_(src_a, non_blocking=True)
            with torch.cuda.stream(s_b):
                dst_a.copy_(src_b, non_blocking=True)

        def sync_both() -> None:
            s_a.synchronize()
            s_b.synchronize()

        two = timed(sync_both, both, iters)
    else:
        two = timed(sync, lambda: (dst_b.copy_(src_a), dst_a.copy_(src_b)), iters)
    record["oneway_gbps"] = words * 4 / one / 1e9 if one > 0 else None
    record["bothway_gbps"] = 2 * words * 4 / two / 1e9 if two > 0 else None
    record["data_ok"] = bool(torch.equal(dst_b.to(dev_a), src_a) and torch.equal(dst_a.to(dev_b), src_b))
    return record


def main(argv: list[str] | None = None) -> int:
    line = ReportLine("p2p", pairs=[])
    report = line.report
    code = 0
    try:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
        parser.add_argument("--pairs", required=True, help="comma list of A:B device indices")
        parser.add_argument("--bytes", type=int, default=2**28)
        parser.add_argument("--iters", type=int, default=10)
        parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
        args = parser.parse_args(argv)
        pairs = [tuple(int(v) for v in p.split(":")) for p in str(args.pairs).split(",") if p]
        if not pairs or any(len(p) != 2 or p[0] == p[1] for p in pairs):
            raise SystemExit("--pairs: A:B with A != B, comma separated")
        import torch  # type: ignore[import-not-found, unused-ignore]

        report["framework"] = f"torch {torch.__version__}"
        on_gpu = args.device == "cuda"
        if on_gpu:
            report["visible_devices"] = int(torch.cuda.device_count())
            report["uuids"] = [
                str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
            ]
        for a, b in pairs:
            record = measure_pair(torch, a, b, args.bytes, args.iters, on_gpu)
            report["pairs"].append(record)
            if not record["peer"] or not record["data_ok"]:
                code = 1
    except SystemExit as exc:
        report.update(error=str(exc.code), kind="usage")
        code = 2
    except ImportError as exc:
        report.update(error=f"torch: {exc}", kind="no-framework")
        code = 3
    except Exception as exc:
        line.crashed(exc, kind="cuda-error")
        code = 4
    line.send()
    return code


if __name__ == "__main__":
    sys.exit(main())
