"""GPU-model profiles: what a healthy GPU of each model should show, from NVIDIA's datasheets.

Checks compare measured values (TFLOP/s, temperatures, power, PCIe link, memory size) against
the profile of the GPU's model instead of hard-coding one model's numbers. Profiles are TOML
files: the ones shipped in ``pytest_gpuhost/profiles/`` and any given with
``--gpuhost-profile FILE``, which add models or replace a shipped model's fields one by one.
Every model inherits the fields it does not set from ``default``, which is also the profile of
a GPU no other profile matches. The format is documented in ``docs/profiles.md``.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_gpuhost.facts.model import GpuInfo, HostFacts, normalize_pci_bus_id
from pytest_gpuhost.options import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

DEFAULT = "default"
DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16")
NONE = "none"  # an optional field's explicit "not checked", overriding an inherited value
_PROFILE_KEY = re.compile(r"[a-z0-9][a-z0-9-]*")


class ProfileError(UsageError):
    """A profile file that cannot be used: names the file, the line and the key."""


# -- the format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """One key of a profile table: its kind and allowed range."""

    kind: str  # "str", "patterns", "number", "int"
    optional: bool = False  # may be "none"
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the lower bound itself is not allowed

    def describe(self) -> str:
        noun = {"str": "a string", "patterns": "a list of regular expressions", "int": "an integer"}
        noun["ids"] = 'a list of PCI device IDs such as "0x2335"'
        text = noun.get(self.kind, "a number")
        if self.low is not None and self.high is not None:
            text += f" {'>' if self.low_open else 'from'} {self.low:g} {'and <=' if self.low_open else 'to'} {self.high:g}"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.optional:
            text += f' or "{NONE}"'
        return text


_FRACTION = _Field("number", low=0.0, high=1.0, low_open=True)
FIELDS: dict[str, _Field] = {
    "name": _Field("str"),
    "match": _Field("patterns"),
    "temperature_limit_c": _Field("number", low=0.0, low_open=True),
    "power_limit_w": _Field("number", optional=True, low=0.0, low_open=True),
    "power_load_fraction": _FRACTION,
    "tflops_tolerance": _FRACTION,
    "memory_mib": _Field("int", optional=True, low=1),
    "memory_tolerance": _Field("number", low=0.0, high=1.0),
    "pcie_generation": _Field("int", optional=True, low=1, high=7),
    "pcie_width": _Field("int", optional=True, low=1, high=32),
    "ecc_correctable_warn": _Field("int", optional=True, low=0),
    "ecc_correctable_fail": _Field("int", optional=True, low=0),
    "fan_limit_percent": _Field("number", optional=True, low=0.0, high=100.0),
    "pci_device_ids": _Field("ids"),
    "hbm_tbps": _Field("number", optional=True, low=0.0, low_open=True),
    "hbm_floor": _FRACTION,
    "pcie_floor": _FRACTION,
    "nvlink_links": _Field("int", optional=True, low=0),
    "nvlink_link_gbps": _Field("number", optional=True, low=0.0, low_open=True),
    "p2p_floor": _FRACTION,
    "allreduce_floor": _FRACTION,
    "cross_gpu_tolerance": _FRACTION,
}
TABLES: dict[str, dict[str, _Field]] = {
    "tflops": {dtype: _Field("number", optional=True, low=0.0, low_open=True) for dtype in DTYPES},
    "tflops_floor": {dtype: _FRACTION for dtype in DTYPES},
    "baseline": {
        "performance_tolerance": _FRACTION,
        "temperature_tolerance_c": _Field("number", low=0.0),
        "power_tolerance": _FRACTION,
    },
}
REQUIRED = (
    "temperature_limit_c",
    "power_load_fraction",
    "tflops_tolerance",
    "memory_tolerance",
    "baseline.performance_tolerance",
    "baseline.temperature_tolerance_c",
    "baseline.power_tolerance",
    "hbm_floor",
    "pcie_floor",
    "p2p_floor",
    "allreduce_floor",
    "cross_gpu_tolerance",
    *(f"tflops_floor.{dtype}" for dtype in DTYPES),
)
_DEVICE_ID = re.compile(r"0x[0-9a-f]{4}")


# -- the profiles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tflops:
    """Dense datasheet TFLOP/s per matmul dtype (no 2:4 sparsity); None: the datasheet gives none."""

    float64: float | None = None
    float32: float | None = None
    tf32: float | None = None
    bfloat16: float | None = None
    float16: float | None = None

    def get(self, dtype: str) -> float | None:
        if dtype not in DTYPES:
            raise KeyError(f"unknown dtype {dtype!r}; profiles know {', '.join(DTYPES)}")
        value: float | None = getattr(self, dtype)
        return value


@dataclass(frozen=True)
class BaselineTolerance:
    """How far a re-check may fall behind a saved baseline before it fails (docs/baselines.md)."""

    performance: float  # fraction: throughput may drop this much
    temperature_c: float  # degrees: a peak temperature may rise this much
    power: float  # fraction: power under load may drop this much


@dataclass(frozen=True)
class Profile:
    """One GPU model's expectations, with the default's values filled in."""

    key: str
    name: str
    match: tuple[str, ...]
    temperature_limit_c: float
    power_limit_w: float | None
    power_load_fraction: float
    tflops: Tflops
    tflops_tolerance: float
    memory_mib: int | None
    memory_tolerance: float
    pcie_generation: int | None
    pcie_width: int | None
    ecc_correctable_warn: int | None
    ecc_correctable_fail: int | None
    fan_limit_percent: float | None
    baseline: BaselineTolerance
    sources: tuple[str, ...]  # the files that set its fields, in the order they were read
    # The hardware tier (docs/checks/test_hbm_*, test_pcie_bandwidth, ...): floors as fractions.
    pci_device_ids: tuple[str, ...] = ()
    hbm_tbps: float | None = None
    hbm_floor: float = 0.8
    pcie_floor: float = 0.8
    nvlink_links: int | None = None
    nvlink_link_gbps: float | None = None
    p2p_floor: float = 0.7
    allreduce_floor: float = 0.6
    cross_gpu_tolerance: float = 0.1
    tflops_floor: Tflops = Tflops()

    def floor_tflops(self, dtype: str) -> float | None:
        """The TFLOP/s below which the compute check fails: datasheet peak times the dtype's floor."""
        peak, fraction = self.tflops.get(dtype), self.tflops_floor.get(dtype)
        return None if peak is None or fraction is None else peak * fraction

    def matches_device_id(self, device_id: str | None) -> bool:
        return bool(device_id) and str(device_id).lower() in self.pci_device_ids

    def matches(self, gpu_name: str) -> bool:
        name = gpu_name.strip()
        return any(re.fullmatch(pattern, name, flags=re.IGNORECASE) for pattern in self.match)

    def min_tflops(self, dtype: str) -> float | None:
        """The least TFLOP/s a healthy GPU reaches in a short matmul: datasheet peak times tolerance."""
        peak = self.tflops.get(dtype)
        return None if peak is None else peak * self.tflops_tolerance

    def memory_range_mib(self) -> tuple[int, int] | None:
        """The memory size the driver may report: nominal ± tolerance (ECC and driver reserve)."""
        if self.memory_mib is None:
            return None
        slack = self.memory_mib * self.memory_tolerance
        return int(self.memory_mib - slack), int(self.memory_mib + slack + 0.5)

    def min_load_power_w(self, enforced_limit_w: float) -> float:
        """The least power a GPU under full load should draw, given its enforced power limit."""
        return enforced_limit_w * self.power_load_fraction


class ProfileSet:
    """The profiles of one run: shipped ones, then the ``--gpuhost-profile`` files."""

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self._profiles = {p.key: p for p in profiles}
        if DEFAULT not in self._profiles:
            raise ProfileError("no 'default' profile: the package's profiles/default.toml is missing")

    @property
    def default(self) -> Profile:
        return self._profiles[DEFAULT]

    def keys(self) -> list[str]:
        return list(self._profiles)

    def __getitem__(self, key: str) -> Profile:
        return self._profiles[key]

    def __contains__(self, key: object) -> bool:
        return key in self._profiles

    def __iter__(self) -> Iterator[Profile]:
        return iter(self._profiles.values())

    def for_gpu(self, name: str, device_id: str | None = None) -> tuple[Profile, str | None]:
        """The profile for a GPU: by PCI device ID (``0x2335``) first, else by the model name as
        NVML reports it, and why when it is the default.

        Later profiles win: a model added by ``--gpuhost-profile`` is tried before shipped ones.
        """
        for profile in reversed(list(self._profiles.values())):
            if profile.key != DEFAULT and profile.matches_device_id(device_id):
                return profile, None
        for profile in reversed(list(self._profiles.values())):
            if profile.key != DEFAULT and profile.matches(name):
                return profile, None
        reason = (
            f"no GPU profile matches {name!r}; using the default profile (temperature and power "
            "limits only: no TFLOP/s, PCIe link or memory-size expectations). Add one with "
            "--gpuhost-profile FILE (docs/profiles.md)"
        )
        return self.default, reason


# -- reading and checking files ----------------------------------------------------------------


def shipped_profile_files() -> list[tuple[str, str]]:
    """``(label, text)`` of each TOML file shipped in ``pytest_gpuhost/profiles``, by name."""
    folder = resources.files("pytest_gpuhost").joinpath("profiles")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".toml")), key=lambda e: e.name
    )
    return [(str(entry), entry.read_text(encoding="utf-8")) for entry in files]


def load_profiles(extra: Sequence[Path | str] = ()) -> ProfileSet:
    """The shipped profiles with the files in ``extra`` applied in order.

    Raises ``ProfileError`` (a usage error) naming the file, line and key of the first problem.
    """
    sources = shipped_profile_files()
    for path in extra:
        path = Path(path)
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ProfileError(f"--gpuhost-profile {path}: cannot read it: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ProfileError(f"{path}: not UTF-8 text: {exc.reason}") from None
    return build_profiles(sources)


def build_profiles(sources: Sequence[tuple[str, str]]) -> ProfileSet:
    """Profiles from ``(label, TOML text)`` pairs; later files override earlier ones field by field."""
    merged: dict[str, dict[str, Any]] = {}
    origins: dict[str, list[str]] = {}
    for label, text in sources:
        for key, table in parse_profile_file(label, text).items():
            _merge(merged.setdefault(key, {}), table)
            if label not in origins.setdefault(key, []):
                origins[key].append(label)
            if key != DEFAULT and not merged[key].get("match"):
                raise ProfileError(
                    f"{label}:{_locate(text, (key,), None) or '?'}: [{key}]: a new model needs `match`, "
                    "the GPU names (as nvidia-smi shows them) it applies to"
                )
    if DEFAULT not in merged:
        raise ProfileError("no 'default' profile: the package's profiles/default.toml is missing")
    base = merged[DEFAULT]
    missing = [name for name in REQUIRED if _lookup(base, name) is None]
    if missing:
        raise ProfileError(f"the default profile lacks {', '.join(missing)} ({', '.join(origins[DEFAULT])})")
    profiles = []
    for key, table in merged.items():
        values: dict[str, Any] = {}
        _merge(values, base)
        _merge(values, table)
        profiles.append(_build(key, values, tuple(dict.fromkeys([*origins[DEFAULT], *origins[key]]))))
    return ProfileSet(profiles)


def parse_profile_file(label: str, text: str) -> dict[str, dict[str, Any]]:
    """One file's profile tables, checked against the format; raises ``ProfileError``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(_syntax_error(label, text, exc)) from None
    tables: dict[str, dict[str, Any]] = {}
    for key, table in data.items():
        if not isinstance(table, dict):
            raise _error(
                label, text, (), key, f"expected a table [{key}] of profile fields, got {_kind(table)}"
            )
        if not _PROFILE_KEY.fullmatch(key):
            raise _error(label, text, (), key, "profile names are lowercase letters, digits and dashes")
        for name, value in table.items():
            if name in TABLES:
                if not isinstance(value, dict):
                    raise _error(
                        label, text, (key,), name, f"expected a table [{key}.{name}], got {_kind(value)}"
                    )
                for sub, subvalue in value.items():
                    _check(label, text, (key, name), sub, subvalue, TABLES[name])
            else:
                _check(label, text, (key,), name, value, FIELDS)
        if key == DEFAULT and table.get("match"):
            raise _error(
                label, text, (key,), "match", "the default profile applies to unmatched GPUs: no `match`"
            )
        tables[key] = table
    return tables


def _check(
    label: str, text: str, table: tuple[str, ...], name: str, value: Any, fields: Mapping[str, _Field]
) -> None:
    spec = fields.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
        raise _error(label, text, table, name, f"unknown key{hint}")
    problem = _problem(spec, value)
    if problem:
        raise _error(label, text, table, name, f"expected {spec.describe()}, got {problem}")


def _problem(spec: _Field, value: Any) -> str | None:
    """Why ``value`` does not fit ``spec``, or None."""
    if spec.optional and value == NONE:
        return None
    if spec.kind == "str":
        return None if isinstance(value, str) and value.strip() else _kind(value)
    if spec.kind == "ids":
        if not isinstance(value, list) or not all(
            isinstance(v, str) and _DEVICE_ID.fullmatch(v) for v in value
        ):
            return _kind(value) if not isinstance(value, list) else f"{value!r}"
        return None
    if spec.kind == "patterns":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return _kind(value)
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"the invalid regular expression {pattern!r} ({exc})"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _kind(value)
    if spec.kind == "int" and not isinstance(value, int):
        return _kind(value)
    if value != value or value in (float("inf"), float("-inf")):
        return repr(value)
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        return repr(value)
    if spec.high is not None and value > spec.high:
        return repr(value)
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return type(value).__name__


def _error(label: str, text: str, table: tuple[str, ...], key: str, problem: str) -> ProfileError:
    line = _locate(text, table, key)
    where = f"{label}:{line}" if line else label
    return ProfileError(f"{where}: {'.'.join((*table, key))}: {problem}")


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _syntax_error(label: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    found = _TOML_POSITION.search(message)
    if not found:
        return f"{label}: invalid TOML: {message}"
    line, column = int(found.group(1)), int(found.group(2))
    lines = text.splitlines()
    near = f" in {lines[line - 1].strip()!r}" if 0 < line <= len(lines) else ""
    return f"{label}:{line}:{column}: invalid TOML: {message[: found.start()]}{near}"


_KEY_PART = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*')


def _split_key(text: str) -> tuple[str, ...] | None:
    """``a."b c".d`` to its parts; None when ``text`` is not a TOML key."""
    parts: list[str] = []
    for piece in text.split("."):
        found = _KEY_PART.fullmatch(piece)
        if not found:
            return None
        parts.append(found.group(1).strip("\"'"))
    return tuple(parts)


def _strip_comment(line: str) -> str:
    """The line without its ``# comment``; a ``#`` inside a string stays."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _locate(text: str, table: tuple[str, ...], key: str | None) -> int | None:
    """The line that sets ``table.key`` (or opens ``table`` when ``key`` is None), best effort.

    tomllib reports lines only for syntax errors, so a key with a wrong value is found again in
    the text: under its ``[table]`` header, as a dotted key, or in an inline table.
    """
    header: tuple[str, ...] = ()
    header_line: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if line.startswith("[") and not line.startswith("[["):
            parts = _split_key(line.strip("[] \t"))
            if parts is not None:
                header = parts
                if key is not None and header == (*table, key):
                    return number  # the key names a table: [h100-sxm] or [h100-sxm.tflops]
                if header == table:
                    header_line = number
                    if key is None:
                        return number
            continue
        name, sep, _ = line.partition("=")
        if not sep or key is None:
            continue
        parts = _split_key(name)
        if parts is None:
            continue
        path = header + parts
        if path == (*table, key):
            return number
        if path == table and re.search(rf"(?<![\w-]){re.escape(key)}\s*=", line):
            return number  # an inline table: tflops = { float16 = ... }
    return header_line


def _merge(into: dict[str, Any], table: Mapping[str, Any]) -> None:
    """Field-by-field override; sub-tables (tflops, baseline) merge key by key."""
    for name, value in table.items():
        if isinstance(value, dict):
            _merge(into.setdefault(name, {}), value)
        else:
            into[name] = value


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _optional(value: Any) -> Any:
    return None if value is None or value == NONE else value


def _build(key: str, values: Mapping[str, Any], sources: tuple[str, ...]) -> Profile:
    tflops = values.get("tflops", {})
    baseline = values["baseline"]
    return Profile(
        key=key,
        name=str(values.get("name") or key),
        match=tuple(values.get("match") or ()) if key != DEFAULT else (),
        temperature_limit_c=float(values["temperature_limit_c"]),
        power_limit_w=_float(values.get("power_limit_w")),
        power_load_fraction=float(values["power_load_fraction"]),
        tflops=Tflops(**{dtype: _float(tflops.get(dtype)) for dtype in DTYPES}),
        tflops_tolerance=float(values["tflops_tolerance"]),
        memory_mib=_optional(values.get("memory_mib")),
        memory_tolerance=float(values["memory_tolerance"]),
        pcie_generation=_optional(values.get("pcie_generation")),
        pcie_width=_optional(values.get("pcie_width")),
        ecc_correctable_warn=_optional(values.get("ecc_correctable_warn")),
        ecc_correctable_fail=_optional(values.get("ecc_correctable_fail")),
        fan_limit_percent=_float(values.get("fan_limit_percent")),
        baseline=BaselineTolerance(
            performance=float(baseline["performance_tolerance"]),
            temperature_c=float(baseline["temperature_tolerance_c"]),
            power=float(baseline["power_tolerance"]),
        ),
        sources=sources,
        pci_device_ids=tuple(values.get("pci_device_ids") or ()) if key != DEFAULT else (),
        hbm_tbps=_float(values.get("hbm_tbps")),
        hbm_floor=float(values["hbm_floor"]),
        pcie_floor=float(values["pcie_floor"]),
        nvlink_links=_optional(values.get("nvlink_links")),
        nvlink_link_gbps=_float(values.get("nvlink_link_gbps")),
        p2p_floor=float(values["p2p_floor"]),
        allreduce_floor=float(values["allreduce_floor"]),
        cross_gpu_tolerance=float(values["cross_gpu_tolerance"]),
        tflops_floor=Tflops(**{dtype: _float(values["tflops_floor"].get(dtype)) for dtype in DTYPES}),
    )


def _float(value: Any) -> float | None:
    value = _optional(value)
    return None if value is None else float(value)


def pci_device_id(facts: HostFacts, gpu: GpuInfo) -> str | None:
    """The GPU's PCI device ID (``0x2335``) from sysfs, found by its bus address."""
    bus = normalize_pci_bus_id(gpu.pci_bus_id) if gpu.pci_bus_id else ""
    return next((p.device_id.lower() for p in facts.pci if normalize_pci_bus_id(p.address) == bus), None)


def profile_for(profiles: ProfileSet, facts: HostFacts, gpu: GpuInfo) -> tuple[Profile, str | None]:
    """The GPU's profile: by PCI device ID, else by name (``ProfileSet.for_gpu``)."""
    return profiles.for_gpu(gpu.name, pci_device_id(facts, gpu))
