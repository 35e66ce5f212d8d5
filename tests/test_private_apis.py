"""The private pytest, argparse and pytest-xdist APIs the plugin leans on, pinned by shape.

pytest and xdist offer no public way to do these few things, so the plugin reaches inside. No
upper bound in pyproject guards them (each new pytest would need a release of ours); these tests
do instead: when a new pytest or xdist removes or reshapes one, the failure names the API, what
changed and the code of ours that must follow. Most uses also degrade quietly at run time (a
``getattr`` default, a ``try``), which is why only a test notices.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

JUNIT_USERS = (
    "pytest_gpuhost/session.py (junit_to_system_out, pytest_runtest_logreport), "
    "pytest_gpuhost/reporting/actions.py (pytest_sessionfinish), "
    "pytest_gpuhost/input_checks.py (guard_junit)"
)
# The keyword arguments root_from_real_args (pytest_gpuhost/session.py) passes determine_setup:
# it drops those the signature lacks, so a new required one would break it quietly.
DETERMINE_SETUP_GIVEN = {"inifile", "override_ini", "args", "rootdir_cmd_arg", "invocation_dir"}


# -- pytest's JUnit writer ----------------------------------------------------------------------------


def test_junitxml_xml_key_is_a_stash_key() -> None:
    try:
        from _pytest.junitxml import xml_key
    except ImportError as exc:  # pragma: no cover - only on a pytest that dropped it
        pytest.fail(f"_pytest.junitxml.xml_key is gone ({exc}): {JUNIT_USERS} must find pytest's LogXML anew")
    assert isinstance(xml_key, pytest.StashKey), (
        f"_pytest.junitxml.xml_key is a {type(xml_key).__name__}, no longer a StashKey: "
        f"config.stash.get(xml_key) in {JUNIT_USERS} must change"
    )


def test_the_stashed_logxml_has_what_we_use(pytester: pytest.Pytester) -> None:
    """The attributes of pytest's LogXML we read, set, call or wrap."""
    from _pytest.junitxml import xml_key

    config = pytester.parseconfigure("--junitxml=out.xml")
    xml = config.stash.get(xml_key, None)
    assert xml is not None, f"--junitxml no longer stashes its writer under xml_key: {JUNIT_USERS}"
    assert getattr(xml, "logging", None) == "no", (
        "LogXML.logging (the junit_logging value, default 'no') changed: junit_to_system_out in "
        "pytest_gpuhost/session.py sets it to 'system-out'"
    )
    assert callable(getattr(xml, "add_global_property", None)), (
        f"LogXML.add_global_property(name, value) is gone: the JUnit test-suite properties of {JUNIT_USERS}"
    )
    assert list(inspect.signature(xml.add_global_property).parameters) == ["name", "value"]
    assert callable(getattr(xml, "pytest_sessionfinish", None)), (
        "LogXML.pytest_sessionfinish (the write of the file) is gone: guard_junit in "
        "pytest_gpuhost/input_checks.py wraps it"
    )
    assert not inspect.signature(xml.pytest_sessionfinish).parameters, (
        "guard_junit calls it without arguments"
    )
    assert str(getattr(xml, "logfile", "")).endswith("out.xml"), "guard_junit names LogXML.logfile"


# -- pytest's Config internals ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ini", "override"])
def test_config_inicfg_is_a_mapping_of_the_values_the_user_set(pytester: pytest.Pytester, how: str) -> None:
    """``"junit_logging" in config._inicfg`` tells a value the user chose (ini or ``-o``) from the default."""
    if how == "ini":
        pytester.makeini("[pytest]\njunit_logging = all\n")
        config = pytester.parseconfig()
    else:
        config = pytester.parseconfig("-o", "junit_logging=all")
    inicfg = getattr(config, "_inicfg", None)
    assert isinstance(inicfg, Mapping), (
        f"config._inicfg is a {type(inicfg).__name__}, not a mapping: junit_to_system_out in "
        "pytest_gpuhost/session.py would override the user's junit_logging"
    )
    assert "junit_logging" in inicfg, f"a junit_logging set by {how} is no longer in config._inicfg"
    if how == "override":  # no ini file here: the default is not a value the user chose
        assert "junit_logging" not in pytester.parseconfig()._inicfg, "config._inicfg holds defaults too"


def test_determine_setup_keeps_its_shape(pytester: pytest.Pytester) -> None:
    """``root_from_real_args`` (pytest_gpuhost/session.py) decides the rootdir again with it."""
    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError as exc:  # pragma: no cover - only on a pytest that dropped it
        pytest.fail(
            f"_pytest.config.findpaths.determine_setup is gone ({exc}): root_from_real_args must change"
        )
    parameters = inspect.signature(determine_setup).parameters
    required = {n for n, p in parameters.items() if p.default is inspect.Parameter.empty}
    assert required <= DETERMINE_SETUP_GIVEN, (
        f"determine_setup now requires {sorted(required - DETERMINE_SETUP_GIVEN)}: root_from_real_args "
        "does not pass them and silently keeps pytest's rootdir"
    )
    pytester.makeini("[pytest]\naddopts = -q\n")
    given: dict[str, Any] = {
        "inifile": None,
        "override_ini": None,
        "args": [str(pytester.path)],
        "rootdir_cmd_arg": None,
        "invocation_dir": pytester.path,
    }
    found = determine_setup(**{k: v for k, v in given.items() if k in parameters})
    rootpath, inipath, inicfg = found[:3]
    assert isinstance(rootpath, Path) and rootpath == pytester.path, found
    assert isinstance(inipath, Path) and inipath.name == "tox.ini", found
    assert isinstance(inicfg, Mapping) and "addopts" in inicfg, found


def test_config_has_the_attributes_root_from_real_args_sets(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    shape = {
        "_rootpath": isinstance(getattr(config, "_rootpath", None), Path),
        "_inipath": hasattr(config, "_inipath"),
        "_inicache": callable(getattr(getattr(config, "_inicache", None), "clear", None)),
        "_parser.extra_info": isinstance(getattr(getattr(config, "_parser", None), "extra_info", None), dict),
    }
    for name in ("inifilename", "override_ini", "file_or_dir", "rootdir"):
        shape[f"option.{name}"] = hasattr(config.option, name)
    changed = [name for name, ok in shape.items() if not ok]
    assert not changed, f"pytest's Config changed {changed}: root_from_real_args in pytest_gpuhost/session.py"
    assert config._rootpath == config.rootpath, "config._rootpath is no longer what config.rootpath reads"


# -- argparse, through pytest's parser ---------------------------------------------------------------


def test_negative_durations_reach_argparse_the_way_we_widen(pytester: pytest.Pytester) -> None:
    """``accept_negative_durations`` (pytest_gpuhost/options.py) widens argparse's private
    ``_negative_number_matcher`` on pytest's ``Parser.optparser`` (pytest >= 9)."""
    matcher = getattr(argparse.ArgumentParser(), "_negative_number_matcher", None)
    assert isinstance(matcher, re.Pattern), (
        "argparse.ArgumentParser._negative_number_matcher is gone: --gpuhost-burn -5m would get "
        "argparse's 'expected one argument' instead of our usage error (accept_negative_durations)"
    )
    if int(pytest.__version__.split(".")[0]) >= 9:
        parser = pytester.parseconfig()._parser
        optparser = getattr(parser, "optparser", None)
        assert isinstance(optparser, argparse.ArgumentParser), "pytest's Parser.optparser is gone"
        widened = getattr(optparser, "_negative_number_matcher", None)
        assert isinstance(widened, re.Pattern) and widened.match("-5m"), (
            "the plugin's parser no longer accepts -5m as a value: accept_negative_durations"
        )


# -- pytest-xdist's scheduler -------------------------------------------------------------------------


def test_xdist_loadgroup_scheduling_keeps_split_scope() -> None:
    """``HostGroupScheduling`` (pytest_gpuhost/hosts/scheduler.py) overrides ``_split_scope``."""
    scheduler = pytest.importorskip("xdist.scheduler")
    pytest.importorskip("xdist.remote").Producer  # noqa: B018  # the type of its ``log`` argument
    group = scheduler.LoadGroupScheduling
    split = getattr(group, "_split_scope", None)
    assert callable(split), "xdist's LoadGroupScheduling._split_scope is gone: hosts/scheduler.py must change"
    assert list(inspect.signature(split).parameters) == ["self", "nodeid"], inspect.signature(split)
    assert "self._split_scope(" in inspect.getsource(scheduler.LoadScopeScheduling), (
        "xdist's LoadScopeScheduling no longer asks _split_scope for each test's group: overriding "
        "it no longer keeps a host's checks on one worker"
    )
    init = list(inspect.signature(group.__init__).parameters)
    assert init[:3] == ["self", "config", "log"], f"LoadGroupScheduling.__init__{init}: HostGroupScheduling"


def test_host_group_scheduling_groups_by_host_and_defers_to_xdist() -> None:
    pytest.importorskip("xdist.scheduler")
    from pytest_gpuhost.hosts.scheduler import HostGroupScheduling

    sched = HostGroupScheduling.__new__(HostGroupScheduling)  # the split needs no workers
    sched.hosts = ("gpu01", "gpu01-b")
    assert sched._split_scope("suites/t.py::test_x[gpu01-gpu0-1a2b3c4d]") == "gpuhost-host:gpu01"
    assert sched._split_scope("suites/t.py::test_x[gpu01-b]") == "gpuhost-host:gpu01-b"
    # No host in the id: xdist's own loadgroup rule (the ``@group`` suffix), through super().
    assert sched._split_scope("tests/t.py::test_y@mygroup") == "mygroup"
    assert sched._split_scope("tests/t.py::test_z") == "tests/t.py::test_z"
