"""Compare package versions the way advisories mean them: by upstream release, pre-releases first.

Hosts report versions with distribution decorations (``1.17.8-1``, ``20.10.24+dfsg1``,
``1:26.1.4-0ubuntu1~24.04``) and pre-release markers (``1.18.0~rc.1``, ``28.2.0-rc.1``). An
advisory's "fixed in 1.17.8" is about the upstream release, so the decorations are dropped, while
a pre-release of 1.17.8 sorts before 1.17.8 itself (it may predate the fix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_VERSION = re.compile(r"^\s*(?:\d+:)?v?(\d+(?:\.\d+)*)(.*)$", re.IGNORECASE | re.DOTALL)
# A suffix that marks a pre-release: "~rc.1", "-rc1", "-beta.2", "~alpha", ".rc1", "-pre", "-dev".
_PRERELEASE = re.compile(r"^[~.\-]?(alpha|beta|pre|rc|dev)[.\-]?(\d*)", re.IGNORECASE)
_RANKS = {"dev": 0, "alpha": 1, "beta": 2, "pre": 3, "rc": 4}


@total_ordering
@dataclass(frozen=True)
class Version:
    """An upstream release and, for a pre-release, its kind and number."""

    release: tuple[int, ...]
    pre: tuple[int, int] | None = None  # (rank of alpha/beta/rc, number)
    text: str = ""

    def _key(self) -> tuple[tuple[int, ...], int, tuple[int, int]]:
        release = self.release
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]  # 1.17 == 1.17.0
        return (release, 0 if self.pre else 1, self.pre or (0, 0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __str__(self) -> str:
        return self.text or ".".join(str(n) for n in self.release)

    @property
    def prerelease(self) -> bool:
        return self.pre is not None

    def starts_with(self, line: tuple[int, ...]) -> bool:
        """Whether this version belongs to the release line ``line`` (``(26, 1)`` holds 26.1.4)."""
        padded = self.release + (0,) * max(0, len(line) - len(self.release))
        return padded[: len(line)] == line


def parse_version(text: str | None) -> Version | None:
    """``1.17.8-1``, ``20.10.24+dfsg1``, ``1.18.0~rc.1``, ``v1.20.0`` to a Version; None without digits."""
    if not text:
        return None
    match = _VERSION.match(text)
    if not match:
        return None
    release = tuple(int(part) for part in match.group(1).split("."))
    suffix = match.group(2).strip()
    pre = _PRERELEASE.match(suffix)
    if pre:
        number = int(pre.group(2)) if pre.group(2) else 0
        return Version(release, (_RANKS[pre.group(1).lower()], number), text.strip())
    return Version(release, None, text.strip())


def release_line(text: str) -> tuple[int, ...]:
    """``"26.1"`` to ``(26, 1)``: the numbers a release line's versions start with."""
    return tuple(int(part) for part in text.strip().split("."))


_DOTTED = re.compile(r"\d+(?:\.\d+)*")


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """The first dotted number in ``text`` as integers, for comparing release lines: ``20.10.24+dfsg1``
    is (20, 10, 24), ``v19.03`` (19, 3), a driver's CUDA ``12.4`` (12, 4); None without digits.
    Advisories, which must order pre-releases and epochs, use ``parse_version``."""
    match = _DOTTED.search(text or "")
    return tuple(int(part) for part in match.group(0).split(".")) if match else None
