"""The temperature guard as a pure state machine: samples in, at most one trip reason out.

Kept free of threads and NVML so that every rule can be tested with plain samples. The sampler
calls :meth:`TemperatureGuard.observe` for every sample and stops the burn on the first reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_gpuhost.burn.model import Sample


@dataclass
class TemperatureGuard:
    """Trips when a GPU reaches ``limit_c``, its memory ``memory_limit_c`` (if given), or when a
    GPU's temperature has been unreadable for ``blind_after_s``: a burn nobody can watch must stop.

    Once tripped it stays tripped and reports nothing more: stopping is the caller's job, once.
    """

    limit_c: float
    memory_limit_c: float | None = None
    blind_after_s: float = 2.0
    reason: str | None = None
    tripped_at: float | None = None
    tripped_gpu: int | None = None
    _last_read: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def observe(self, sample: Sample) -> str | None:
        """The reason to stop, the first time there is one; otherwise None."""
        if self.reason is not None:
            return None
        reason = self._check(sample)
        if reason is not None:
            self.reason, self.tripped_at, self.tripped_gpu = reason, sample.t, sample.gpu
        return reason

    def _check(self, sample: Sample) -> str | None:
        gpu = sample.gpu
        if sample.temp_c is None:
            since = self._last_read.setdefault(gpu, sample.t)
            if sample.t - since >= self.blind_after_s:
                return (
                    f"GPU {gpu} temperature unreadable for {sample.t - since:.1f} s "
                    "(NVML fails or the GPU is lost): the burn cannot be watched"
                )
            return None
        self._last_read[gpu] = sample.t
        if sample.temp_c >= self.limit_c:
            return f"GPU {gpu} reached {sample.temp_c:g} °C, at or above the limit of {self.limit_c:g} °C"
        if (
            self.memory_limit_c is not None
            and sample.mem_temp_c is not None
            and sample.mem_temp_c >= self.memory_limit_c
        ):
            return (
                f"GPU {gpu} memory reached {sample.mem_temp_c:g} °C, "
                f"at or above the limit of {self.memory_limit_c:g} °C"
            )
        return None
