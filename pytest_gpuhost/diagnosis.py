"""Failures as diagnoses: what was found, the likely cause, and the command that fixes it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from pytest_gpuhost.criteria.health import Verdict

# The supported API (docs/api.md); everything else here is private and may change.
__all__ = ["Diagnosis", "GpuhostWarning", "fail", "warn"]

# The warnings of the check running now: fleet operations (``actions``) give its JUnit test case
# the action of its warnings too, which pytest reports only after the test case is written.
recent_warnings: list[Diagnosis] = []


@dataclass(frozen=True)
class Diagnosis:
    found: str
    cause: str
    fix: str
    # Optional: what kind of finding this is, when the check knows better than its name says
    # (``row-remap-failed``, ``floor-missed``); ``actions.RULES`` maps kinds to actions.
    kind: str | None = None

    def __str__(self) -> str:
        text = f"FOUND: {self.found}\nCAUSE: {self.cause}\nFIX:   {self.fix}"
        return f"{text}\nKIND:  {self.kind}" if self.kind else text


class GpuhostWarning(UserWarning):
    """A finding that does not fail the check but deserves the operator's attention."""


def fail(found: str, cause: str, fix: str, kind: str | None = None) -> NoReturn:
    """Fail the current check with a diagnosis and no Python traceback."""
    pytest.fail(str(Diagnosis(found, cause, fix, kind)), pytrace=False)


def warn(found: str, cause: str, fix: str, kind: str | None = None) -> None:
    """Record a warning-level finding; the check itself passes."""
    diagnosis = Diagnosis(found, cause, fix, kind)
    recent_warnings.append(diagnosis)
    warnings.warn(GpuhostWarning(str(diagnosis)), stacklevel=2)


def report_verdict(verdict: Verdict) -> None:
    """Print a verdict's metrics and notes, warn, then fail with every failure or skip as not applicable."""
    for key, value in verdict.metrics:
        if value is not None:
            print(f"gpuhost.metric {key}={value}")
    for note in verdict.notes:
        print(f"gpuhost.note {note}")
    for diagnosis in verdict.warnings:
        warn(diagnosis.found, diagnosis.cause, diagnosis.fix)
    failure = verdict.combined_failure()
    if failure is not None:
        fail(failure.found, failure.cause, failure.fix)
    if verdict.skip:
        pytest.skip(verdict.skip)
