"""A PNG of temperature and power per GPU, if matplotlib is installed (an optional extra).

matplotlib is imported here only, inside the function, and a missing one is not an error: the
CSV and JSON series carry the same data.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pytest_gpuhost.burn.series import Series


def _pyplot() -> Any | None:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")  # no display on a GPU host
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None


def plot_series(
    series: Series,
    path: str | Path,
    *,
    temp_limit_c: float | None = None,
    title: str = "GPU burn",
) -> Path | None:
    """Write the plot to ``path`` and return it; None when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return None
    path = Path(path)
    fig, (ax_temp, ax_power) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    for index in series.indices:
        samples = series.of(index)
        t = [s.t for s in samples]
        label = f"GPU {index}"
        ax_temp.plot(t, [s.temp_c for s in samples], label=f"{label} GPU")
        if any(s.mem_temp_c is not None for s in samples):
            ax_temp.plot(t, [s.mem_temp_c for s in samples], linestyle=":", label=f"{label} memory")
        line = ax_power.plot(t, [s.power_w for s in samples], label=label)[0]
        ax_power.plot(t, [s.power_limit_w for s in samples], linestyle="--", color=line.get_color())
        slowdown = series.gpus[index].slowdown_c if index in series.gpus else None
        if slowdown is not None:
            ax_temp.axhline(slowdown, color=line.get_color(), linestyle="-.", linewidth=0.8)
    if temp_limit_c is not None:
        ax_temp.axhline(temp_limit_c, color="red", linestyle="--", label=f"limit {temp_limit_c:g} °C")
    start, end = series.meta.get("load_start_s"), series.meta.get("load_end_s")
    for ax in (ax_temp, ax_power):
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            ax.axvspan(start, end, color="0.9", zorder=0)
        ax.grid(True, alpha=0.3)
    ax_temp.set_ylabel("temperature (°C)")
    ax_power.set_ylabel("power (W), limit dashed")
    ax_power.set_xlabel("time (s)")
    ax_temp.legend(loc="lower right", fontsize="small")
    ax_temp.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
