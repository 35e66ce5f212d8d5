"""Guide step 4.2: the advisory table, version comparison, reboot and module facts, and the suite.

The facts are read from fake trees through ``LocalHost(root=...)`` and fake commands on the host
runner's PATH, as on a real host; the suite runs in pytester against the fake H100 host, and
against this machine's real Docker daemon for the release-line warning.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from captures_support import FAKE_BIN
from dockerlab import client_or_skip
from pytester_support import GpuhostPytester
from sshd_support import SshLab, sshd_or_skip

from pytest_gpuhost.criteria.advisories import AdvisoryTable, AdvisoryTableError, load_table, parse_table
from pytest_gpuhost.criteria.maintenance import (
    judge_docker,
    judge_driver,
    judge_modules,
    judge_reboot,
    judge_table,
    judge_toolkit,
)
from pytest_gpuhost.facts.maintenance import ModuleFacts, read_modules, read_reboot
from pytest_gpuhost.facts.toolkit import TOOLS, ConfigFile, ToolInfo, ToolkitFacts
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.versions import parse_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

SHIPPED = Path(__file__).resolve().parent.parent / "pytest_gpuhost" / "data" / "advisories.toml"
TODAY = date(2026, 12, 2)
KERNEL = "6.8.0-45-generic"
PROC_VERSION = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U16-I3-B13-4-1)\n"
    "GCC version:  gcc version 13.2.0 (Ubuntu 13.2.0-23ubuntu4)\n"
)
SUITE_K = "test_step_4_2"


def shipped_data() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(SHIPPED.read_text())
    return data


# -- the data file ------------------------------------------------------------------------------


def test_shipped_table_loads_and_every_row_is_sourced_and_dated() -> None:
    table = load_table()
    assert table.toolkit and table.docker_lines and table.driver_branches
    origins = [
        *(a.origin for a in table.toolkit),
        *(line.origin for line in table.docker_lines),
        *(b.origin for b in table.driver_branches),
        table.cdi.origin,
        table.driver_origin,
    ]
    for origin in origins:
        assert origin.source.startswith("https://")
        assert date(2024, 1, 1) <= origin.read <= table.reviewed
        assert origin.confirmed or origin.note
    # The raw file too: no row without its own source and read date.
    data = shipped_data()
    rows = [*data["toolkit"], *data["docker"]["line"], *data["driver"]["branch"]]
    assert all("source" in row and "read" in row for row in rows)


def test_shipped_toolkit_rows_name_real_cve_ids_and_the_issue_s_fixes() -> None:
    table = load_table()
    fixed = {cve: str(a.fixed) for a in table.toolkit for cve in a.cves}
    assert all(re.fullmatch(r"CVE-\d{4}-\d{4,}", cve) for cve in fixed)
    # The fixes the issue names, as NVIDIA's release notes and advisories give them.
    assert fixed["CVE-2024-0132"] == fixed["CVE-2024-0133"] == "1.16.2"
    assert fixed["CVE-2025-23359"] == "1.17.4"
    assert fixed["CVE-2025-23266"] == fixed["CVE-2025-23267"] == "1.17.8"
    assert all(a.bulletin.startswith("https://nvidia.custhelp.com/") for a in table.toolkit)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["toolkit"][0].pop("source"), r"\[\[toolkit\]\] #1: source must be"),
        (lambda d: d["toolkit"][1].update(read="yesterday"), r"\[\[toolkit\]\] #2: read must be a date"),
        (lambda d: d["toolkit"][0].update(cves=["CVE-24-1"]), r"cves must list CVE ids"),
        (lambda d: d["toolkit"][0].update(fixed="soon"), r"fixed = 'soon' is not a version"),
        (lambda d: d["toolkit"][0].update(confirmed=False, note=""), r"unconfirmed row needs a note"),
        (lambda d: d["docker"]["line"][0].update(status="fine"), r"status must be one of"),
        (lambda d: d["docker"]["line"][0].update(below="23.0"), r"either line .* or below"),
        (lambda d: d["driver"]["branch"][0].update(eol="2028"), r"eol must be a month"),
        (lambda d: d["driver"]["branch"][0].update(source="docs.nvidia.com"), r"https:// address"),
        (lambda d: d["table"].update(schema=2), r"this suite reads schema 1"),
        (lambda d: d.pop("driver"), r"\[driver\]: missing"),
    ],
)
def test_schema_errors_name_the_row(edit: Any, message: str) -> None:
    data = shipped_data()
    edit(data)
    with pytest.raises(AdvisoryTableError, match=message):
        parse_table(data, "site.toml")


def test_unreadable_and_invalid_files_are_table_errors(tmp_path: Path) -> None:
    with pytest.raises(AdvisoryTableError, match="cannot be read"):
        load_table(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[table\n")
    with pytest.raises(AdvisoryTableError, match="not valid TOML"):
        load_table(broken)


# -- versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.17.7", "1.17.8"),
        ("1.17.8~rc.1", "1.17.8"),  # a pre-release predates its release
        ("1.18.0-rc.1", "1.18.0~rc.2"),
        ("1.18.0~beta.3", "1.18.0~rc.1"),
        ("1.16.1-1", "1.16.2"),
        ("20.10.24+dfsg1", "23.0.0"),
        ("1:26.1.4-0ubuntu1~24.04", "5:28.2.0-1~ubuntu.24.04~noble"),
        ("1.9", "1.10"),
        ("v1.17.8", "1.18"),
    ],
)
def test_version_order(older: str, newer: str) -> None:
    low, high = parse_version(older), parse_version(newer)
    assert low is not None and high is not None
    assert low < high and not high < low


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.17.8-1", "1.17.8"),
        ("20.10.24+dfsg1", "20.10.24"),
        ("1.17", "1.17.0"),
        ("2:1.20.0-1.el9", "1.20.0"),
    ],
)
def test_distribution_suffixes_do_not_change_the_release(a: str, b: str) -> None:
    assert parse_version(a) == parse_version(b)


def test_not_a_version() -> None:
    assert parse_version(None) is None
    assert parse_version("unknown") is None


# -- the reboot flag ----------------------------------------------------------------------------


def write(root: Path, path: str, text: str | bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)


def test_reboot_for_nvidia_packages_fails_with_the_fix(tmp_path: Path) -> None:
    write(tmp_path, "/var/run/reboot-required", "*** System restart required ***\n")
    write(
        tmp_path,
        "/var/run/reboot-required.pkgs",
        "linux-image-6.8.0-47-generic\nnvidia-driver-580-open\nlibnvidia-compute-580\nnvidia-container-toolkit\n",
    )
    reboot = read_reboot(LocalHost(root=tmp_path))
    assert reboot.required and reboot.driver_packages == ("nvidia-driver-580-open", "libnvidia-compute-580")
    failure = judge_reboot(reboot).combined_failure()
    assert failure is not None
    assert "nvidia-driver-580-open, libnvidia-compute-580" in failure.found
    assert "nvidia-container-toolkit" not in failure.found  # the toolkit needs no reboot
    assert "sudo reboot" in failure.fix and "modprobe -r" in failure.fix


def test_reboot_for_other_packages_warns(tmp_path: Path) -> None:
    write(tmp_path, "/var/run/reboot-required", "*** System restart required ***\n")
    write(tmp_path, "/var/run/reboot-required.pkgs", "linux-image-6.8.0-47-generic\nlibc6\n")
    verdict = judge_reboot(read_reboot(LocalHost(root=tmp_path)))
    assert not verdict.failures
    assert len(verdict.warnings) == 1 and "linux-image-6.8.0-47-generic, libc6" in verdict.warnings[0].found


def test_no_reboot_flag_passes(tmp_path: Path) -> None:
    reboot = read_reboot(LocalHost(root=tmp_path))
    verdict = judge_reboot(reboot)
    assert not reboot.required and not verdict.failures and not verdict.warnings


# -- the module on disk -------------------------------------------------------------------------


def fake_bin(folder: Path, **scripts: str) -> Path:
    """Executables named by the keywords (``modinfo=...``), each printing its text."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, output in scripts.items():
        path = folder / name.replace("_", "-")
        assert "'" not in output
        path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\n")  # a builtin: PATH may hold nothing else
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def module_tree(root: Path, installed: str | None, folder: str = "updates/dkms") -> None:
    write(root, "/proc/driver/nvidia/version", PROC_VERSION)
    write(root, "/proc/sys/kernel/osrelease", KERNEL + "\n")
    (root / f"lib/modules/{KERNEL}/kernel").mkdir(parents=True, exist_ok=True)
    if installed is not None:
        blob = (
            b"\x7fELF\x00junk\x00license=Dual MIT/GPL\x00version="
            + installed.encode()
            + b"\x00srcversion=AB\x00"
        )
        write(root, f"/lib/modules/{KERNEL}/{folder}/nvidia.ko", blob)


def host_without_modinfo(root: Path) -> LocalHost:
    return LocalHost(root=root, env={"PATH": str(fake_bin(root.parent / "empty-bin"))})


def test_module_file_newer_than_the_loaded_module_fails(tmp_path: Path) -> None:
    module_tree(tmp_path / "root", installed="580.172.08")
    modules = read_modules(host_without_modinfo(tmp_path / "root"), timeout=10)
    assert (modules.loaded, modules.installed, modules.kernel) == ("580.159.04", "580.172.08", KERNEL)
    failure = judge_modules(modules).combined_failure()
    assert failure is not None
    assert "loaded nvidia module is 580.159.04, but 580.172.08 is installed" in failure.found
    assert f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko" in failure.found
    assert "sudo reboot" in failure.fix and "modprobe nvidia" in failure.fix


def test_module_file_of_the_loaded_version_passes(tmp_path: Path) -> None:
    module_tree(tmp_path / "root", installed="580.159.04", folder="kernel/drivers/video")
    verdict = judge_modules(read_modules(host_without_modinfo(tmp_path / "root"), timeout=10))
    assert not verdict.failures and not verdict.warnings and verdict.skip is None


def test_no_module_for_the_running_kernel_warns(tmp_path: Path) -> None:
    module_tree(tmp_path / "root", installed=None)
    modules = read_modules(host_without_modinfo(tmp_path / "root"), timeout=10)
    assert modules.absent
    verdict = judge_modules(modules)
    assert len(verdict.warnings) == 1 and "none is installed for kernel" in verdict.warnings[0].found


def test_compressed_module_without_modinfo_skips(tmp_path: Path) -> None:
    root = tmp_path / "root"
    module_tree(root, installed=None)
    write(root, f"/lib/modules/{KERNEL}/updates/dkms/nvidia.ko.zst", b"(\xb5/\xfd")
    verdict = judge_modules(read_modules(host_without_modinfo(root), timeout=10))
    assert verdict.skip is not None and "compressed" in verdict.skip


def test_modinfo_is_asked_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    module_tree(root, installed="580.159.04")  # the file agrees; modinfo, asked first, does not
    bin_dir = fake_bin(tmp_path / "bin", modinfo="575.57.08")
    modules = read_modules(LocalHost(root=root, env={"PATH": str(bin_dir)}), timeout=10)
    assert modules.installed == "575.57.08" and modules.installed_from == "`modinfo -F version nvidia`"
    assert judge_modules(modules).failures


def test_unloaded_driver_skips() -> None:
    verdict = judge_modules(ModuleFacts(None, "580.159.04", "modinfo", KERNEL))
    assert verdict.skip is not None


# -- judgements over the table --------------------------------------------------------------------


def toolkit_facts(version: str, config: Mapping[str, Any] | None = None) -> ToolkitFacts:
    tools = {name: ToolInfo(name, True, version) for name in TOOLS}
    runtime = ConfigFile("/etc/nvidia-container-runtime/config.toml", config is not None, config)
    return ToolkitFacts(tools, ConfigFile("/etc/docker/daemon.json", False), runtime)


@pytest.fixture(scope="module")
def table() -> AdvisoryTable:
    return load_table()


def test_toolkit_before_1_16_2_fails_with_every_later_fix(table: AdvisoryTable) -> None:
    failure = judge_toolkit(toolkit_facts("1.16.1-1"), table, TODAY, 90).combined_failure()
    assert failure is not None
    for cve in ("CVE-2024-0132", "CVE-2024-0133", "CVE-2025-23359", "CVE-2025-23266"):
        assert cve in failure.found
    assert "0 days old" in failure.found  # every finding names the table's age
    assert "host file system" in failure.cause  # what an attacker gains
    assert (
        "upgrade the toolkit to 1.17.8 or newer" in failure.fix
        and "apt-get install --only-upgrade" in failure.fix
    )
    assert "CDI is used are not affected" in failure.fix  # NVIDIA's documented mitigation
    assert "disable-cuda-compat-lib-hook = true" in failure.fix


def test_toolkit_1_17_7_lacks_only_the_1_17_8_fixes(table: AdvisoryTable) -> None:
    failure = judge_toolkit(toolkit_facts("1.17.7"), table, TODAY, 90).combined_failure()
    assert failure is not None
    assert "CVE-2025-23266" in failure.found and "CVE-2024-0132" not in failure.found


def test_applied_mitigation_is_named(table: AdvisoryTable) -> None:
    config = {"features": {"disable-cuda-compat-lib-hook": True}}
    failure = judge_toolkit(toolkit_facts("1.17.7", config), table, TODAY, 90).combined_failure()
    assert failure is not None and "applies it" in failure.fix


def test_current_toolkit_passes(table: AdvisoryTable) -> None:
    verdict = judge_toolkit(toolkit_facts("1.20.0"), table, TODAY, 90)
    assert not verdict.failures and not verdict.warnings
    assert any("0 days old" in note for note in verdict.notes)


def test_unconfirmed_rows_only_warn(table: AdvisoryTable) -> None:
    verdict = judge_toolkit(toolkit_facts("1.17.2"), table, TODAY, 90)
    assert any("CVE-2024-0136" in w.found and "unconfirmed" in w.found for w in verdict.warnings)
    failure = verdict.combined_failure()
    assert failure is not None and "CVE-2024-0136" not in failure.found


def test_docker_20_10_warns_and_cdi_mode_is_noted(table: AdvisoryTable) -> None:
    verdict = judge_docker("20.10.24+dfsg1", "cdi", None, table, TODAY, 90)
    found = [w.found for w in verdict.warnings]
    assert any("the releases before 23.0, which upstream no longer maintains" in f for f in found)
    assert any("older than 25.0, the first release with CDI devices" in f for f in found)
    assert "29.x" in verdict.warnings[0].fix and not verdict.failures


def test_docker_26_cdi_opt_in(table: AdvisoryTable) -> None:
    verdict = judge_docker("26.1.4", "cdi", {}, table, TODAY, 90)
    assert any("features.cdi" in w.found for w in verdict.warnings)
    enabled = judge_docker("26.1.4", "cdi", {"features": {"cdi": True}}, table, TODAY, 90)
    assert not any("features.cdi" in w.found for w in enabled.warnings)


def test_docker_29_passes_and_a_line_ends_on_its_day(table: AdvisoryTable) -> None:
    assert not judge_docker("29.1.3", "cdi", None, table, TODAY, 90).warnings
    assert not judge_docker("25.0.13", "gpus", None, table, date(2026, 12, 4), 90).warnings
    assert judge_docker("25.0.13", "gpus", None, table, date(2026, 12, 5), 90).warnings


@pytest.mark.parametrize(
    ("version", "warns", "status"),
    [
        ("580.159.04", False, "lts"),
        ("595.45.04", False, "production"),
        ("535.247.01", True, "end of life"),  # R535 ended in June 2026
        ("470.256.02", True, "end of life"),  # older than every listed branch
        ("570.195.03", True, "unlisted"),
        ("640.10", False, "unknown"),
    ],
)
def test_driver_branches(table: AdvisoryTable, version: str, warns: bool, status: str) -> None:
    verdict = judge_driver(version, table, TODAY, 90)
    assert bool(verdict.warnings) is warns and not verdict.failures
    assert ("driver.branch_status", status) in verdict.metrics


def test_old_table_warns(table: AdvisoryTable) -> None:
    later = table.reviewed + timedelta(days=120)
    verdict = judge_table(table, later, 90)
    assert len(verdict.warnings) == 1 and "older than the 90-day limit" in verdict.warnings[0].found
    assert "newer advisories may be missing" in judge_driver("580.159.04", table, later, 90).notes[0]
    assert not judge_table(table, later, 180).warnings


# -- the suite in pytester ----------------------------------------------------------------------

MAKE_HOST = """

def pytest_gpuhost_make_host(config):
    env = dict(os.environ)
    env["PATH"] = {path!r}
    return LocalHost(root={root!r}, env=env, name="fake-h100")
"""


def setup_host(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path, toolkit: str, modinfo: str
) -> tuple[Path, Path]:
    """The fake H100 with toolkit commands of ``toolkit`` and a modinfo printing ``modinfo``."""
    output = {
        "nvidia_ctk": f"NVIDIA Container Toolkit CLI version {toolkit}\ncommit: 0000000",
        "nvidia_container_runtime": f"NVIDIA Container Runtime version {toolkit}",
        "nvidia_container_runtime_hook": f"NVIDIA Container Runtime Hook version {toolkit}",
        "nvidia_container_cli": f"cli-version: {toolkit}\nlib-version: {toolkit}",
        "modinfo": modinfo,
    }
    bin_dir = fake_bin(tmp_path / "bin", **output)
    root = gpuhost_pytester.work / "root"  # where setup builds the fake host's tree
    path = os.pathsep.join([str(bin_dir), str(FAKE_BIN), os.environ.get("PATH", "")])
    host = gpuhost_pytester.setup("h100", extra_conftest=MAKE_HOST.format(path=path, root=str(root)))
    assert host.root == root
    return root, bin_dir


def run_step(gpuhost_pytester: GpuhostPytester, *args: str, select: str = "") -> pytest.RunResult:
    """This step's checks (those matching ``select`` of them) in the quick tier."""
    keyword = f"{SUITE_K} and ({select})" if select else SUITE_K
    return gpuhost_pytester.run_plain("--gpuhost-tier", "quick", "-k", keyword, "-rA", "-v", *args)


def test_suite_fails_an_old_toolkit_a_pending_driver_reboot_and_a_stale_module(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    root, _ = setup_host(gpuhost_pytester, tmp_path, toolkit="1.16.1", modinfo="580.172.08")
    write(root, "/var/run/reboot-required", "*** System restart required ***\n")
    write(root, "/var/run/reboot-required.pkgs", "nvidia-driver-580-open\n")
    result = run_step(gpuhost_pytester)
    result.stdout.fnmatch_lines(
        [
            "*test_advisory_table_current PASSED*",
            "*test_toolkit_has_security_fixes FAILED*",
            "*test_driver_branch_supported PASSED*",
            "*test_no_reboot_pending FAILED*",
            "*test_loaded_driver_matches_installed FAILED*",
        ],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(
        [
            "*FOUND: NVIDIA Container Toolkit 1.16.1 (*) lacks the fixes for CVE-2024-0132 (fixed in 1.16.2)*CVE-2025-23266*days old*",
            "*FOUND: a reboot is pending (/var/run/reboot-required) for NVIDIA driver packages: nvidia-driver-580-open",
            "*FOUND: the loaded nvidia module is 580.159.04, but 580.172.08 is installed*",
        ],
        consecutive=False,
    )
    assert "Traceback" not in result.stdout.str()


def test_suite_passes_a_maintained_host(gpuhost_pytester: GpuhostPytester, tmp_path: Path) -> None:
    setup_host(gpuhost_pytester, tmp_path, toolkit="1.20.0", modinfo="580.159.04")
    result = run_step(gpuhost_pytester, select="not docker_release_line")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*gpuhost.note advisory table reviewed *days old*"])


def test_site_table_that_is_old_warns_and_a_broken_one_fails_once(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    setup_host(gpuhost_pytester, tmp_path, toolkit="1.20.0", modinfo="580.159.04")
    old = (date.today() - timedelta(days=400)).isoformat()
    site = gpuhost_pytester.pytester.path / "site-advisories.toml"
    site.write_text(SHIPPED.read_text().replace('reviewed = "2026-12-02"', f'reviewed = "{old}"'))
    gpuhost_pytester.pytester.makeini("[pytest]\ngpuhost_advisories = site-advisories.toml\n")
    result = run_step(gpuhost_pytester, select="table_current or toolkit")
    result.stdout.fnmatch_lines(
        ["*advisory table reviewed " + old + "*site-advisories.toml*older than the 90-day limit*"]
    )
    result = run_step(gpuhost_pytester, "--gpuhost-advisories-max-age", "1000", select="table_current")
    result.assert_outcomes(passed=1)
    site.write_text(
        SHIPPED.read_text().replace('source = "https://github.com/NVIDIA', 'source = "github.com/NVIDIA', 1)
    )
    result = run_step(gpuhost_pytester, select="table_current or toolkit or driver_branch")
    result.assert_outcomes(failed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: the advisory table cannot be used: *site-advisories.toml: *toolkit* #1: source must be an https:// address*",
            "*needs the advisory table: test_advisory_table_current failed*",
        ],
        consecutive=False,
    )


def test_release_line_warning_fires_on_this_machine_s_docker(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    """CI's daemon is Docker 20.10, a line upstream stopped maintaining: the check must say so."""
    client = client_or_skip()
    version = str(client.version().get("Version", ""))
    parsed, unmaintained_below = parse_version(version), parse_version("23.0")
    assert parsed is not None and unmaintained_below is not None
    setup_host(gpuhost_pytester, tmp_path, toolkit="1.20.0", modinfo="580.159.04")
    result = run_step(gpuhost_pytester, "--gpuhost-gpu-access", "cdi", select="docker_release_line")
    result.assert_outcomes(passed=1)
    if parsed < unmaintained_below:
        result.stdout.fnmatch_lines(
            [
                f"*FOUND: Docker Engine {version} is of the releases before 23.0, which upstream no longer maintains*days old*",
                f"*FOUND: Docker Engine {version} is older than 25.0, the first release with CDI devices*",
            ],
            consecutive=False,
        )
    else:
        result.stdout.fnmatch_lines([f"*gpuhost.note Docker Engine {version}: *"])


def test_step_agrees_locally_and_over_ssh(
    gpuhost_pytester: GpuhostPytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A remote host's reboot flag, modinfo and versions are read through the host runner, as here."""
    sshd_or_skip()
    lab = SshLab(tmp_path_factory.mktemp("sshlab"))
    try:
        lab.start("node1")
        args = ["--gpuhost", "--gpuhost-tier", "quick", "-k", SUITE_K, "-v", "-rA"]
        local = gpuhost_pytester.runpytest(*args)
        remote = gpuhost_pytester.runpytest("-p", "testinfra.plugin", *args, *lab.args("node1"))
    finally:
        lab.stop()

    def by_check(result: pytest.RunResult) -> dict[str, str]:
        found = re.findall(r"::(test_\w+)(?:\[[^\]]+\])? (PASSED|FAILED|SKIPPED|ERROR)", result.stdout.str())
        return {name: outcome for name, outcome in found if name != "test_host_reachable"}

    seen_locally, seen_remotely = by_check(local), by_check(remote)
    assert len(seen_locally) == 6 and seen_remotely == seen_locally, remote.stdout.str()
    remote.stdout.fnmatch_lines(["*gpuhost.note*reboot-required*"])
    assert "Traceback" not in remote.stdout.str()


RECORDING_FLEET = """
import threading

_one_host = pytest_gpuhost_make_host


class Recording(LocalHost):
    def read_text(self, path):
        if path in ("/var/run/reboot-required", "/proc/driver/nvidia/version"):
            with open({log!r}, "a") as file:
                file.write(f"{{self.name}} {{path}} {{threading.current_thread().name}}\\n")
        return super().read_text(path)


def pytest_gpuhost_make_host(config):
    one = _one_host(config)
    return [Recording(root=one.root, env=one.env, name=name) for name in ("gpu01", "gpu02")]
"""


def test_a_fleet_reads_reboot_and_module_facts_for_all_hosts_before_the_checks(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    """Both hosts' facts come from the prefetch threads, once each, and every host gets its verdict."""
    log = tmp_path / "reads.log"
    setup_host(gpuhost_pytester, tmp_path, toolkit="1.20.0", modinfo="580.159.04")
    conftest = gpuhost_pytester.pytester.path / "conftest.py"
    conftest.write_text(conftest.read_text() + RECORDING_FLEET.format(log=str(log)))
    result = run_step(gpuhost_pytester, select="reboot_pending or loaded_driver")
    result.assert_outcomes(passed=4)
    for host in ("gpu01", "gpu02"):
        result.stdout.fnmatch_lines([f"*::test_no_reboot_pending[[]{host}[]] PASSED*"])
        result.stdout.fnmatch_lines([f"*::test_loaded_driver_matches_installed[[]{host}[]] PASSED*"])
    reads = [line.split() for line in log.read_text().splitlines()]
    reboot = sorted(host for host, path, _ in reads if path == "/var/run/reboot-required")
    assert reboot == ["gpu01", "gpu02"]  # once per host
    prefetched = {(host, path) for host, path, thread in reads if thread.startswith("gpuhost-host")}
    assert ("gpu01", "/var/run/reboot-required") in prefetched
    assert ("gpu02", "/var/run/reboot-required") in prefetched
    assert ("gpu01", "/proc/driver/nvidia/version") in prefetched
    assert ("gpu02", "/proc/driver/nvidia/version") in prefetched
