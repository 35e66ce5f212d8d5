"""Fixtures of the JSON report, the GPU profiles and the baseline check, registered under ``--gpuhost``."""

from __future__ import annotations

import pytest

from pytest_gpuhost.options import OPTIONS, raw_value
from pytest_gpuhost.profiles import ProfileSet, load_profiles
from pytest_gpuhost.report_json import PLUGIN_NAME, JsonReport

PROFILES_KEY = pytest.StashKey[ProfileSet]()
PROFILE_FLAG = "--gpuhost-profile"


def profile_paths(config: pytest.Config) -> tuple[str, ...]:
    """The ``--gpuhost-profile`` files (or ``gpuhost_profile`` ini lines), in the order given."""
    spec = next((s for s in OPTIONS if s.flag == PROFILE_FLAG), None)
    if spec is None:
        return ()
    value = raw_value(config, spec)
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def profiles_from_config(config: pytest.Config) -> ProfileSet:
    """The run's profiles, read once; raises ``ProfileError`` (a ``UsageError``) for a bad file.

    The session calls it at configure time so that a malformed file stops the run at once.
    """
    if PROFILES_KEY not in config.stash:
        config.stash[PROFILES_KEY] = load_profiles(profile_paths(config))
    return config.stash[PROFILES_KEY]


@pytest.fixture(scope="session")
def gpuhost_profiles(pytestconfig: pytest.Config) -> ProfileSet:
    return profiles_from_config(pytestconfig)


@pytest.fixture(scope="session")
def gpuhost_report(pytestconfig: pytest.Config) -> JsonReport:
    """The plugin object collecting this run's results: the baseline check reads them as they stand."""
    plugin = pytestconfig.pluginmanager.get_plugin(PLUGIN_NAME)
    if not isinstance(plugin, JsonReport):
        pytest.skip(f"the {PLUGIN_NAME} plugin is not registered in this run")
    return plugin
