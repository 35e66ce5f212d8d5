"""The thermal guard inside the burn: NVML through ctypes (the image needs no pynvml), five reads a second, a stop at the limit."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

try:  # imported as part of the package (the unit tests, the host side)
    from .burn_output import Output, StopFlag
except ImportError:  # run as a script in the container: its siblings sit beside it on sys.path
    from burn_output import Output, StopFlag  # type: ignore[no-redef, import-not-found, unused-ignore]


GUARD_PERIOD_S = 0.2


GUARD_BLIND_S = 2.0


GUARD_STOP = "thermal-guard"


# The loader's search first (the toolkit updates the container's cache), then where driver mounts put it.
NVML_LIBRARIES = (
    "libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
)


class Nvml:
    """The few NVML calls the guard needs, through ctypes: the image needs no pynvml."""

    def __init__(self, libraries: Sequence[str] = NVML_LIBRARIES) -> None:
        errors = []
        for library in libraries:
            try:
                self.lib = ctypes.CDLL(library)
                break
            except OSError as exc:
                errors.append(str(exc))
        else:
            raise OSError("; ".join(errors[:2]))
        self._check(self.lib.nvmlInit_v2(), "nvmlInit")

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with NVML error {code}")

    def handles(self) -> dict[str, Any]:
        """Every GPU this process sees, by UUID (inside a container: the container's GPUs)."""
        count = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        found = {}
        for index in range(count.value):
            handle = ctypes.c_void_p()
            self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)), "handle")
            uuid = ctypes.create_string_buffer(96)
            self._check(self.lib.nvmlDeviceGetUUID(handle, uuid, 96), "nvmlDeviceGetUUID")
            found[uuid.value.decode()] = handle
        return found

    def temperature(self, handle: Any) -> float:
        value = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetTemperature(handle, 0, ctypes.byref(value)), "temperature")
        return float(value.value)


class ThermalGuard(threading.Thread):
    """Stops the burn when a watched GPU reaches ``limit_c`` or cannot be read for a while.

    ``watched`` gives the UUIDs of the GPUs the workers burn, once they know them (None: all
    the GPUs NVML shows this process). ``read`` is a seam for the tests: uuid -> temperature.
    """

    def __init__(
        self,
        limit_c: float,
        stop: StopFlag,
        out: Output,
        watched: Callable[[], list[str] | None],
        read: Callable[[], dict[str, float | None]],
        period_s: float = GUARD_PERIOD_S,
    ) -> None:
        super().__init__(name="thermal-guard", daemon=True)
        self.limit_c = limit_c
        self.stop = stop
        self.out = out
        self.watched = watched
        self.read = read
        self.period_s = period_s
        self.tripped: str | None = None

    def run(self) -> None:
        last_read: dict[str, float] = {}
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                temps = self.read()
            except Exception as exc:  # NVML failing now: counted as unreadable below
                temps = {}
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = ""
            wanted = self.watched()
            for uuid in wanted if wanted is not None else list(temps):
                temp = temps.get(uuid)
                if temp is None:
                    since = last_read.setdefault(uuid, now)
                    if now - since >= GUARD_BLIND_S:
                        self.trip(f"{uuid} temperature unreadable for {now - since:.1f} s {error}".strip())
                        return
                    continue
                last_read[uuid] = now
                if temp >= self.limit_c:
                    self.trip(f"{uuid} reached {temp:g} °C, at or above the limit of {self.limit_c:g} °C")
                    return
            self.stop.event.wait(self.period_s)

    def trip(self, reason: str) -> None:
        self.tripped = reason
        self.stop.set(GUARD_STOP)
        self.out.emit({"thermal_guard": reason, "limit_c": self.limit_c})


def start_thermal_guard(
    limit_c: float, stop: StopFlag, out: Output, workers: Sequence[Any]
) -> ThermalGuard | None:
    """The guard on this process's GPUs through NVML; None (said on stdout) where NVML is missing."""
    try:
        nvml = Nvml()
        handles = nvml.handles()
    except (OSError, RuntimeError, AttributeError) as exc:
        out.emit({"thermal_guard_unavailable": f"NVML: {exc}"})
        return None

    def read() -> dict[str, float | None]:
        temps: dict[str, float | None] = {}
        for uuid, handle in handles.items():
            try:
                temps[uuid] = nvml.temperature(handle)
            except RuntimeError:
                temps[uuid] = None
        return temps

    def watched() -> list[str] | None:
        uuids = [w.uuid for w in workers if getattr(w, "uuid", None)]
        return [u for u in uuids if u in handles] or None

    guard = ThermalGuard(limit_c, stop, out, watched, read)
    guard.start()
    return guard
