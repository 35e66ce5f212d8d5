"""The plugin as pytest sees it: its options, its inertness without --gpuhost, suite collection,
tier and GPU selection, and usage errors. Runs pytest in pytester against fake GPU hosts."""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
from pathlib import Path

import pytest
from pytester_support import GpuhostPytester

import pytest_gpuhost
from pytest_gpuhost.options import FAULT_SWITCH, OPTIONS, TIERS, OptionSpec
from pytest_gpuhost.session import suite_dir
from pytest_gpuhost.settings import Settings

H200_GPU0 = "gpu0-c5fa4f09"
H200_GPU1 = "gpu1-1b94c864"

SHOW_SETTINGS = """
import dataclasses


def test_show_settings(gpuhost_settings):
    print()
    for field in dataclasses.fields(gpuhost_settings):
        print(f"SETTING {field.name}={getattr(gpuhost_settings, field.name)!r}")
"""


def help_section(text: str, title: str) -> str:
    """The lines of ``--help`` from ``title`` to the next blank line."""
    start = text.index(title)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else None]


# -- options ------------------------------------------------------------------------------------


def test_options_are_in_the_gpuhost_group_and_prefixed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    section = help_section(result.stdout.str(), "GPU host conformance (pytest-gpuhost):")
    flags = re.findall(r"^  (--[\w-]+)", section, flags=re.MULTILINE)
    assert flags[0] == "--gpuhost"
    assert {"--gpuhost-expect-gpus", "--gpuhost-tier", "--gpuhost-gpus", "--gpuhost-timeout"} <= set(flags)
    assert all(flag.startswith("--gpuhost-") for flag in flags[1:]), flags
    assert set(flags) == {"--gpuhost", *(spec.flag for spec in OPTIONS)}
    # No gpuhost option leaks into another group.
    outside = result.stdout.str().replace(section, "")
    assert not re.search(r"^  --gpuhost", outside, flags=re.MULTILINE)


def test_every_option_has_an_ini_equivalent(pytester: pytest.Pytester) -> None:
    text = pytester.runpytest("--help").stdout.str()
    flags = re.findall(r"^  (--gpuhost[\w-]*)", text, flags=re.MULTILINE)
    assert flags
    for flag in flags:
        ini = flag.removeprefix("--").replace("-", "_")
        assert re.search(rf"^  {ini} \((string|bool|linelist)\):", text, flags=re.MULTILINE), ini


SHIPPED_H100_PROFILE = Path(pytest_gpuhost.__file__).parent / "profiles" / "h100.toml"
EXAMPLE_DOCKERFILE = Path(__file__).resolve().parent.parent / "examples" / "Dockerfile"


def _settings_field(spec: OptionSpec) -> str:
    return "burn_seconds" if spec.flag == "--gpuhost-burn" else spec.dest.removeprefix("gpuhost_")


def _sample(spec: OptionSpec) -> tuple[list[str], object]:
    """A valid non-default value of an option: its ini lines and the Settings value it gives."""
    samples: dict[str, tuple[list[str], object]] = {
        "--gpuhost-burn": (["90s"], 90.0),
        "--gpuhost-gpus": (["0"], "0"),
        "--gpuhost-expect-gpus": (["1"], 1),
        "--gpuhost-matmul-size": (["512"], 512),
        "--gpuhost-inject-fault": (["bfloat16:1:2", "float32:3:4"], ("bfloat16:1:2", "float32:3:4")),
        "--gpuhost-hardware-fault": (["flip:0", "slow:1:3"], ("flip:0", "slow:1:3")),
        "--gpuhost-profile": ([str(SHIPPED_H100_PROFILE)], (str(SHIPPED_H100_PROFILE),)),
        "--gpuhost-temp-limit": (["90"], 90.0),
        "--gpuhost-dockerfile": ([str(EXAMPLE_DOCKERFILE)], str(EXAMPLE_DOCKERFILE)),
    }
    if spec.flag in samples:
        return samples[spec.flag]
    if spec.choices:
        value = [c for c in spec.choices if c != spec.default][-1]
        return [value], value
    if spec.multiple:
        return ["A=1", "B=2"], ("A=1", "B=2")
    if spec.type is int:
        return ["3"], 3
    if spec.type is float:
        return ["2.5"], 2.5
    return ["sample-value"], "sample-value"


@pytest.mark.parametrize("spec", OPTIONS, ids=[spec.flag for spec in OPTIONS])
def test_ini_option_reaches_settings(
    gpuhost_pytester: GpuhostPytester, spec: OptionSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, expected = _sample(spec)
    if spec.flag in ("--gpuhost-inject-fault", "--gpuhost-hardware-fault"):
        monkeypatch.setenv(FAULT_SWITCH, "1")  # the test-only switch refuses to work without it
    assert expected != spec.default
    gpuhost_pytester.setup("h100")
    pytester = gpuhost_pytester.pytester
    ini_value = lines[0] if len(lines) == 1 else "\n    " + "\n    ".join(lines)
    pytester.makeini(f"[pytest]\n{spec.ini} = {ini_value}\n")
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    result = gpuhost_pytester.run_plain("-s", "test_show.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"SETTING {_settings_field(spec)}={expected!r}"])
    if spec.flag == "--gpuhost-burn":
        result.stdout.fnmatch_lines(["SETTING tier='burn'"])


def test_command_line_overrides_ini(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    pytester = gpuhost_pytester.pytester
    pytester.makeini("[pytest]\ngpuhost_tier = quick\ngpuhost_timeout = 7\n")
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    result = gpuhost_pytester.run_plain("-s", "--gpuhost-tier", "burn", "test_show.py")
    result.stdout.fnmatch_lines(["SETTING tier='burn'", "SETTING timeout=7.0"], consecutive=False)


def test_defaults_without_ini_or_flags(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makepyfile(test_show=SHOW_SETTINGS)
    result = gpuhost_pytester.run_plain("-s", "test_show.py")
    fields = {f.name for f in dataclasses.fields(Settings)}
    chosen = {"--gpuhost-burn", "--gpuhost-image", "--gpuhost-workload-image"}
    for spec in OPTIONS:
        if spec.flag not in chosen and _settings_field(spec) in fields:
            result.stdout.fnmatch_lines([f"SETTING {_settings_field(spec)}={spec.default!r}"])
    # The images left to the suite are chosen for the capture's driver (CUDA 13.0): docs/images.md.
    result.stdout.fnmatch_lines(["SETTING image='nvidia/cuda:13.0.1-base-ubuntu24.04'"])
    result.stdout.fnmatch_lines(["SETTING workload_image='pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime'"])
    result.stdout.fnmatch_lines(["SETTING burn_seconds=None"])
    result.stdout.fnmatch_lines(["SETTING tier='container'"])


def test_ini_expect_gpus_fails_the_count_check(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makeini("[pytest]\ngpuhost_expect_gpus = 2\n")
    result = gpuhost_pytester.run()
    result.assert_outcomes(failed=1, passed=9)
    result.stdout.fnmatch_lines(["FOUND: 1 GPU(s) found, 2 expected*"])


def test_ini_gpuhost_enables_the_suite(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    pytester = gpuhost_pytester.pytester
    pytester.makeini("[pytest]\ngpuhost = true\ngpuhost_tier = quick\n")
    result = gpuhost_pytester.runpytest("-k", "step_1_1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gpuhost: host fake-h100, tier quick, *"])
    assert (
        gpuhost_pytester.runpytest("-k", "step_1_1", "-o", "gpuhost=false").ret
        == pytest.ExitCode.NO_TESTS_COLLECTED
    )


# -- inert without --gpuhost --------------------------------------------------------------------

INERT_PROBE = """
import sys

import pytest

rc = pytest.main(sys.argv[1:])
light = {"pytest_gpuhost", "pytest_gpuhost.plugin", "pytest_gpuhost.options", "pytest_gpuhost.hookspecs"}
heavy = sorted(
    m for m in sys.modules
    if m in ("docker", "pynvml") or m.startswith(("docker.", "pytest_gpuhost.")) and m not in light
)
print("PLUGIN-LOADED", "pytest_gpuhost.plugin" in sys.modules)
print("HEAVY", heavy)
raise SystemExit(rc)
"""


def test_inert_without_gpuhost(pytester: pytest.Pytester) -> None:
    """Installed in every session of the environment, the plugin must cost nothing there."""
    pytester.makepyfile(test_unrelated="def test_ok():\n    assert 1 + 1 == 2\n")
    probe = pytester.makepyfile(probe=INERT_PROBE)
    result = pytester.run(sys.executable, str(probe), "test_unrelated.py", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*", "PLUGIN-LOADED True", "HEAVY []"])
    result.stdout.no_re_match_line(r"^gpuhost: .*")
    result.stdout.no_fnmatch_line("*= gpuhost*")


def test_inert_probe_sees_the_session_under_gpuhost(pytester: pytest.Pytester) -> None:
    """The probe above can fail: with --gpuhost the suite's machinery is imported."""
    probe = pytester.makepyfile(probe=INERT_PROBE)
    result = pytester.run(
        sys.executable,
        str(probe),
        "--gpuhost",
        "--gpuhost-tier",
        "quick",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
    )
    result.stdout.fnmatch_lines(["PLUGIN-LOADED True", "HEAVY [[]*'pytest_gpuhost.session'*[]]"])


def test_unrelated_session_has_no_gpuhost_output(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_re_match_line(r"^gpuhost: .*")
    result.stdout.no_fnmatch_line("*= gpuhost*")
    result.stdout.no_fnmatch_line("*test_step_*")


def test_fixtures_exist_only_under_gpuhost(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_uses(gpuhost_facts):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'gpuhost_facts' not found*"])


def test_entry_point_name_is_gpuhost(gpuhost_pytester: GpuhostPytester) -> None:
    """Loaded through the pytest11 entry point ``gpuhost``, which ``-p no:gpuhost`` disables."""
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain("--gpuhost-tier", "quick", "-k", "step_1_1", autoload=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["plugins:*gpuhost-*"])
    disabled = gpuhost_pytester.pytester.runpytest("-p", "no:gpuhost", "--gpuhost")
    assert disabled.ret == pytest.ExitCode.USAGE_ERROR
    disabled.stderr.fnmatch_lines(["*unrecognized arguments: --gpuhost*"])


def test_loading_the_module_by_name_as_well_is_not_a_traceback(gpuhost_pytester: GpuhostPytester) -> None:
    """``-p pytest_gpuhost.plugin`` with the package installed: pytest used to register the module
    a second time under its entry point and stop with "Plugin already registered"."""
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain(
        "-p", "pytest_gpuhost.plugin", "--gpuhost-tier", "quick", "-k", "step_1_1", autoload=True
    )
    result.assert_outcomes(passed=1)
    assert "already registered" not in result.stdout.str() + result.stderr.str()


# -- collection ---------------------------------------------------------------------------------

PRINT_ITEM_PATHS = """
def pytest_collection_finish(session):
    for item in session.items:
        print("ITEM", item.path, item.name)
"""


def test_no_paths_collects_the_shipped_suite(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100", extra_conftest=PRINT_ITEM_PATHS)
    result = gpuhost_pytester.run_plain("--collect-only", "-q")
    shipped = suite_dir()
    result.stdout.fnmatch_lines(
        [
            "*test_step_1_1_hardware.py::test_nvidia_gpus_on_pci_bus",
            "*test_step_2_1_driver.py::test_persistence_mode[[]gpu0-042f1913[]]",
        ],
        consecutive=False,
    )
    paths = re.findall(r"^ITEM (\S+) ", result.stdout.str(), flags=re.MULTILINE)
    assert paths
    assert all(path.startswith(str(shipped)) for path in paths), paths
    assert {f"{shipped}/test_step_1_1_hardware.py", f"{shipped}/test_step_2_1_driver.py"} <= set(paths)


def test_paths_given_replace_the_suite(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makepyfile(
        test_mine="def test_mine(gpuhost_facts):\n    assert gpuhost_facts.gpus\n"
    )
    result = gpuhost_pytester.run_plain("test_mine.py", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*test_step_*")


TIERED = """
import pytest


def test_unmarked():
    pass


@pytest.mark.gpuhost_quick
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


@pytest.mark.parametrize(
    ("args", "selected"),
    [
        ((), ("unmarked", "quick", "container")),
        (("--gpuhost-tier", "quick"), ("unmarked", "quick")),
        (("--gpuhost-tier", "container"), ("unmarked", "quick", "container")),
        (("--gpuhost-tier", "hardware"), ("unmarked", "quick", "container", "hardware")),
        # The burn leaves the hardware tier out: that tier is asked for by name.
        (("--gpuhost-tier", "burn"), ("unmarked", "quick", "container", "burn")),
        (("--gpuhost-burn", "1s"), ("unmarked", "quick", "container", "burn")),
    ],
    ids=["default", "quick", "container", "hardware", "burn", "burn-duration"],
)
def test_tier_selection(
    gpuhost_pytester: GpuhostPytester, args: tuple[str, ...], selected: tuple[str, ...]
) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makepyfile(test_tiers=TIERED)
    result = gpuhost_pytester.run_plain("--strict-markers", "-v", *args, "test_tiers.py")
    all_tiers = ("unmarked", *TIERS)
    result.assert_outcomes(passed=len(selected), deselected=len(all_tiers) - len(selected))
    for name in all_tiers:
        line = f"*test_tiers.py::test_{name} PASSED*"
        if name in selected:
            result.stdout.fnmatch_lines([line])
        else:
            result.stdout.no_fnmatch_line(line)


# -- GPU selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "chosen"),
    [
        ("1", (H200_GPU1,)),
        ("GPU-c5fa", (H200_GPU0,)),
        ("1b94c864", (H200_GPU1,)),
        ("0,GPU-1B94", (H200_GPU0, H200_GPU1)),
        ("all", (H200_GPU0, H200_GPU1)),
    ],
)
def test_gpu_selection(gpuhost_pytester: GpuhostPytester, selection: str, chosen: tuple[str, ...]) -> None:
    gpuhost_pytester.setup("h200x2")
    result = gpuhost_pytester.run("-v", "--gpuhost-gpus", selection)
    result.assert_outcomes(passed=7 + 3 * len(chosen))
    for gpu_id in (H200_GPU0, H200_GPU1):
        line = f"*::test_gpu_device_node[[]{gpu_id}[]] PASSED*"
        if gpu_id in chosen:
            result.stdout.fnmatch_lines([line])
        else:
            result.stdout.no_fnmatch_line(f"*{gpu_id}*")


@pytest.mark.parametrize("selection", ["5", "GPU-ffff", "0,7"])
def test_bad_gpu_selection_is_a_usage_error(gpuhost_pytester: GpuhostPytester, selection: str) -> None:
    gpuhost_pytester.setup("h200x2")
    result = gpuhost_pytester.run("--gpuhost-gpus", selection)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-gpuhost: --gpuhost-gpus '{selection}': no GPU matches *; this host has "
            "0 (GPU-c5fa4f09-8c6e-3c49-2d20-b7a173690e33), 1 (GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a)"
        ]
    )
    result.stdout.no_fnmatch_line("*passed*")


# -- usage errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (("--gpuhost-burn", "xyz"), "", "*--gpuhost-burn 'xyz': give a duration such as 60s, 5m or 2h*"),
        (("--gpuhost-expect-gpus", "-1"), "", "*--gpuhost-expect-gpus must be 0 or more*"),
        (("--gpuhost-expect-gpus", "two"), "", "*argument --gpuhost-expect-gpus: invalid int value: 'two'*"),
        (("--gpuhost-tier", "fast"), "", "*argument --gpuhost-tier: invalid choice: 'fast'*"),
        (("--gpuhost-timeout", "0"), "", "*--gpuhost-timeout must be positive*"),
        ((), "gpuhost_expect_gpus = two", "*ini option gpuhost_expect_gpus = 'two' is not a valid int*"),
        ((), "gpuhost_expect_gpus = -1", "*--gpuhost-expect-gpus must be 0 or more*"),
        (
            (),
            "gpuhost_tier = fast",
            "*ini option gpuhost_tier = 'fast': choose from quick, container, hardware, burn*",
        ),
        ((), "gpuhost_timeout = soon", "*ini option gpuhost_timeout = 'soon' is not a valid float*"),
        ((), "gpuhost_burn = forever", "*--gpuhost-burn 'forever': give a duration*"),
    ],
    ids=[
        "burn",
        "expect-negative",
        "expect-not-int",
        "tier",
        "timeout-zero",
        "ini-expect-not-int",
        "ini-expect-negative",
        "ini-tier",
        "ini-timeout",
        "ini-burn",
    ],
)
def test_bad_values_are_usage_errors(
    gpuhost_pytester: GpuhostPytester, args: tuple[str, ...], ini: str, message: str
) -> None:
    gpuhost_pytester.setup("h100")
    if ini:
        gpuhost_pytester.pytester.makeini(f"[pytest]\n{ini}\n")
    result = gpuhost_pytester.run_plain("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith("ERROR: ")
    result.stderr.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*collected*")


def test_usage_error_names_the_plugin(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run("--gpuhost-burn", "xyz")
    assert result.stderr.lines[0].startswith("ERROR: pytest-gpuhost: "), textwrap.shorten(
        result.stderr.str(), 200
    )
