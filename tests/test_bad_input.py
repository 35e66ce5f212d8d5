"""Bad input is a usage error or a one-line diagnosis, never a traceback (issue 16, items 8 to 15).

Output paths and the Dockerfile are checked when the session starts; a write that still fails
at the end keeps the summary; option values out of range, a baseline that breaks its schema,
merges of the wrong files, unknown precondition names and bad ``--hosts`` are refused by name.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pytester_support import GpuhostPytester

from pytest_gpuhost.reporting.baseline import (
    BaselineError,
    baseline_schema_path,
    load_baseline,
    make_baseline,
)
from pytest_gpuhost.reporting.merge import main as merge_main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

jsonschema = pytest.importorskip("jsonschema")
PROJECT = Path(__file__).resolve().parent.parent
JUNIT_XSD = Path(__file__).parent / "data" / "junit-10.xsd"
IS_ROOT = os.geteuid() == 0

PASSING = "def test_ok():\n    pass\n"


def assert_usage_error(result: pytest.RunResult, *lines: str, ours: bool = True) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    prefix = "ERROR: pytest-gpuhost: " if ours else "ERROR: "
    assert result.stderr.lines[0].startswith(prefix), result.stderr.str()
    result.stderr.fnmatch_lines(list(lines))
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text
    result.stdout.no_fnmatch_line("*collected*")


# -- item 8: output paths ---------------------------------------------------------------------


OUTPUT_OPTIONS = ("--gpuhost-json", "--gpuhost-save-baseline", "--junitxml")


def _bad_output(kind: str, tmp_path: Path) -> tuple[str, str]:
    """A path that cannot be written, and the reason the message gives."""
    if kind == "folder":
        return str(tmp_path), "is a folder; give a file name"
    if kind == "under-proc":
        return "/proc/gpuhost-no-such-dir/report.out", "cannot be written: *"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "report.out"), "cannot be written: Permission denied"


@pytest.mark.parametrize("kind", ["folder", "under-proc", "read-only"])
@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
def test_an_unwritable_output_path_is_a_usage_error_at_the_start(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path, option: str, kind: str
) -> None:
    if kind == "read-only" and IS_ROOT:
        pytest.skip("root writes into a read-only folder: run as a user to see this case")
    path, reason = _bad_output(kind, tmp_path)
    gpuhost_pytester.setup("h100")
    started = time.monotonic()
    result = gpuhost_pytester.run_plain(f"{option}={path}")
    assert time.monotonic() - started < 5.0  # at the start: no check ran, no fact was gathered
    if option == "--junitxml" and kind == "folder":  # pytest refuses this one itself
        assert_usage_error(result, f"ERROR: --junitxml must be a filename, given: {path}", ours=False)
    else:
        assert_usage_error(result, f"ERROR: pytest-gpuhost: {option} {path}: {reason}")
    assert not list(Path("/proc").glob("gpuhost-no-such-dir"))


def test_a_missing_output_folder_is_created_at_the_end_not_the_start(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makepyfile(test_ok=PASSING)
    out = tmp_path / "new" / "deeper" / "report.json"
    result = gpuhost_pytester.run_plain(f"--gpuhost-json={out}", "test_ok.py")
    result.assert_outcomes(passed=1)
    assert json.loads(out.read_text())["results"]


LATE_FAILURE = """
import shutil
from pathlib import Path


def test_the_folders_go_away():
    for name in ("out-json", "out-junit", "out-baseline"):
        shutil.rmtree(name, ignore_errors=True)
        Path(name).write_text("a file where the report's folder was")
"""


def test_a_late_write_failure_is_one_line_and_keeps_the_summary(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    pytester = gpuhost_pytester.pytester
    pytester.makepyfile(test_late=LATE_FAILURE)
    for name in ("out-json", "out-junit", "out-baseline"):
        (pytester.path / name).mkdir()
    result = gpuhost_pytester.run_plain(
        "--gpuhost-json=out-json/r.json",
        "--junitxml=out-junit/j.xml",
        "--gpuhost-save-baseline=out-baseline/b.json",
        "test_late.py",
    )
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    for line in (
        "gpuhost: JUnit report NOT written to *out-junit/j.xml: *",
        "gpuhost: JSON report NOT written to out-json/r.json: *",
        "gpuhost: baseline NOT written to out-baseline/b.json: *",
        "*= 1 passed in *",
    ):
        result.stdout.fnmatch_lines([line])
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the reports asked for are missing


# -- item 9: baseline contents ----------------------------------------------------------------

BAD_BASELINES: dict[str, dict[str, Any]] = {
    "host-not-an-object": {"hosts": {"vm": 5}},
    "versions-not-an-object": {"hosts": {"vm": {"versions": ["580"]}}},
    "version-not-a-string": {"hosts": {"vm": {"versions": {"driver": 580}}}},
    "figure-not-a-number": {"hosts": {"vm": {"figures": {"gpu0/test_x/matmul.tflops": "fast"}}}},
    "figure-key-not-scope-check-metric": {"hosts": {"vm": {"figures": {"tflops": 1.0}}}},
}


@pytest.mark.parametrize("name", BAD_BASELINES)
def test_a_baseline_breaking_its_schema_is_refused_by_name(tmp_path: Path, name: str) -> None:
    document = {"schema": "pytest-gpuhost/baseline/v1", **BAD_BASELINES[name]}
    schema = json.loads(baseline_schema_path().read_text())
    with pytest.raises(jsonschema.ValidationError):  # the schema file and the reader agree
        jsonschema.validate(document, schema)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(document))
    with pytest.raises(
        BaselineError, match=rf"the baseline {re.escape(str(path))} does not follow its schema"
    ):
        load_baseline(path)


def test_a_saved_baseline_follows_its_schema() -> None:
    report = {
        "created": "2026-12-01T00:00:00+00:00",
        "hosts": [
            {"host": "vm", "driver": "580.159.04", "gpus": [{"index": 0, "name": "H200", "uuid": "GPU-1"}]}
        ],
        "results": [
            {"host": "vm", "gpu": 0, "nodeid": "x", "outcome": "passed", "metrics": {"matmul.tflops": 700.5}},
        ],
    }
    baseline = make_baseline(report)
    assert baseline["hosts"]["vm"]["figures"]
    jsonschema.validate(baseline, json.loads(baseline_schema_path().read_text()))


def test_a_baseline_with_wrong_contents_fails_its_check_with_a_diagnosis(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text('{"schema":"pytest-gpuhost/baseline/v1","hosts":{"vm":5}}')
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain(
        "--gpuhost-tier=quick", "-k", "test_baseline_regressions", f"--gpuhost-baseline={bad}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"FOUND: the baseline {bad} does not follow its schema *: hosts.vm is int*"])
    result.stdout.no_fnmatch_line("*AttributeError*")


# -- item 10: merge ---------------------------------------------------------------------------


@pytest.fixture
def node_junits(gpuhost_pytester: GpuhostPytester, tmp_path: Path) -> list[Path]:
    """The JUnit files of two nodes (the H100 and H200 captures)."""
    paths = []
    for capture in ("h100", "h200x2"):
        gpuhost_pytester.work = tmp_path / f"node-{capture}"
        gpuhost_pytester.setup(capture)
        junit = tmp_path / f"{capture}.xml"
        gpuhost_pytester.run(f"--junitxml={junit}")
        paths.append(junit)
    return paths


def test_merged_junit_is_valid_junit_10(node_junits: list[Path], tmp_path: Path) -> None:
    import xmlschema

    out = tmp_path / "fleet.xml"
    assert merge_main([str(out), *map(str, node_junits)]) == 0
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(out))


def test_merge_refuses_the_same_host_twice(
    node_junits: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet.xml"
    assert merge_main([str(out), str(node_junits[0]), str(node_junits[0])]) == 2
    assert "host 'fake-h100' is already in" in capsys.readouterr().err
    assert not out.exists()


def test_merge_refuses_a_junit_file_of_an_unrelated_run(
    node_junits: list[Path], pytester: pytest.Pytester, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_other=PASSING)
    other = tmp_path / "other.xml"
    pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={other}").assert_outcomes(passed=1)
    assert merge_main([str(tmp_path / "fleet.xml"), str(node_junits[0]), str(other)]) == 2
    assert "other.xml: testsuite 'pytest' is not from `pytest --gpuhost`" in capsys.readouterr().err


# -- item 11: option values -------------------------------------------------------------------

BROKEN_DOCKERFILE = "RUN echo no base image\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gpuhost-temp-limit", "-10"), "*--gpuhost-temp-limit -10: give a limit between 30 and 105 °C"),
        (("--gpuhost-temp-limit", "300"), "*--gpuhost-temp-limit 300: give a limit between 30 and 105 °C"),
        (("--gpuhost-burn", "0"), "*--gpuhost-burn '0': a burn must last more than 0 s*"),
        (("--gpuhost-burn", "-5m"), "*--gpuhost-burn '-5m': a duration cannot be negative*"),
        (("--gpuhost-burn=-5m",), "*--gpuhost-burn '-5m': a duration cannot be negative*"),
        (("--gpuhost-gpus", ""), "*--gpuhost-gpus '': give 'all' or a comma list*"),
        (("--gpuhost-gpus", " , "), "*--gpuhost-gpus ' , ': give 'all' or a comma list*"),
        (
            ("--gpuhost-dockerfile", "no/such/Dockerfile"),
            "*--gpuhost-dockerfile no/such/Dockerfile: no such file",
        ),
        (("--gpuhost-dockerfile", "."), "*--gpuhost-dockerfile .: not a file"),
        (
            ("--gpuhost-dockerfile", "Broken.Dockerfile"),
            "*--gpuhost-dockerfile Broken.Dockerfile: not a Dockerfile*FROM*",
        ),
        (
            ("--gpuhost-dockerfile", "Binary.Dockerfile"),
            "*--gpuhost-dockerfile Binary.Dockerfile: not a text file*",
        ),
    ],
    ids=[
        "temp-negative",
        "temp-300",
        "burn-zero",
        "burn-negative",
        "burn-negative-equals",
        "gpus-empty",
        "gpus-commas",
        "dockerfile-missing",
        "dockerfile-folder",
        "dockerfile-no-from",
        "dockerfile-binary",
    ],
)
def test_bad_option_values_are_usage_errors_naming_them(
    gpuhost_pytester: GpuhostPytester, args: tuple[str, ...], message: str
) -> None:
    gpuhost_pytester.setup("h100")
    pytester = gpuhost_pytester.pytester
    (pytester.path / "Broken.Dockerfile").write_text(BROKEN_DOCKERFILE)
    (pytester.path / "Binary.Dockerfile").write_bytes(b"\xff\xfe\x00FROM")
    assert_usage_error(gpuhost_pytester.run_plain("--collect-only", *args), message)


def test_a_good_dockerfile_with_args_and_comments_is_accepted(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    pytester = gpuhost_pytester.pytester
    (pytester.path / "Dockerfile").write_text(
        "# syntax=docker/dockerfile:1\n\nARG BASE=busybox\nfrom ${BASE}\n"
    )
    pytester.makepyfile(test_ok=PASSING)
    gpuhost_pytester.run_plain("--gpuhost-dockerfile=Dockerfile", "test_ok.py").assert_outcomes(passed=1)


# -- item 12: unknown precondition names, bad --hosts -----------------------------------------

UNKNOWN_NEED = """
import pytest


@pytest.mark.gpuhost_needs("gpu_lisitng")
def test_needs_a_typo():
    pass
"""


def test_an_unknown_precondition_name_is_a_usage_error_at_collection(
    gpuhost_pytester: GpuhostPytester,
) -> None:
    gpuhost_pytester.setup("h100")
    gpuhost_pytester.pytester.makepyfile(test_typo=UNKNOWN_NEED)
    result = gpuhost_pytester.run_plain("test_typo.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-gpuhost: test_typo.py::test_needs_a_typo: *gpuhost_needs('gpu_lisitng'): unknown*known: *gpu_listing*"
        ]
    )
    assert "KeyError" not in result.stdout.str() + result.stderr.str()


def test_a_bogus_hosts_spec_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest(
        "-p",
        "pytest_gpuhost.plugin",
        "-p",
        "testinfra.plugin",
        "-p",
        "no:cacheprovider",
        "--gpuhost",
        "--hosts=bogus://x",
    )
    assert_usage_error(result, "ERROR: pytest-gpuhost: --hosts bogus://x: *bogus*")


# -- item 13: a failed precondition fails the run ---------------------------------------------


def test_a_precondition_failed_fails_the_run_even_when_its_check_is_deselected(
    gpuhost_pytester: GpuhostPytester,
) -> None:
    gpuhost_pytester.setup(None)  # no GPU: test_nvidia_gpus_on_pci_bus would fail, but is deselected
    result = gpuhost_pytester.run_plain("--gpuhost-tier=quick", "-k", "test_step_2_1_driver")
    result.assert_outcomes(failed=0, passed=0, skipped=result.parseoutcomes()["skipped"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gpuhost: the run fails: * selected check(s) skipped because a precondition failed, e.g. *test_nvidia_gpus_on_pci_bus failed*"
        ]
    )


def test_a_host_meeting_the_preconditions_passes_the_same_selection(
    gpuhost_pytester: GpuhostPytester,
) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain("--gpuhost-tier=quick", "-k", "test_step_1_1_hardware")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.no_fnmatch_line("*the run fails*")


@pytest.mark.parametrize(
    ("reason", "fails"),
    [
        ("needs driver: test_nvidia_gpus_on_pci_bus failed: no NVIDIA GPU on the PCI bus", True),
        ("needs GPU containers: test_container_sees_all_gpus failed: the daemon refused", True),
        ("needs the toolkit: test_toolkit_installed failed: none of its commands is installed", True),
        ("no GPU to check: test_gpus_listed failed: NVML cannot be loaded", True),
        ("not applicable: NVML answers for the machine pytest runs on only", False),
        ("no baseline to compare with: --gpuhost-baseline FILE not given", False),
    ],
)
def test_which_skips_count_as_a_failed_precondition(reason: str, fails: bool) -> None:
    from pytest_gpuhost.session import PRECONDITION_SKIP

    assert bool(PRECONDITION_SKIP.match(reason)) is fails


# -- item 14: node ids do not depend on option values -----------------------------------------


def test_node_ids_do_not_depend_on_a_path_option(tmp_path: Path) -> None:
    """In a checkout, pytest chose /opt/x/bin as rootdir from ``--gpuhost-python /opt/x/bin/python3``."""
    python = tmp_path / "opt" / "x" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}

    def collect(*args: str) -> tuple[list[str], str]:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--gpuhost", "--gpuhost-tier=quick"]
        proc = subprocess.run(
            [*argv, "--co", "-q", *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240
        )
        return [line for line in proc.stdout.splitlines() if "::" in line], proc.stdout + proc.stderr

    ids, _ = collect()
    assert ids and all(line.startswith("suites/") for line in ids)
    with_path, text = collect("--gpuhost-python", str(python))
    assert with_path == ids, text[-2000:]
    assert str(python.parent) not in text


# -- item 15: the README's commands are CI's --------------------------------------------------


def test_ci_runs_the_readme_test_command_as_written() -> None:
    readme = (PROJECT / "README.md").read_text()
    block = readme.split("Run the plugin's own tests", 1)[1].split("```", 2)[1]
    commands = [part.strip() for part in block.strip().split("&&")]
    assert commands == ['pip install -e ".[test]"', "python -m pytest"]
    ci_lines = [line.strip() for line in (PROJECT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f".ci/run does not run {command!r} as written"


def test_the_build_needs_a_setuptools_that_reads_the_license_expression() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a license expression: setuptools >= 77 (PEP 639)
    for requirement in (
        *project["build-system"]["requires"],
        *project["project"]["optional-dependencies"]["test"],
    ):
        if requirement.startswith("setuptools"):
            assert requirement == "setuptools>=77"
    assert (
        "setuptools>=77" in project["project"]["optional-dependencies"]["test"]
    )  # test_packaging builds with it


def test_the_burn_tests_pass_without_torch() -> None:
    """The test extra does not install PyTorch: the burn tests that run the workload skip."""
    hide_torch = (
        "import sys; sys.modules['torch'] = None; import pytest; "
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-rs', {str(PROJECT / 'tests' / 'test_burn_run.py')!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", hide_torch], capture_output=True, text=True, timeout=240, cwd=PROJECT
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "PyTorch (CPU build) is not installed" in proc.stdout


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=cwd,
    )


# -- the suite: bad inputs and daemon faults in a row -----------------------------------------


class Answers500(http.server.BaseHTTPRequestHandler):
    """A Docker endpoint that answers every request with HTTP 500, and remembers what was asked."""

    seen: ClassVar[list[str]] = []

    def answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        body = b'{"message":"injected failure"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def answers_500() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _cases(work: Path, http500: str) -> list[tuple[list[str], dict[str, str], str, int | None]]:
    """(arguments, environment, text the message must name, exit code or None for any failure)."""
    (work / "Broken.Dockerfile").write_text(BROKEN_DOCKERFILE)
    (work / "bad-baseline.json").write_text('{"schema":"pytest-gpuhost/baseline/v1","hosts":{"vm":5}}')
    (work / "test_typo.py").write_text(UNKNOWN_NEED)
    usage = int(pytest.ExitCode.USAGE_ERROR)
    quick = ["--gpuhost-tier=quick"]
    engine = ["-k", "test_step_2_2_docker"]
    return [
        ([f"--gpuhost-json={work}"], {}, f"--gpuhost-json {work}", usage),
        (["--gpuhost-save-baseline=/proc/gpuhost-nope/b.json"], {}, "/proc/gpuhost-nope/b.json", usage),
        (["--junitxml=/proc/gpuhost-nope/j.xml"], {}, "/proc/gpuhost-nope/j.xml", usage),
        (["--gpuhost-temp-limit", "-10"], {}, "--gpuhost-temp-limit -10", usage),
        (["--gpuhost-temp-limit", "300"], {}, "--gpuhost-temp-limit 300", usage),
        (["--gpuhost-burn", "0"], {}, "--gpuhost-burn '0'", usage),
        (["--gpuhost-burn", "-5m"], {}, "--gpuhost-burn '-5m'", usage),
        (["--gpuhost-gpus", ""], {}, "--gpuhost-gpus ''", usage),
        (["--gpuhost-dockerfile", "no/such/Dockerfile"], {}, "no/such/Dockerfile", usage),
        (["--gpuhost-dockerfile", "Broken.Dockerfile"], {}, "Broken.Dockerfile", usage),
        (["--hosts=bogus://x"], {}, "--hosts bogus://x", usage),
        (["--gpuhost-tier", "fast"], {}, "'fast'", usage),
        (["--gpuhost-timeout", "0"], {}, "--gpuhost-timeout", usage),
        (["--gpuhost-matmul-size", "7"], {}, "--gpuhost-matmul-size", usage),
        (["--gpuhost-profile", "no-such-profile.toml"], {}, "no-such-profile.toml", usage),
        (["test_typo.py"], {}, "gpu_lisitng", usage),
        (
            [*quick, "-k", "test_baseline_regressions", "--gpuhost-baseline=bad-baseline.json"],
            {},
            "bad-baseline.json",
            1,
        ),
        ([*quick, "-k", "test_step_2_1_driver"], {}, "test_nvidia_gpus_on_pci_bus failed", 1),
        (engine, {"DOCKER_HOST": "tcp://127.0.0.1:1"}, "tcp://127.0.0.1:1", 1),
        (engine, {"DOCKER_HOST": "unix:///nonexistent.sock"}, "unix:///nonexistent.sock", 1),
        (engine, {"DOCKER_HOST": http500}, http500, 1),
    ]


def _labelled_by(pid: int) -> list[str]:
    """Containers on the machine's daemon that the pytest process ``pid`` labelled as its own."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=10)
        found = client.containers.list(all=True, filters={"label": f"io.pytest-gpuhost.pid={pid}"})
    except docker.errors.DockerException:
        return []  # no daemon here: nothing can be left in it
    return [c.name for c in found]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="the cases write under /proc")
def test_bad_inputs_and_daemon_faults_in_a_row(tmp_path: Path, answers_500: str) -> None:
    """On this GPU-less machine: each run fails with a message naming its input, no traceback,
    no INTERNALERROR, and nothing left behind in the daemon or the file system."""
    cases = _cases(tmp_path, answers_500)
    assert len(cases) >= 20
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "DOCKER_HOST", "DOCKER_CONTEXT")
    }
    before = set(tmp_path.iterdir())
    for args, extra, named, code in cases:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--gpuhost", *args]
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out, _ = proc.communicate(timeout=240)
        where = f"{' '.join(args)} {extra}: exit {proc.returncode}\n{out[-3000:]}"
        assert "Traceback" not in out and "INTERNALERROR" not in out, where
        assert proc.returncode != 0, where
        if code is not None:
            assert proc.returncode == code, where
        assert named in out, where
        assert not _labelled_by(proc.pid), where
    assert set(tmp_path.iterdir()) == before  # no probe file, no folder, no report
    assert not Path("/proc/gpuhost-nope").exists()
    assert Answers500.seen  # the proxy was asked
    assert not [r for r in Answers500.seen if r.startswith("POST") and "/containers/create" in r]
