"""Guide step 4.2: the periodic re-check, versions that are the problem themselves and a pending reboot.

Known container escapes in the toolkit, release lines no longer maintained, driver branches past
end of life, and an upgraded driver that is installed but not running. The version facts come from
a dated table shipped with the suite (or the site's own copy): every finding names its age.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from pytest_gpuhost.criteria.advisories import AdvisoryTable, AdvisoryTableError, load_table
from pytest_gpuhost.criteria.maintenance import (
    CHECK_TABLE,
    judge_docker,
    judge_driver,
    judge_modules,
    judge_reboot,
    judge_table,
    judge_toolkit,
)
from pytest_gpuhost.diagnosis import fail, report_verdict
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.maintenance import ModuleFacts, RebootFacts
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.facts.toolkit import ToolkitFacts
from pytest_gpuhost.settings import Settings

pytestmark = pytest.mark.gpuhost_quick


@pytest.fixture(scope="session")
def gpuhost_advisories(
    pytestconfig: pytest.Config, gpuhost_settings: Settings
) -> AdvisoryTable | AdvisoryTableError:
    """The shipped table, or --gpuhost-advisories FILE (relative to where pytest was started)."""
    path: Path | None = None
    if gpuhost_settings.advisories:
        path = Path(pytestconfig.invocation_params.dir) / Path(gpuhost_settings.advisories).expanduser()
    try:
        return load_table(path)
    except AdvisoryTableError as exc:
        return exc


def table_or_skip(advisories: AdvisoryTable | AdvisoryTableError) -> AdvisoryTable:
    if isinstance(advisories, AdvisoryTableError):
        pytest.skip(f"needs the advisory table: {CHECK_TABLE} failed: {advisories}")
    return advisories


def test_advisory_table_current(
    gpuhost_advisories: AdvisoryTable | AdvisoryTableError, gpuhost_settings: Settings
) -> None:
    """The advisory table parses and is younger than --gpuhost-advisories-max-age; an old one warns."""
    assert CHECK_TABLE == "test_advisory_table_current"
    if isinstance(gpuhost_advisories, AdvisoryTableError):
        fail(
            f"the advisory table cannot be used: {gpuhost_advisories}",
            "a site copy (--gpuhost-advisories, ini gpuhost_advisories) that is missing, or that breaks "
            "the schema: every row needs a source (https://) and the date it was read",
            "fix the named row (docs/maintenance.md describes the schema), or drop the option to use the "
            "table shipped with the suite",
        )
    report_verdict(judge_table(gpuhost_advisories, date.today(), gpuhost_settings.advisories_max_age))


def test_toolkit_has_security_fixes(
    gpuhost_toolkit: ToolkitFacts,
    gpuhost_advisories: AdvisoryTable | AdvisoryTableError,
    gpuhost_settings: Settings,
) -> None:
    """The toolkit is no older than the fix of any known container escape or host-tampering advisory."""
    table = table_or_skip(gpuhost_advisories)
    report_verdict(judge_toolkit(gpuhost_toolkit, table, date.today(), gpuhost_settings.advisories_max_age))


def test_docker_release_line_maintained(
    gpuhost_engine: EngineFacts,
    gpuhost_toolkit: ToolkitFacts,
    gpuhost_advisories: AdvisoryTable | AdvisoryTableError,
    gpuhost_settings: Settings,
) -> None:
    """A warning when the engine's release line is no longer maintained upstream, or too old for CDI."""
    table = table_or_skip(gpuhost_advisories)
    report_verdict(
        judge_docker(
            gpuhost_engine.engine_version,
            gpuhost_settings.gpu_access,
            gpuhost_toolkit.daemon_config.data,
            table,
            date.today(),
            gpuhost_settings.advisories_max_age,
        )
    )


@pytest.mark.gpuhost_needs("driver")
def test_driver_branch_supported(
    gpuhost_facts: HostFacts,
    gpuhost_advisories: AdvisoryTable | AdvisoryTableError,
    gpuhost_settings: Settings,
) -> None:
    """A warning when the driver's branch is past end of life or missing from NVIDIA's support table."""
    table = table_or_skip(gpuhost_advisories)
    report_verdict(
        judge_driver(gpuhost_facts.driver_version, table, date.today(), gpuhost_settings.advisories_max_age)
    )


def test_no_reboot_pending(gpuhost_reboot: RebootFacts) -> None:
    """/var/run/reboot-required: a failure when NVIDIA driver packages wait for it, else a warning."""
    report_verdict(judge_reboot(gpuhost_reboot))


@pytest.mark.gpuhost_needs("driver")
def test_loaded_driver_matches_installed(gpuhost_driver_modules: ModuleFacts) -> None:
    """The running nvidia module is the one installed for this kernel (`modinfo nvidia`)."""
    report_verdict(judge_modules(gpuhost_driver_modules))
