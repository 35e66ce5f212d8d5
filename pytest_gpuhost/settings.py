"""The resolved options of one ``--gpuhost`` run.

Apart from ``options.py`` because building this dataclass costs milliseconds at import, and the
plugin entry point must cost nothing in pytest sessions that do not ask for the suite.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_gpuhost.options import FAULT_SWITCH, OPTIONS, TIERS, UsageError, raw_value

if TYPE_CHECKING:
    import pytest

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``2h`` to seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"--gpuhost-burn {text!r}: give a duration such as 60s, 5m or 2h")
    scale = {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    return float(match.group(1)) * scale


@dataclass(frozen=True)
class Settings:
    """The resolved options of one run."""

    expect_gpus: int | None
    tier: str
    gpus: str
    timeout: float
    image: str
    gpu_access: str
    pull: str
    compose: str | None
    workload_image: str | None
    volume: tuple[str, ...]
    env: tuple[str, ...]
    python: str
    burn_seconds: float | None
    burn_on: str
    temp_limit: float
    mig: str | None
    profile: tuple[str, ...]
    json: str | None
    save_baseline: str | None
    baseline: str | None
    matmul_size: int
    inject_fault: tuple[str, ...]
    dockerfile: str | None
    prometheus: str | None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        values = {spec.dest.removeprefix("gpuhost_"): raw_value(config, spec) for spec in OPTIONS}
        burn = values.pop("burn")
        burn_seconds = parse_duration(burn) if burn else None
        tier = values.pop("tier")
        if burn_seconds is not None:
            tier = "burn"
        elif tier == "burn":
            burn_seconds = 60.0
        expect = values["expect_gpus"]
        if expect is not None and expect < 0:
            raise UsageError("--gpuhost-expect-gpus must be 0 or more")
        if values["timeout"] <= 0:
            raise UsageError("--gpuhost-timeout must be positive")
        if not 16 <= values["matmul_size"] <= 8192:
            raise UsageError("--gpuhost-matmul-size must be between 16 and 8192")
        if values["inject_fault"] and os.environ.get(FAULT_SWITCH) != "1":
            # A test-only switch: a normal run can never corrupt results by accident.
            raise UsageError(f"--gpuhost-inject-fault is for testing the suite; it needs {FAULT_SWITCH}=1")
        return cls(tier=tier, burn_seconds=burn_seconds, **values)

    def tier_rank(self) -> int:
        return TIERS.index(self.tier)
