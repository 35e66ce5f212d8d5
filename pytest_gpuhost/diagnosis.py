"""Failures as diagnoses: what was found, the likely cause, and the command that fixes it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NoReturn

import pytest


@dataclass(frozen=True)
class Diagnosis:
    found: str
    cause: str
    fix: str

    def __str__(self) -> str:
        return f"FOUND: {self.found}\nCAUSE: {self.cause}\nFIX:   {self.fix}"


class GpuhostWarning(UserWarning):
    """A finding that does not fail the check but deserves the operator's attention."""


def fail(found: str, cause: str, fix: str) -> NoReturn:
    """Fail the current check with a diagnosis and no Python traceback."""
    pytest.fail(str(Diagnosis(found, cause, fix)), pytrace=False)


def warn(found: str, cause: str, fix: str) -> None:
    """Record a warning-level finding; the check itself passes."""
    warnings.warn(GpuhostWarning(str(Diagnosis(found, cause, fix))), stacklevel=2)
