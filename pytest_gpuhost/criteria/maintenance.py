"""The judgements of the periodic re-check (guide step 4.2), kept free of pytest for unit tests.

Each ``judge_*`` returns a ``Verdict``: notes and metrics to print, warnings, failures, or why the
check does not apply. Every finding that rests on the advisory table names the table's age, since
a clean result from an old table says little about advisories published after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from pytest_gpuhost.criteria.advisories import AdvisoryTable, Setting, ToolkitAdvisory
from pytest_gpuhost.criteria.health import Verdict
from pytest_gpuhost.facts.maintenance import REBOOT_PACKAGES, REBOOT_REQUIRED, ModuleFacts, RebootFacts
from pytest_gpuhost.facts.toolkit import RUNTIME_CONFIG, ToolkitFacts
from pytest_gpuhost.versions import Version, parse_version

DOCKER_INSTALL = "https://docs.docker.com/engine/install/"
DRIVER_DOCS = "https://docs.nvidia.com/datacenter/tesla/drivers/"
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1"
)
TOOLKIT_UPGRADE = (
    f"`sudo apt-get update && sudo apt-get install --only-upgrade {TOOLKIT_PACKAGES}` "
    f"(dnf/yum: `sudo dnf upgrade {TOOLKIT_PACKAGES}`), then `sudo systemctl restart docker`"
)
CDI_ENABLE = (
    "`sudo nvidia-ctk runtime configure --runtime=docker --cdi.enabled && sudo systemctl restart docker`"
)
RELOAD_MODULES = (
    "when no process uses the GPUs (`nvidia-smi --query-compute-apps=pid --format=csv,noheader` prints "
    "nothing; stop nvidia-persistenced, nvidia-fabricmanager and DCGM where they run), unload and reload "
    "the modules instead: `sudo modprobe -r nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe "
    "nvidia && sudo modprobe nvidia_uvm`"
)
CHECK_TABLE = "test_advisory_table_current"
DESIGNATION_NAMES = {
    "lts": "long-term support branch",
    "production": "production branch",
    "nfb": "new feature branch",
}


def table_age(table: AdvisoryTable, today: date, max_age_days: float) -> str:
    """The table's age for a finding, with a reminder when it is past ``max_age_days``."""
    age = table.describe_age(today)
    if table.stale(today, max_age_days):
        return f"{age}; older than the {max_age_days:g}-day limit, so newer advisories may be missing"
    return age


def judge_table(table: AdvisoryTable, today: date, max_age_days: float) -> Verdict:
    verdict = Verdict()
    verdict.metric("advisories.reviewed", table.reviewed.isoformat())
    verdict.metric("advisories.age_days", table.age_days(today))
    rows = len(table.toolkit) + len(table.docker_lines) + len(table.driver_branches)
    unconfirmed = sum(1 for row in table.toolkit if not row.origin.confirmed)
    verdict.notes.append(f"{table.describe_age(today)}: {rows} rows, {unconfirmed} marked unconfirmed")
    if table.age_days(today) < 0:
        verdict.warn(
            f"the advisory table's review date {table.reviewed.isoformat()} lies in the future ({table.path})",
            "a typo in [table] reviewed, or this host's clock is wrong",
            "fix `reviewed` in the table, or the host's clock (`timedatectl`)",
        )
    elif table.stale(today, max_age_days):
        verdict.warn(
            f"{table.describe_age(today)} is older than the {max_age_days:g}-day limit",
            "advisories, release lines and driver lifecycles published since the review are not in it: "
            "the version checks of this step may pass a host that is already vulnerable or unsupported",
            "review the table against its sources (each row names one; docs/maintenance.md) and update "
            "`reviewed`, or point --gpuhost-advisories (ini gpuhost_advisories) at a current copy; "
            "--gpuhost-advisories-max-age sets the limit",
        )
    return verdict


# -- the toolkit's security fixes -----------------------------------------------------------------


def _applied(setting: Setting | None, config: Mapping[str, Any] | None) -> bool | None:
    """Whether config.toml applies ``setting``; None when there is no setting to look for."""
    if setting is None:
        return None
    section = (config or {}).get(setting.section)
    value = section.get(setting.key) if isinstance(section, Mapping) else None
    if isinstance(setting.value, bool):
        return value is setting.value
    return value is not None and str(value).strip().lower() == str(setting.value).strip().lower()


def _mitigation_text(advisory: ToolkitAdvisory, config: Mapping[str, Any] | None) -> str | None:
    if not advisory.mitigation:
        return None
    applied = _applied(advisory.mitigation_setting, config)
    state = ""
    if applied is True:
        state = f" (this host's {RUNTIME_CONFIG} applies it)"
    elif applied is False:
        state = f" (not applied in this host's {RUNTIME_CONFIG})"
    return f"{', '.join(advisory.cves)}: {advisory.mitigation}{state}"


def judge_toolkit(toolkit: ToolkitFacts, table: AdvisoryTable, today: date, max_age_days: float) -> Verdict:
    verdict = Verdict()
    versions: dict[str, Version] = {}
    for name, tool in toolkit.tools.items():
        parsed = parse_version(tool.version) if tool.found else None
        if parsed is not None:
            versions[name] = parsed
    if not versions:
        verdict.skip = "needs the toolkit's version: test_toolkit_installed: no toolkit command reports one"
        return verdict
    oldest_name = min(versions, key=lambda n: versions[n])
    oldest = versions[oldest_name]
    verdict.metric("toolkit.version_checked", str(oldest))
    age = table_age(table, today, max_age_days)
    verdict.notes.append(f"toolkit {oldest} ({oldest_name}) against {len(table.toolkit)} advisories; {age}")
    missing = [a for a in table.toolkit if oldest < a.fixed]
    config = toolkit.runtime_config.data
    confirmed = [a for a in missing if a.origin.confirmed]
    unconfirmed = [a for a in missing if not a.origin.confirmed]
    found = f"NVIDIA Container Toolkit {oldest} ({oldest_name})"
    if confirmed:
        newest_fix = max(a.fixed for a in confirmed)
        mitigations = [m for m in (_mitigation_text(a, config) for a in confirmed) if m]
        until_then = (
            "; until then, NVIDIA's documented mitigations: " + "; ".join(mitigations) if mitigations else ""
        )
        fixes = ", ".join(f"{' '.join(a.cves)} (fixed in {a.fixed})" for a in confirmed)
        gains = " ".join(f"{', '.join(a.cves)}: {a.gain} ({a.bulletin})." for a in confirmed)
        verdict.fail(
            f"{found} lacks the fixes for {fixes}; {age}",
            gains,
            f"upgrade the toolkit to {newest_fix} or newer: {TOOLKIT_UPGRADE}{until_then}",
        )
    for advisory in unconfirmed:
        mitigation = _mitigation_text(advisory, config)
        verdict.warn(
            f"{found} may lack the fix for {', '.join(advisory.cves)} (the table says fixed in "
            f"{advisory.fixed}, marked unconfirmed: {advisory.origin.note}); {age}",
            f"{advisory.gain} ({advisory.bulletin})",
            f"read the bulletin and upgrade the toolkit: {TOOLKIT_UPGRADE}"
            + (f"; mitigation: {mitigation}" if mitigation else ""),
        )
    return verdict


# -- Docker Engine's release line ------------------------------------------------------------------


def _cdi_enabled(daemon_config: Mapping[str, Any] | None) -> bool:
    features = (daemon_config or {}).get("features")
    return isinstance(features, Mapping) and features.get("cdi") is True


def judge_docker(
    engine_version: str | None,
    gpu_access: str,
    daemon_config: Mapping[str, Any] | None,
    table: AdvisoryTable,
    today: date,
    max_age_days: float,
) -> Verdict:
    verdict = Verdict()
    version = parse_version(engine_version)
    if version is None:
        verdict.skip = f"the daemon reports no engine version ({engine_version!r})"
        return verdict
    age = table_age(table, today, max_age_days)
    # Lines kept alive for other distributors until a set day are no upgrade target.
    maintained = [
        line.label
        for line in table.docker_lines
        if line.status_on(today) == "maintained" and line.until is None
    ]
    upgrade = f"upgrade to a maintained release line ({', '.join(maintained) or 'see the table'}) from Docker's packages ({DOCKER_INSTALL})"
    line = table.line_for(version)
    if line is None:
        verdict.notes.append(
            f"Docker Engine {version} is in no release line of the table (newer than it?); {age}"
        )
    else:
        status = line.status_on(today)
        verdict.metric("docker.release_line", line.label)
        verdict.metric("docker.release_line_status", status)
        verdict.notes.append(f"Docker Engine {version}: {line.describe}, {status}; {age}")
        if status == "unmaintained":
            ended = f" since {line.until.isoformat()}" if line.until and today > line.until else ""
            verdict.warn(
                f"Docker Engine {version} is of {line.describe}, which upstream no longer maintains{ended} "
                f"({line.origin.source}); {age}",
                "an unmaintained line is out of scope for security advisories: fixes to the engine stop "
                "reaching this host, and so do the engine-side fixes of container escapes",
                upgrade,
            )
        elif status == "security":
            verdict.notes.append(f"{line.describe} receives critical security fixes only")
        if line.until is not None and today <= line.until:
            note = f" ({line.origin.note})" if line.origin.note else ""
            verdict.notes.append(f"{line.describe}: maintenance ends on {line.until.isoformat()}{note}")
    if gpu_access == "cdi":
        cdi = table.cdi
        if version < cdi.first:
            verdict.warn(
                f"Docker Engine {version} is older than {cdi.first}, the first release with CDI devices, and "
                f"--gpuhost-gpu-access is cdi ({cdi.origin.source}); {age}",
                "`docker run --device nvidia.com/gpu=...` is not understood by this engine: every container "
                "check of the cdi mode fails",
                f"upgrade Docker to {cdi.default} or newer (CDI on by default), or run with --gpuhost-gpu-access gpus",
            )
        elif version < cdi.default and not _cdi_enabled(daemon_config):
            verdict.warn(
                f"Docker Engine {version} has CDI as an opt-in feature (on by default from {cdi.default}), "
                f"daemon.json does not set features.cdi = true, and --gpuhost-gpu-access is cdi; {age}",
                "without the feature the daemon rejects CDI device names",
                f"{CDI_ENABLE}, or upgrade Docker to {cdi.default} or newer",
            )
    return verdict


# -- the driver branch ------------------------------------------------------------------------------


def judge_driver(
    driver_version: str | None, table: AdvisoryTable, today: date, max_age_days: float
) -> Verdict:
    verdict = Verdict()
    version = parse_version(driver_version)
    if version is None:
        verdict.skip = f"the driver reports no version ({driver_version!r})"
        return verdict
    number = version.release[0]
    age = table_age(table, today, max_age_days)
    supported = [
        f"R{b.branch} ({DESIGNATION_NAMES[b.designation]}, until {b.eol_text})"
        for b in sorted(table.driver_branches, key=lambda b: -b.branch)
        if today < b.eol and b.designation != "nfb"
    ]
    fix = (
        f"install a driver of a supported branch: {', '.join(supported) or 'see the table'} "
        f"({DRIVER_DOCS}), then reboot and re-run the suite"
    )
    verdict.metric("driver.branch", f"R{number}")
    row = table.branch(number)
    if row is not None:
        name = DESIGNATION_NAMES[row.designation]
        if today >= row.eol:
            verdict.metric("driver.branch_status", "end of life")
            verdict.warn(
                f"driver {version} is of branch R{number} ({name}), which reached end of life after "
                f"{row.eol_text} ({row.origin.source}); {age}",
                "an end-of-life branch gets no more security or bug fixes",
                fix,
            )
        else:
            verdict.metric("driver.branch_status", row.designation)
            verdict.notes.append(
                f"driver {version}: R{number} is a {name}, supported until {row.eol_text}; {age}"
            )
            if row.designation == "nfb":
                verdict.notes.append(
                    "a new feature branch is short-lived: production hosts usually run a long-term support "
                    "or production branch"
                )
        return verdict
    listed = [b.branch for b in table.driver_branches]
    if number < table.driver_unlisted_below:
        verdict.metric("driver.branch_status", "end of life")
        verdict.warn(
            f"driver {version} is of branch R{number}, older than every branch in NVIDIA's support table "
            f"({table.driver_origin.source}); {age}",
            "the branch has reached end of life: no more security or bug fixes",
            fix,
        )
    elif listed and number > max(listed):
        verdict.metric("driver.branch_status", "unknown")
        verdict.notes.append(f"driver {version}: R{number} is newer than every branch in the table; {age}")
    else:
        verdict.metric("driver.branch_status", "unlisted")
        verdict.warn(
            f"driver {version} is of branch R{number}, which NVIDIA's support table does not list "
            f"({table.driver_origin.source}); {age}",
            "a branch missing from the table is a short-lived new feature branch or has reached end of life",
            fix,
        )
    return verdict


# -- a pending reboot -------------------------------------------------------------------------------


def judge_reboot(reboot: RebootFacts) -> Verdict:
    verdict = Verdict()
    if reboot.error:
        verdict.skip = reboot.error
        return verdict
    verdict.metric("host.reboot_required", reboot.required)
    if not reboot.required:
        verdict.notes.append(f"no {REBOOT_REQUIRED}")
        return verdict
    listed = ", ".join(reboot.packages) if reboot.packages else f"no {REBOOT_PACKAGES} list"
    drivers = reboot.driver_packages
    if drivers:
        verdict.fail(
            f"a reboot is pending ({REBOOT_REQUIRED}) for NVIDIA driver packages: {', '.join(drivers)}",
            "the upgraded driver is installed but not running: its libraries and the loaded kernel module "
            "disagree (NVML and nvidia-smi fail with 'Driver/library version mismatch', containers cannot "
            "start with GPUs) until the host reboots",
            f"reboot in a maintenance window (`sudo reboot`); or, {RELOAD_MODULES}; then re-run the suite",
        )
    else:
        verdict.warn(
            f"a reboot is pending ({REBOOT_REQUIRED}): {reboot.message or 'System restart required'} ({listed})",
            "updated packages (often the kernel or libc) take effect only after a reboot: until then the "
            "host runs the old, possibly vulnerable code",
            "reboot in a maintenance window (`sudo reboot`), then re-run the suite",
        )
    return verdict


def judge_modules(modules: ModuleFacts) -> Verdict:
    verdict = Verdict()
    if modules.loaded is None:
        verdict.skip = "no loaded nvidia module reports a version in /proc/driver/nvidia/version"
        return verdict
    verdict.metric("driver.loaded_module", modules.loaded)
    verdict.metric("driver.installed_module", modules.installed)
    kernel = modules.kernel or "the running kernel"
    if modules.installed is None:
        if not modules.absent:
            verdict.skip = (
                f"cannot tell which nvidia module is installed for {kernel}: {modules.installed_from}"
            )
            return verdict
        verdict.warn(
            f"the nvidia module {modules.loaded} is loaded, but none is installed for kernel {kernel} "
            f"({modules.installed_from})",
            "the driver package was removed, or its module was not built for this kernel (DKMS): the "
            "next reboot leaves the host without a GPU driver",
            "reinstall the driver for this kernel before rebooting (`dkms status`; your distribution's "
            "nvidia-driver / nvidia-dkms package), then re-run the suite",
        )
        return verdict
    if modules.mismatch:
        verdict.fail(
            f"the loaded nvidia module is {modules.loaded}, but {modules.installed} is installed for kernel "
            f"{kernel} ({modules.installed_from})",
            "the driver was changed on disk and the old module still runs: user-space libraries and kernel "
            "module disagree ('Driver/library version mismatch' from NVML and nvidia-smi, containers fail "
            "to start with GPUs)",
            f"reboot in a maintenance window (`sudo reboot`); or, {RELOAD_MODULES}; then re-run the suite",
        )
    else:
        verdict.notes.append(
            f"loaded nvidia module {modules.loaded} is the installed one ({modules.installed_from})"
        )
    return verdict
