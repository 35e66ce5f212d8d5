"""The one JSON line a workload script answers with, and nothing else on its stdout.

The host side reads a workload container's stdout as that line, so nothing else may reach it:
C libraries (NCCL, cuBLAS) write to fd 1, and PyTorch prints warnings. A ``ReportLine`` keeps a
copy of the real stdout for the line and points fd 1 and ``sys.stdout`` at stderr for the rest of
the process. Like its siblings, this file is copied into the container beside the scripts.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any


class ReportLine:
    """The report a workload fills in while it runs, sent as one line when it ends."""

    def __init__(self, workload: str, **fields: Any) -> None:
        self.started = time.perf_counter()
        self._out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self.report: dict[str, Any] = {"workload": workload, "version": 1, "framework": None, **fields}

    def crashed(self, exc: BaseException, kind: str = "internal-error") -> None:
        """An exception the workload did not expect: its traceback on stderr, its words in the report."""
        traceback.print_exc()
        self.report.update(error=f"{type(exc).__name__}: {exc}", kind=kind)

    def send(self) -> None:
        """Write the report, with the workload's wall time, as the one line of stdout."""
        self.report["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        self._out.write(json.dumps(self.report) + "\n")
        self._out.close()

    def discard(self) -> None:
        """End without a line (``--help``: argparse's text is the answer)."""
        self._out.close()
