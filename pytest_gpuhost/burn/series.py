"""The burn's telemetry history on disk: CSV for people and spreadsheets, JSON with the GPUs' facts.

A saved series has times in seconds since it began. Both formats read back into a :class:`Series`,
and so does a CSV recorded with ``nvidia-smi --query-gpu=... --format=csv -lms 100`` (see
:func:`read_nvidia_smi_csv`), so a run recorded on real hardware can be dropped into ``tests/data``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.burn.model import SAMPLE_FIELDS, GpuStatic, Sample

if TYPE_CHECKING:
    from pytest_gpuhost.burn.sampler import Sampler

FORMAT = "pytest-gpuhost-burn-series"
VERSION = 1
CSV_COLUMNS = ("t_s", "gpu", "uuid", *SAMPLE_FIELDS)


@dataclass
class Series:
    """Samples per GPU (NVML index), with times relative to the series' start, and each GPU's facts.

    ``meta`` holds what the run knew (e.g. ``load_start_s``, ``load_end_s``, ``temp_limit_c``) so the
    criteria can be evaluated again from the files alone.
    """

    gpus: dict[int, GpuStatic] = field(default_factory=dict)
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls,
        samples: Iterable[Sample],
        gpus: Mapping[int, GpuStatic] | None = None,
        *,
        t0: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Series:
        """Group samples by GPU and shift their times to start at ``t0`` (default: the first)."""
        ordered = sorted(samples, key=lambda s: s.t)
        origin = t0 if t0 is not None else (ordered[0].t if ordered else 0.0)
        grouped: dict[int, list[Sample]] = {index: [] for index in (gpus or {})}
        for s in ordered:
            grouped.setdefault(s.gpu, []).append(_shift(s, origin))
        static = dict(gpus or {})
        for index in grouped:
            static.setdefault(index, GpuStatic(index=index))
        return cls(gpus=static, samples=grouped, meta=dict(meta or {}))

    @classmethod
    def from_sampler(cls, sampler: Sampler, meta: Mapping[str, Any] | None = None) -> Series:
        return cls.from_samples(sampler.samples(), sampler.info, t0=sampler.t0, meta=meta)

    @property
    def indices(self) -> list[int]:
        return sorted(self.samples)

    def of(self, gpu: int) -> list[Sample]:
        return self.samples.get(gpu, [])

    def uuid(self, gpu: int) -> str:
        static = self.gpus.get(gpu)
        return static.uuid if static is not None else ""


def _shift(sample: Sample, origin: float) -> Sample:
    values = {name: getattr(sample, name) for name in SAMPLE_FIELDS}
    return Sample(gpu=sample.gpu, t=round(sample.t - origin, 6), **values)


# --- our CSV -------------------------------------------------------------------------------------


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "event_reasons":
        return f"{int(value):#x}"
    return format(float(value), ".10g")


def _parse(name: str, text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if name == "event_reasons":
        return int(text, 0)
    return float(text)


def write_csv(series: Series, path: str | Path) -> Path:
    """One row per sample: ``t_s, gpu, uuid`` and the sample fields; empty cells are None."""
    path = Path(path)
    rows = sorted((s for index in series.indices for s in series.of(index)), key=lambda s: (s.t, s.gpu))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for s in rows:
            cells = [_cell(name, getattr(s, name)) for name in SAMPLE_FIELDS]
            writer.writerow([repr(round(s.t, 6)), s.gpu, series.uuid(s.gpu), *cells])
    return path


def read_csv(path: str | Path, gpus: Mapping[int, GpuStatic] | None = None) -> Series:
    """Read :func:`write_csv`'s format (extra columns are ignored, missing ones read as None)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = set(reader.fieldnames or ())
        if not {"t_s", "gpu"} <= header:
            return read_nvidia_smi_csv(path)
        rows = list(reader)
    static = dict(gpus or {})
    samples: list[Sample] = []
    for row in rows:
        index = int(row["gpu"])
        if index not in static:
            static[index] = GpuStatic(index=index, uuid=row.get("uuid") or "")
        values = {name: _parse(name, row.get(name) or "") for name in SAMPLE_FIELDS}
        samples.append(Sample(gpu=index, t=float(row["t_s"]), **values))
    return Series.from_samples(samples, static, t0=0.0)


# --- our JSON ------------------------------------------------------------------------------------


def to_json(series: Series) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": series.meta,
        "gpus": [asdict(series.gpus[i]) for i in sorted(series.gpus)],
        "fields": ["t_s", *SAMPLE_FIELDS],
        "samples": {
            str(i): [[round(s.t, 6), *(getattr(s, name) for name in SAMPLE_FIELDS)] for s in series.of(i)]
            for i in series.indices
        },
    }


def from_json(data: Mapping[str, Any]) -> Series:
    if data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document")
    if int(data.get("version", 0)) > VERSION:
        raise ValueError(f"{FORMAT} version {data.get('version')} is newer than this reader ({VERSION})")
    known = {f.name for f in fields(GpuStatic)}
    gpus = {}
    for entry in data.get("gpus", []):
        static = GpuStatic(**{k: v for k, v in entry.items() if k in known})
        gpus[static.index] = static
    columns = list(data.get("fields", ["t_s", *SAMPLE_FIELDS]))
    samples = []
    for key, rows in data.get("samples", {}).items():
        for row in rows:
            values = dict(zip(columns, row, strict=False))
            t = float(values.pop("t_s"))
            kept = {name: values.get(name) for name in SAMPLE_FIELDS}
            samples.append(Sample(gpu=int(key), t=t, **kept))
    return Series.from_samples(samples, gpus, t0=0.0, meta=data.get("meta") or {})


def write_json(series: Series, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_json(series), separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> Series:
    return from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def save(series: Series, directory: str | Path, stem: str = "burn-series") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.json`` into ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_csv(series, directory / f"{stem}.csv"), write_json(series, directory / f"{stem}.json")


def load(path: str | Path) -> Series:
    """A series from ``.json`` or ``.csv`` (ours or nvidia-smi's)."""
    path = Path(path)
    return read_json(path) if path.suffix == ".json" else read_csv(path)


# --- nvidia-smi's CSV ----------------------------------------------------------------------------

# nvidia-smi --query-gpu=timestamp,index,uuid,name,temperature.gpu,temperature.memory,power.draw,
#   enforced.power.limit,clocks.sm,clocks_event_reasons.active,fan.speed --format=csv -lms 100
SMI_COLUMNS = {
    "timestamp": "t",
    "index": "gpu",
    "uuid": "uuid",
    "name": "name",
    "temperature.gpu": "temp_c",
    "temperature.memory": "mem_temp_c",
    "power.draw": "power_w",
    "power.draw.instant": "power_w",
    "enforced.power.limit": "power_limit_w",
    "power.limit": "power_limit_w",
    "clocks.sm": "sm_clock_mhz",
    "clocks.current.sm": "sm_clock_mhz",
    "clocks_event_reasons.active": "event_reasons",
    "clocks_throttle_reasons.active": "event_reasons",
    "fan.speed": "fan_pct",
}
_MISSING = {"", "n/a", "[n/a]", "not supported", "[not supported]", "unknown error", "[unknown error]"}


def _smi_value(name: str, text: str) -> Any:
    text = text.strip()
    if text.lower() in _MISSING:
        return None
    if name == "event_reasons":
        return int(text, 0)
    return float(text.split()[0])


def read_nvidia_smi_csv(path: str | Path) -> Series:
    """A series from nvidia-smi's ``--format=csv`` output (units in the cells are fine)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = next(reader)
        keys = [SMI_COLUMNS.get(h.split("[")[0].strip().lower()) for h in header]
        rows = [row for row in reader if row]
    if "t" not in keys or "gpu" not in keys:
        raise ValueError(f"{path}: nvidia-smi CSV needs timestamp and index columns")
    static: dict[int, GpuStatic] = {}
    samples: list[Sample] = []
    for row in rows:
        cells = {key: cell for key, cell in zip(keys, row, strict=False) if key is not None}
        index = int(cells["gpu"])
        if index not in static:
            static[index] = GpuStatic(
                index=index, uuid=cells.get("uuid", "").strip(), name=cells.get("name", "").strip()
            )
        stamp = datetime.strptime(cells["t"].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
        values = {name: _smi_value(name, cells[name]) if name in cells else None for name in SAMPLE_FIELDS}
        samples.append(Sample(gpu=index, t=stamp, **values))
    return Series.from_samples(samples, static, meta={"source": "nvidia-smi"})
