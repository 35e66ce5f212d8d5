"""The one clock of the reports: UTC, to the second, ISO 8601 (the JSON report and baselines agree)."""

from __future__ import annotations

from datetime import datetime, timezone


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
