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

# A GPU's own slowdown and shutdown temperatures lie within this range: a limit outside it is a typo.
TEMP_LIMIT_RANGE = (30.0, 105.0)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``2h`` to seconds."""
    match = _DURATION.match(text)
    if not match:
        sign = "a duration cannot be negative; " if text.strip().startswith("-") else ""
        raise UsageError(f"--gpuhost-burn {text!r}: {sign}give a duration such as 60s, 5m or 2h")
    scale = {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    seconds = float(match.group(1)) * scale
    if seconds <= 0:
        raise UsageError(
            f"--gpuhost-burn {text!r}: a burn must last more than 0 s; give a duration such as 60s"
        )
    return seconds


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
    advisories: str | None = None
    advisories_max_age: float = 90.0  # options.DEFAULT_ADVISORIES_MAX_AGE
    daemon_reload: str = "no"
    registry: str | None = None
    pull_timeout: float = 1800.0
    pull_stall: float = 120.0
    # False: --gpuhost-image was not given, and the session chooses the image for the driver.
    image_explicit: bool = True
    hardware_passes: int = 1
    hardware_fault: tuple[str, ...] = ()
    prometheus: str | None = None

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
        if values["advisories_max_age"] <= 0:
            raise UsageError("--gpuhost-advisories-max-age must be positive")
        low, high = TEMP_LIMIT_RANGE
        if not low <= values["temp_limit"] <= high:
            raise UsageError(
                f"--gpuhost-temp-limit {values['temp_limit']:g}: give a limit between {low:g} and {high:g} °C"
            )
        if not values["gpus"].replace(",", "").strip():
            raise UsageError(
                f"--gpuhost-gpus {values['gpus']!r}: give 'all' or a comma list of indices or UUIDs"
            )
        if values["inject_fault"] and os.environ.get(FAULT_SWITCH) != "1":
            # A test-only switch: a normal run can never corrupt results by accident.
            raise UsageError(f"--gpuhost-inject-fault is for testing the suite; it needs {FAULT_SWITCH}=1")
        if values["pull_timeout"] <= 0 or values["pull_stall"] <= 0:
            raise UsageError("--gpuhost-pull-timeout and --gpuhost-pull-stall must be positive")
        if values["hardware_passes"] < 1:
            raise UsageError("--gpuhost-hardware-passes must be at least 1")
        if values["hardware_fault"] and os.environ.get(FAULT_SWITCH) != "1":
            raise UsageError(f"--gpuhost-hardware-fault is for testing the suite; it needs {FAULT_SWITCH}=1")
        explicit = config.getoption("gpuhost_image", default=None) is not None or bool(
            config.getini("gpuhost_image")
        )
        return cls(tier=tier, burn_seconds=burn_seconds, image_explicit=explicit, **values)

    def tier_rank(self) -> int:
        return TIERS.index(self.tier)
