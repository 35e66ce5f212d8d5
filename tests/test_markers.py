"""Our markers are our own: the tiers are ``gpuhost_quick`` .. ``gpuhost_burn``, so a user's
``@pytest.mark.burn`` test is theirs and our tier selection leaves it alone; and every marker of
ours is registered in every session, so ``--strict-markers`` projects may carry our checks."""

from __future__ import annotations

import ast
import re

import pytest
from pytester_support import GpuhostPytester

from pytest_gpuhost.options import MARKER_HELP, MARKER_TIERS, TIER_MARKERS, TIERS
from pytest_gpuhost.session import suite_dir

# The user's own markers, spelled like our tiers, registered by the user as --strict-markers wants.
USER_INI = """
[pytest]
markers =
    quick: the user's own fast tests
    container: the user's own container tests
    hardware: the user's own hardware tests
    burn: the user's own soak tests
"""

USER_TESTS = """
import pytest


@pytest.mark.quick
def test_users_quick():
    pass


@pytest.mark.container
def test_users_container():
    pass


@pytest.mark.hardware
def test_users_hardware():
    pass


@pytest.mark.burn
def test_users_burn():
    pass
"""
USER_NAMES = ("quick", "container", "hardware", "burn")


@pytest.mark.parametrize("tier", TIERS)
def test_users_own_tier_named_markers_are_not_deselected(
    gpuhost_pytester: GpuhostPytester, tier: str
) -> None:
    """Before the markers had our prefix, ``--gpuhost-tier quick`` deselected the user's
    ``burn``, ``hardware`` and ``container`` tests, and the default tier their ``burn`` test."""
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makeini(USER_INI)
    gpuhost_pytester.pytester.makepyfile(test_mine=USER_TESTS)
    result = gpuhost_pytester.run_plain("--strict-markers", "-v", "--gpuhost-tier", tier, "test_mine.py")
    result.assert_outcomes(passed=len(USER_NAMES), deselected=0)
    result.stdout.fnmatch_lines([f"*test_mine.py::test_users_{name} PASSED*" for name in USER_NAMES])


def test_users_own_burn_marker_selects_their_tests_under_gpuhost(gpuhost_pytester: GpuhostPytester) -> None:
    """``-m burn`` is the user's selection of their own tests: our default tier keeps it."""
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makeini(USER_INI)
    gpuhost_pytester.pytester.makepyfile(test_mine=USER_TESTS)
    result = gpuhost_pytester.run_plain("--strict-markers", "-v", "-m", "burn", "test_mine.py")
    result.assert_outcomes(passed=1, deselected=len(USER_NAMES) - 1)
    result.stdout.fnmatch_lines(["*test_mine.py::test_users_burn PASSED*"])


MIXED = """
import pytest


@pytest.mark.burn
def test_users_burn():
    pass


@pytest.mark.gpuhost_burn
def test_our_burn():
    pass
"""


def test_our_burn_marker_is_still_deselected_beside_the_users(gpuhost_pytester: GpuhostPytester) -> None:
    """The selection still works: only our ``gpuhost_burn`` waits for the burn tier."""
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makeini(USER_INI)
    gpuhost_pytester.pytester.makepyfile(test_mixed=MIXED)
    result = gpuhost_pytester.run_plain("--strict-markers", "-v", "test_mixed.py")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*test_mixed.py::test_users_burn PASSED*"])


OURS = """
import pytest


@pytest.mark.gpuhost_quick
@pytest.mark.gpuhost_needs("driver")
@pytest.mark.gpuhost_measures
def test_quick():
    pass


@pytest.mark.gpuhost_container
def test_container():
    pass


@pytest.mark.gpuhost_hardware
def test_hardware():
    pass


@pytest.mark.gpuhost_burn
def test_burn():
    pass
"""


def test_our_markers_are_registered_without_gpuhost(gpuhost_pytester: GpuhostPytester) -> None:
    """A project under ``--strict-markers`` that carries checks written for the suite collects them
    in its ordinary sessions too (where the plugin does nothing else)."""
    gpuhost_pytester.pytester.makepyfile(test_ours=OURS)
    result = gpuhost_pytester.runpytest("--strict-markers", "test_ours.py")
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize("gpuhost", [False, True], ids=["plain", "gpuhost"])
def test_markers_listed_once_each(gpuhost_pytester: GpuhostPytester, gpuhost: bool) -> None:
    """``pytest --markers`` names each of ours once, with or without ``--gpuhost``."""
    if gpuhost:
        gpuhost_pytester.setup("h100")
        result = gpuhost_pytester.run_plain("--markers")
    else:
        result = gpuhost_pytester.runpytest("--markers")
    text = result.stdout.str()
    for marker, help in MARKER_HELP.items():
        assert text.count(f"@pytest.mark.{marker}: {help}") == 1, (marker, text)
    for tier in TIERS:  # the bare names are left to the user
        assert not re.search(rf"^@pytest\.mark\.{tier}\b", text, flags=re.MULTILINE), tier


def test_tier_markers_are_prefixed_and_cover_every_tier() -> None:
    assert set(TIER_MARKERS) == set(TIERS)
    assert all(marker == f"gpuhost_{tier}" for tier, marker in TIER_MARKERS.items())
    assert {MARKER_TIERS[m] for m in TIER_MARKERS.values()} == set(TIERS)


PYTEST_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings", "xdist_group"}


def test_suite_uses_only_registered_markers() -> None:
    """Every ``pytest.mark.NAME`` in the shipped suite is one of ours or pytest's (and xdist's):
    a bare ``quick`` left behind would be a user's marker again, and never selected by a tier."""
    ours = {name.split("(")[0] for name in MARKER_HELP}
    used: dict[str, set[str]] = {}
    for path in sorted(suite_dir().glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark"
            ):
                used.setdefault(node.attr, set()).add(path.name)
    assert used, "no marker found: the scan is broken"
    unknown = {name: files for name, files in used.items() if name not in ours | PYTEST_MARKS}
    assert not unknown, unknown
    assert set(TIER_MARKERS.values()) <= set(used), "every tier has checks"
