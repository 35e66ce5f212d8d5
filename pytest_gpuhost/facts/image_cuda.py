"""An image's CUDA requirement (``NVIDIA_REQUIRE_CUDA``) and whether a host's driver and GPUs meet it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_gpuhost.versions import version_tuple

_CONSTRAINT = re.compile(r"^(?P<key>[a-z]+)\s*(?P<op>>=|<=|==|!=|=|>|<)\s*(?P<value>\S+)$")


@dataclass(frozen=True)
class Constraint:
    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class CudaRequirement:
    """``NVIDIA_REQUIRE_CUDA``: alternatives separated by spaces, each a comma-separated AND of constraints."""

    raw: str
    alternatives: tuple[tuple[Constraint, ...], ...]

    @property
    def cuda(self) -> str | None:
        """The image's CUDA requirement: the first ``cuda>=X.Y``."""
        for group in self.alternatives:
            for c in group:
                if c.key == "cuda" and c.op == ">=":
                    return c.value
        return None


def parse_require_cuda(text: str) -> CudaRequirement:
    groups = []
    for term in text.split():
        parts = [p for p in term.split(",") if p]
        constraints = []
        for part in parts:
            match = _CONSTRAINT.match(part.strip().lower())
            if match:
                constraints.append(Constraint(match.group("key"), match.group("op"), match.group("value")))
        if constraints:
            groups.append(tuple(constraints))
    return CudaRequirement(text, tuple(groups))


def _compare(left: tuple[int, ...], op: str, right: tuple[int, ...]) -> bool:
    return {
        ">=": left >= right,
        "<=": left <= right,
        ">": left > right,
        "<": left < right,
        "=": left == right,
        "==": left == right,
        "!=": left != right,
    }[op]


@dataclass(frozen=True)
class GpuTraits:
    """What NVIDIA_REQUIRE_CUDA's constraints can name: the GPU's brand and compute capability."""

    brand: str | None
    arch: tuple[int, int] | None


def _holds(c: Constraint, cuda: str | None, driver: str | None, gpu: GpuTraits) -> bool | None:
    """True, False, or None when the fact the constraint needs is unknown."""
    if c.key in ("cuda", "driver", "arch"):
        value = version_tuple(c.value)
        have: tuple[int, ...] | None = {
            "cuda": version_tuple(cuda),
            "driver": version_tuple(driver),
            "arch": gpu.arch,
        }[c.key]
        if value is None or have is None:
            return None
        # A constraint names as many components as it means: driver<471 and driver<=470 both
        # hold for 470.57.02, so the fact is cut to the constraint's length before comparing.
        return _compare(have[: len(value)], c.op, value)
    if c.key == "brand":
        if gpu.brand is None:
            return None
        equal = gpu.brand == c.value
        return equal if c.op in ("=", "==") else not equal
    return None


def requirement_met(
    req: CudaRequirement, cuda: str | None, driver: str | None, gpu: GpuTraits
) -> tuple[bool | None, tuple[Constraint, ...] | None]:
    """Whether one GPU meets the requirement, and through which alternative.

    Alternatives are ORed: ``cuda>=X.Y`` for a driver whose CUDA is new enough, or one of the
    ``brand=...,driver>=N,driver<M`` groups, by which the image's forward-compatibility libraries
    let an older data-centre driver branch run it.
    """
    undecided = False
    for group in req.alternatives:
        results = [_holds(c, cuda, driver, gpu) for c in group]
        if all(r is True for r in results):
            return True, group
        if not any(r is False for r in results):
            undecided = True
    return (None if undecided else False), None


def image_env(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``Config.Env`` of ``docker image inspect`` as a dict."""
    env: dict[str, str] = {}
    for entry in (attrs.get("Config") or {}).get("Env") or []:
        key, _, value = str(entry).partition("=")
        env[key] = value
    return env
