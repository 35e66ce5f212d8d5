"""Baselines (guide step 4.2, periodic re-checks): what a host measured when it was accepted.

``--gpuhost-save-baseline FILE`` stores the versions (driver, CUDA, NVML, Docker, toolkit, kernel,
each GPU's name and UUID) and the measured figures (TFLOP/s, temperatures, power) of a run.
``--gpuhost-baseline FILE`` compares a later run with it: a changed version is reported as a
warning, a figure worse than the baseline by more than the GPU profile's tolerance fails the
check ``test_baseline_regressions``. Everything here is a pure function of report documents
(``report_json``), so fleets can also compare merged reports offline. See docs/baselines.md.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_gpuhost import __version__
from pytest_gpuhost.profiles import Profile, ProfileSet
from pytest_gpuhost.reporting.timestamps import now_iso

BASELINE_SCHEMA = "pytest-gpuhost/baseline/v1"
FindingKind = Literal["version-change", "regression", "improvement", "missing"]
FigureKind = Literal["performance", "temperature", "power"]
HOST_SCOPE = "host"  # the scope of a figure measured by a host-wide check

# Metrics printed by checks whose names say what they measure. Performance: more is better,
# the tolerance is a fraction. Temperature: less is better, the tolerance is in °C. Power under
# load: a drop beyond the tolerance (a fraction) means the GPU is being held back.
RULES: tuple[tuple[str, FigureKind], ...] = (
    ("*tflops*", "performance"),
    ("*gb_s*", "performance"),
    ("*gbps*", "performance"),
    ("*bandwidth*", "performance"),
    ("*temp*", "temperature"),
    ("*power*", "power"),
)
# Host-wide metrics that are versions (the check that prints them: test_docker_versions, ...).
VERSION_METRICS = re.compile(
    r"^(docker\.(engine|api|containerd|runc|init)|toolkit\.[\w.-]+|kernel(\.release)?)$"
)
INVENTORY_VERSIONS = ("driver", "cuda", "nvml", "kernel_module", "kernel")


class BaselineError(ValueError):
    """A baseline file that cannot be used."""


@dataclass(frozen=True)
class Finding:
    """One difference between a baseline and a run."""

    kind: FindingKind
    key: str  # "version/driver", "gpu0/test_matmul[dtype=float16]/matmul.tflops", ...
    old: Any
    new: Any
    message: str
    host: str

    @property
    def fails(self) -> bool:
        return self.kind == "regression"


def figure_kind(metric: str) -> FigureKind | None:
    """How a metric is compared, from its name; None: it is not a tracked figure."""
    name = metric.lower()
    for pattern, kind in RULES:
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


def figure_key(result: Mapping[str, Any], metric: str) -> str:
    """``scope/check/metric``: scope ``gpu<index>`` or ``host``; other parameters in brackets."""
    gpu = result.get("gpu")
    scope = f"gpu{gpu['index']}" if gpu else HOST_SCOPE
    params = result.get("params") or {}
    check = result.get("check") or result["nodeid"]
    if params:
        check += "[" + ",".join(f"{name}={value}" for name, value in sorted(params.items())) + "]"
    return f"{scope}/{check}/{metric}"


def split_key(key: str) -> tuple[str, str, str]:
    """``gpu0/test_x[dtype=a/b]/matmul.tflops`` to ``("gpu0", "test_x[dtype=a/b]", "matmul.tflops")``."""
    scope, _, rest = key.partition("/")
    check, _, metric = rest.rpartition("/")
    return scope, check, metric


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _host_versions(report: Mapping[str, Any], inventory: Mapping[str, Any]) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in INVENTORY_VERSIONS:
        if inventory.get(name) is not None:
            versions[name] = str(inventory[name])
    for gpu in inventory.get("gpus") or ():
        versions[f"gpu{gpu['index']}.name"] = str(gpu.get("name"))
        versions[f"gpu{gpu['index']}.uuid"] = str(gpu.get("uuid"))
    for result in report.get("results") or ():
        if result.get("host") != inventory["host"] or result.get("gpu"):
            continue
        for metric, value in (result.get("metrics") or {}).items():
            if VERSION_METRICS.match(metric) and value not in (None, "", "unknown"):
                versions[metric] = str(value)
    return versions


def _host_figures(report: Mapping[str, Any], host: str, outcomes: tuple[str, ...]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for result in report.get("results") or ():
        if result.get("host") != host or result.get("outcome") not in outcomes:
            continue
        for metric, value in (result.get("metrics") or {}).items():
            number = _number(value)
            if number is not None and figure_kind(metric) is not None:
                figures[figure_key(result, metric)] = number
    return figures


def make_baseline(report: Mapping[str, Any]) -> dict[str, Any]:
    """A baseline from a report: versions, and the figures of the checks that passed.

    Only passed checks give figures, so a failing burn's temperature never becomes the norm.
    """
    hosts = {}
    for inventory in report.get("hosts") or ():
        name = inventory["host"]
        hosts[name] = {
            "versions": _host_versions(report, inventory),
            "figures": _host_figures(report, name, ("passed",)),
        }
    return {
        "schema": BASELINE_SCHEMA,
        "plugin_version": __version__,
        "created": now_iso(),
        "report_created": report.get("created"),
        "hosts": hosts,
    }


def load_baseline(path: Path | str) -> dict[str, Any]:
    """A baseline file, checked to be one; raises BaselineError naming the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read the baseline {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BaselineError(f"the baseline {path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != BASELINE_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise BaselineError(
            f"{path} is not a pytest-gpuhost baseline: schema {found!r}, expected {BASELINE_SCHEMA!r}"
        )
    if not isinstance(document.get("hosts"), dict):
        raise BaselineError(f"the baseline {path} has no hosts table")
    problem = schema_problem(document)
    if problem:
        raise BaselineError(f"the baseline {path} does not follow its schema ({BASELINE_SCHEMA}): {problem}")
    return document


def baseline_schema_path() -> Path:
    """The JSON Schema of a baseline file (``schemas/baseline-v1.schema.json``)."""
    return Path(__file__).resolve().parent / "schemas" / "baseline-v1.schema.json"


FIGURE_KEY = re.compile(r"^[^/]+/.+/[^/]+$")


def schema_problem(document: Mapping[str, Any]) -> str | None:
    """The first place where ``document`` breaks ``baseline_schema_path()``, or None.

    Checked by hand: jsonschema is a test dependency only, and the tests hold the two to agree.
    """
    for field in ("plugin_version", "created", "report_created"):
        value = document.get(field)
        if value is not None and not isinstance(value, str):
            return f"{field} is {type(value).__name__}, expected a string"
    for host, entry in document["hosts"].items():
        if not isinstance(entry, dict):
            return f"hosts.{host} is {type(entry).__name__}, expected an object of versions and figures"
        versions = entry.get("versions", {})
        if not isinstance(versions, dict):
            return f"hosts.{host}.versions is {type(versions).__name__}, expected an object"
        for name, value in versions.items():
            if not isinstance(value, str):
                return f"hosts.{host}.versions.{name} is {type(value).__name__}, expected a string"
        figures = entry.get("figures", {})
        if not isinstance(figures, dict):
            return f"hosts.{host}.figures is {type(figures).__name__}, expected an object"
        for key, value in figures.items():
            if not FIGURE_KEY.match(key):
                return f"hosts.{host}.figures key {key!r} is not scope/check/metric"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"hosts.{host}.figures.{key} is {type(value).__name__}, expected a number"
    return None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _compare_figure(
    key: str, kind: FigureKind, old: float, new: float, tolerance: float, host: str
) -> Finding | None:
    if kind == "temperature":
        change = new - old
        detail = f"{_fmt(old)} -> {_fmt(new)} °C ({change:+.1f} °C, tolerance {_fmt(tolerance)} °C)"
        if change > tolerance:
            return Finding("regression", key, old, new, f"{key}: hotter than the baseline: {detail}", host)
        if change < -tolerance:
            return Finding("improvement", key, old, new, f"{key}: cooler than the baseline: {detail}", host)
        return None
    if old <= 0:
        return None
    ratio = new / old - 1.0
    detail = f"{_fmt(old)} -> {_fmt(new)} ({ratio:+.1%}, tolerance {tolerance:.0%})"
    if ratio < -tolerance:
        what = "slower than" if kind == "performance" else "less power under load than"
        return Finding("regression", key, old, new, f"{key}: {what} the baseline: {detail}", host)
    if ratio > tolerance and kind == "performance":
        return Finding("improvement", key, old, new, f"{key}: faster than the baseline: {detail}", host)
    return None


def _pairs(baseline: Mapping[str, Any], report: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """``(baseline host, report host)``: by name, or the only host of each when there is one."""
    old_hosts = list(baseline.get("hosts") or {})
    new_hosts = [inventory["host"] for inventory in report.get("hosts") or ()]
    if len(old_hosts) == 1 and len(new_hosts) == 1:
        return [(old_hosts[0], new_hosts[0])]
    return [(name, name if name in new_hosts else None) for name in old_hosts]


def compare(
    baseline: Mapping[str, Any], report: Mapping[str, Any], tolerance_for: Callable[[str], float]
) -> list[Finding]:
    """The differences between a baseline and a (possibly still running) run's report.

    ``tolerance_for(key)`` gets a figure's key (``gpu0/check/metric``) and returns how far it
    may move: a fraction for performance and power, degrees Celsius for temperatures.
    Figures are taken from passed and failed checks alike: a slow matmul that also failed is
    still slower. Versions absent from the run (a check not run at this tier) are not reported.
    """
    findings: list[Finding] = []
    inventories = {inventory["host"]: inventory for inventory in report.get("hosts") or ()}
    for old_host, new_host in _pairs(baseline, report):
        old = baseline["hosts"][old_host]
        if new_host is None:
            findings.append(
                Finding(
                    "missing",
                    "host",
                    old_host,
                    None,
                    f"host {old_host} is in the baseline but not in this run",
                    old_host,
                )
            )
            continue
        if new_host != old_host:
            findings.append(
                Finding(
                    "version-change",
                    "version/host",
                    old_host,
                    new_host,
                    f"the baseline was recorded on host {old_host!r}, this run is on {new_host!r}",
                    new_host,
                )
            )
        new_versions = _host_versions(report, inventories[new_host])
        for name, old_value in sorted((old.get("versions") or {}).items()):
            new_value = new_versions.get(name)
            if new_value is not None and new_value != old_value:
                findings.append(
                    Finding(
                        "version-change",
                        f"version/{name}",
                        old_value,
                        new_value,
                        f"{name} changed since the baseline: {old_value} -> {new_value}",
                        new_host,
                    )
                )
        new_figures = _host_figures(report, new_host, ("passed", "failed"))
        for key, old_value in sorted((old.get("figures") or {}).items()):
            kind = figure_kind(split_key(key)[2])
            old_number = _number(old_value)
            if kind is None or old_number is None:
                continue
            if key not in new_figures:
                findings.append(
                    Finding(
                        "missing",
                        key,
                        old_number,
                        None,
                        f"{key}: in the baseline ({_fmt(old_number)}) but not measured in this run",
                        new_host,
                    )
                )
                continue
            finding = _compare_figure(key, kind, old_number, new_figures[key], tolerance_for(key), new_host)
            if finding is not None:
                findings.append(finding)
    return findings


def scope_profiles(report: Mapping[str, Any], profiles: ProfileSet) -> Callable[[str], Profile]:
    """The profile of a figure's scope: ``gpu0`` is the first host's GPU 0; ``host`` the default."""
    names: dict[str, str] = {}
    for inventory in reversed(list(report.get("hosts") or ())):
        for gpu in inventory.get("gpus") or ():
            names[f"gpu{gpu['index']}"] = str(gpu.get("name") or "")

    def profile_for_scope(scope: str) -> Profile:
        name = names.get(scope)
        return profiles.for_gpu(name)[0] if name else profiles.default

    return profile_for_scope


def profile_tolerances(profile_for_scope: Callable[[str], Profile]) -> Callable[[str], float]:
    """``tolerance_for`` from GPU profiles: ``profile_for_scope("gpu0")`` returns a ``Profile``."""

    def tolerance_for(key: str) -> float:
        scope, _, metric = split_key(key)
        tolerances = profile_for_scope(scope).baseline
        kind = figure_kind(metric)
        if kind == "temperature":
            return tolerances.temperature_c
        if kind == "power":
            return tolerances.power
        return tolerances.performance

    return tolerance_for
