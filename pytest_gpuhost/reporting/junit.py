"""JUnit extras that need pytest's own JUnit writer: the measured values in each system-out."""

from __future__ import annotations

import pytest


def junit_to_system_out(config: pytest.Config) -> None:
    """Each check's measured values (its ``gpuhost.metric`` lines) go into the JUnit system-out.

    pytest writes no captured output to JUnit unless ``junit_logging`` says so; under --gpuhost
    the default becomes ``system-out``. A ``junit_logging`` the user set (ini or ``-o``) wins.
    """
    from _pytest.junitxml import xml_key  # the LogXML instance; pytest has no public accessor

    xml = config.stash.get(xml_key, None)
    user_set = "junit_logging" in getattr(config, "_inicfg", {})
    if xml is not None and not user_set and xml.logging == "no":
        xml.logging = "system-out"
