"""The JSON report: written by ``pytest --gpuhost`` runs against a fake H100 host, checked against
its JSON Schema, also when the run is interrupted (Ctrl-C, SIGTERM) or spread over xdist workers.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from captures_support import FAKES, load_nvml_dump
from pytester_support import GpuhostPytester
from report_support import REGISTER, node_report, report_args, set_report_env, validate

from pytest_gpuhost.reporting.json_report import (
    OUTCOMES,
    SCHEMA,
    JsonReport,
    group_of,
    load_report,
    merge_reports,
    parse_diagnosis,
    parse_metrics,
    summarize,
    write_json,
)

jsonschema = pytest.importorskip("jsonschema")

H100_UUID: str = load_nvml_dump("h100")["gpus"][0]["uuid"]
CHECKS = """
import warnings

import pytest

from pytest_gpuhost.diagnosis import fail, warn

pytestmark = pytest.mark.gpuhost_quick


def test_measures(gpu):
    print("some other output")
    print(f"gpuhost.metric matmul.tflops=712.5 name='{gpu.name}' cuda=13.0 ok=true n=3")


def test_diagnosed(gpu):
    fail("GPU 0 is slow", "a power cap", "`nvidia-smi -pl 700`")


def test_skipped():
    pytest.skip("not on this host")


def test_warns():
    warn("a finding", "its cause", "its fix")


@pytest.fixture
def broken():
    raise RuntimeError("setup broke")


def test_errors(broken):
    pass


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_params(gpu, dtype):
    print(f"gpuhost.metric dtype={dtype}")
"""


def by_check(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["nodeid"].split("::")[-1]: r for r in document["results"]}


def run_checks(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch, checks: str, *args: str
) -> tuple[pytest.RunResult, Path]:
    out = gpuhost_pytester.pytester.path / "out" / "report.json"
    gpuhost_pytester.setup("h100", extra_conftest=REGISTER)
    gpuhost_pytester.pytester.makepyfile(test_checks=checks)
    set_report_env(monkeypatch, out)
    result = gpuhost_pytester.run_plain("test_checks.py", *report_args(out), *args)
    return result, out


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["a=1 b=2", " a=1\tb=x\xa0y ", "a=#1 b=c=d", "a=x\\ y", "a='p q' b=\"r s\"", "a=1  b"],
)
def test_metric_words_are_shlex_words_whichever_way_they_are_split(body: str) -> None:
    """Lines without quotes skip shlex (thousands in a fleet's report); their words are the same."""
    words = shlex.split(body)
    expected = {w.partition("=")[0]: w.partition("=")[2] for w in words if "=" in w}
    if not words[-1].count("="):
        expected["a"] += " " + words[-1]  # a word without = continues the value before it
    assert {k: str(v) for k, v in parse_metrics(f"gpuhost.metric {body}").items()} == expected


def test_metric_lines_become_typed_values() -> None:
    stdout = "\n".join(
        [
            "noise gpuhost.metric x=1",
            "gpuhost.metric matmul.tflops=712.5 count=3 ok=True flag=false",
            "gpuhost.metric name='NVIDIA H100 80GB HBM3' driver=580.159.04 cuda=13.0 docker.engine=28.3",
            "  gpuhost.metric compose.command=docker compose v2 compose.version=2.29.1",
            "gpuhost.metric big=1e3 neg=-4 nan=nan weird='unbalanced",
            "gpuhost.metricnot=1",
        ]
    )
    assert parse_metrics(stdout) == {
        "matmul.tflops": 712.5,
        "count": 3,
        "ok": True,
        "flag": False,
        "name": "NVIDIA H100 80GB HBM3",
        "driver": "580.159.04",
        "cuda": "13.0",
        "docker.engine": "28.3",
        "compose.command": "docker compose v2",
        "compose.version": "2.29.1",
        "big": 1000.0,
        "neg": -4,
        "nan": "nan",
        "weird": "'unbalanced",
    }


def test_a_diagnosis_is_split_into_its_parts() -> None:
    text = "FOUND: two GPUs\n  missing\nCAUSE: a riser\nFIX:   reseat it\n"
    assert parse_diagnosis(text) == {"found": "two GPUs\n  missing", "cause": "a riser", "fix": "reseat it"}
    assert parse_diagnosis("assert 1 == 2") is None


def test_the_group_is_the_suite_module() -> None:
    assert group_of("suites/test_step_2_1_driver.py::test_x[gpu0-042f1913]") == "test_step_2_1_driver"
    assert (
        group_of("/site/pytest_gpuhost/suites/test_zz_baseline.py::test_baseline_regressions")
        == "test_zz_baseline"
    )


def test_the_summary_counts_outcomes_per_host_and_group() -> None:
    results = [
        {"host": "a", "group": "g1", "outcome": "passed"},
        {"host": "a", "group": "g1", "outcome": "failed"},
        {"host": "b", "group": "g2", "outcome": "skipped"},
    ]
    summary = summarize(results)
    assert summary["total"] == 3
    assert summary["outcomes"] == {**dict.fromkeys(OUTCOMES, 0), "passed": 1, "failed": 1, "skipped": 1}
    assert summary["table"]["a"]["g1"]["failed"] == 1
    assert summary["table"]["b"]["g2"]["skipped"] == 1


# -- a run against a fake H100 -------------------------------------------------------------------


def test_a_run_writes_every_result(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = run_checks(gpuhost_pytester, monkeypatch, CHECKS)
    result.assert_outcomes(passed=4, failed=1, skipped=1, errors=1, warnings=1)
    result.stdout.fnmatch_lines([f"gpuhost: JSON report: {out}"])
    document = json.loads(out.read_text())
    validate(document)
    assert document["schema"] == SCHEMA
    assert (document["interrupted"], document["exit_status"], document["collected"]) == (False, 1, 7)
    (host,) = document["hosts"]
    assert host["host"] == "fake-h100"
    assert (host["driver"], host["cuda"], host["gpu_source"]) == ("580.159.04", "13.0", "nvml")
    assert host["gpus"] == [
        {
            "index": 0,
            "uuid": H100_UUID,
            "name": "NVIDIA H100 80GB HBM3",
            "pci": "0000:00:06.0",
            "memory_mib": 81559,
            "power_limit_w": 700.0,
            "compute_capability": "9.0",
        }
    ]
    results = by_check(document)
    measured = results["test_measures[gpu0-042f1913]"]
    assert measured["gpu"] == {"index": 0, "uuid": H100_UUID, "name": "NVIDIA H100 80GB HBM3"}
    assert (measured["check"], measured["group"], measured["host"], measured["tier"]) == (
        "test_measures",
        "test_checks",
        "fake-h100",
        "quick",
    )
    assert measured["metrics"] == {
        "matmul.tflops": 712.5,
        "name": "NVIDIA H100 80GB HBM3",
        "cuda": "13.0",
        "ok": True,
        "n": 3,
    }
    assert measured["outcome"] == "passed" and measured["duration_s"] >= 0
    diagnosed = results["test_diagnosed[gpu0-042f1913]"]
    assert diagnosed["outcome"] == "failed"
    assert diagnosed["diagnosis"] == {
        "found": "GPU 0 is slow",
        "cause": "a power cap",
        "fix": "`nvidia-smi -pl 700`",
    }
    assert results["test_skipped"]["skip_reason"] == "not on this host"
    assert results["test_skipped"]["gpu"] is None
    warned = results["test_warns"]
    assert warned["outcome"] == "passed"
    assert warned["warnings"] == [
        {
            "category": "GpuhostWarning",
            "message": "FOUND: a finding\nCAUSE: its cause\nFIX:   its fix",
            "diagnosis": {"found": "a finding", "cause": "its cause", "fix": "its fix"},
            "action": "none",
        }
    ]
    errored = results["test_errors"]
    assert errored["outcome"] == "error" and "RuntimeError: setup broke" in errored["message"]
    params = results["test_params[gpu0-042f1913-bfloat16]"]
    assert (params["params"], params["metrics"]) == ({"dtype": "bfloat16"}, {"dtype": "bfloat16"})
    assert document["summary"]["table"] == {
        "fake-h100": {
            "test_checks": {**dict.fromkeys(OUTCOMES, 0), "passed": 4, "failed": 1, "skipped": 1, "error": 1}
        }
    }


def test_the_shipped_suite_reports_its_checks(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The foundation checks of the real suite, grouped by guide step, on the H200 pair."""
    out = gpuhost_pytester.pytester.path / "suite.json"
    gpuhost_pytester.setup("h200x2", extra_conftest=REGISTER)
    set_report_env(monkeypatch, out)
    result = gpuhost_pytester.run(*report_args(out))
    assert result.ret == pytest.ExitCode.OK
    document = json.loads(out.read_text())
    validate(document)
    table = document["summary"]["table"]["fake-h200x2"]
    assert set(table) == {"test_step_1_1_hardware", "test_step_2_1_driver"}
    assert document["summary"]["outcomes"]["passed"] == document["summary"]["total"] > 10
    persistence = [r for r in document["results"] if r["check"] == "test_persistence_mode"]
    assert [r["gpu"]["index"] for r in persistence] == [0, 1]
    assert all(r["metrics"]["persistence_mode"] is True for r in persistence)


def test_without_a_path_nothing_is_written(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpuhost_pytester.setup("h100", extra_conftest=REGISTER)
    gpuhost_pytester.pytester.makepyfile(test_checks="def test_ok():\n    pass\n")
    set_report_env(monkeypatch, None)
    result = gpuhost_pytester.run_plain("test_checks.py")
    result.assert_outcomes(passed=1)
    assert "gpuhost: JSON" not in result.stdout.str()
    assert not list(gpuhost_pytester.pytester.path.rglob("*.json"))


# -- interrupted runs ----------------------------------------------------------------------------

INTERRUPTED = """
import os
import signal

import pytest

pytestmark = pytest.mark.gpuhost_quick


def test_first(gpu):
    print("gpuhost.metric matmul.tflops=700.0")


def test_stopped():
    {stop}


def test_never_reached():
    pass
"""


def test_ctrl_c_still_writes_the_partial_report(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    baseline = tmp_path / "baseline.json"
    out = gpuhost_pytester.pytester.path / "report.json"
    gpuhost_pytester.setup("h100", extra_conftest=REGISTER)
    gpuhost_pytester.pytester.makepyfile(test_checks=INTERRUPTED.format(stop="raise KeyboardInterrupt"))
    set_report_env(monkeypatch, out, save_baseline=baseline)
    with monkeypatch.context() as patch:
        patch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        result = gpuhost_pytester.pytester.runpytest(
            "-p", "pytest_gpuhost.plugin", "-p", "no:cacheprovider", "--gpuhost", "test_checks.py",
            *report_args(out, save_baseline=baseline),
            no_reraise_ctrlc=True,  # pytester re-raises the run's Ctrl-C in the calling test otherwise
        )  # fmt: skip
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            f"gpuhost: JSON partial report (interrupted): {out}",
            f"gpuhost: baseline NOT saved to {baseline}: the run was interrupted",
        ]
    )
    document = json.loads(out.read_text())
    validate(document)
    assert (document["interrupted"], document["exit_status"], document["collected"]) == (True, 2, 3)
    outcomes = {r["check"]: r["outcome"] for r in document["results"]}
    assert outcomes == {"test_first": "passed", "test_stopped": "interrupted"}
    assert by_check(document)["test_first[gpu0-042f1913]"]["metrics"] == {"matmul.tflops": 700.0}
    assert not baseline.exists()


def _subprocess_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest subprocess finds the fake pynvml and loads no other installed plugin."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_sigterm_still_writes_the_partial_report(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spot VM's eviction or a cancelled CI job: the session turns SIGTERM into Ctrl-C."""
    out = gpuhost_pytester.pytester.path / "report.json"
    gpuhost_pytester.setup("h100", extra_conftest=REGISTER)
    gpuhost_pytester.pytester.makepyfile(
        test_checks=INTERRUPTED.format(stop="os.kill(os.getpid(), signal.SIGTERM)")
    )
    set_report_env(monkeypatch, out)
    _subprocess_env(monkeypatch)
    result = gpuhost_pytester.pytester.runpytest_subprocess(
        "-p",
        "pytest_gpuhost.plugin",
        "-p",
        "no:cacheprovider",
        "--gpuhost",
        "test_checks.py",
        *report_args(out),
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = json.loads(out.read_text())
    validate(document)
    assert document["interrupted"] is True
    assert [r["outcome"] for r in document["results"]] == ["passed", "interrupted"]


def test_xdist_workers_report_to_the_controller(
    gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    out = gpuhost_pytester.pytester.path / "report.json"
    gpuhost_pytester.setup("h100", extra_conftest=REGISTER)
    gpuhost_pytester.pytester.makepyfile(test_checks=CHECKS)
    set_report_env(monkeypatch, out)
    _subprocess_env(monkeypatch)
    result = gpuhost_pytester.pytester.runpytest_subprocess(
        "-p", "pytest_gpuhost.plugin", "-p", "xdist.plugin", "-p", "no:cacheprovider", "-n", "2",
        "--gpuhost", "test_checks.py", *report_args(out),
    )  # fmt: skip
    result.assert_outcomes(passed=4, failed=1, skipped=1, errors=1)
    document = json.loads(out.read_text())
    validate(document)
    results = by_check(document)
    assert len(results) == 7
    measured = results["test_measures[gpu0-042f1913]"]
    assert measured["gpu"]["uuid"] == H100_UUID
    assert measured["metrics"]["matmul.tflops"] == 712.5
    assert results["test_diagnosed[gpu0-042f1913]"]["diagnosis"]["found"] == "GPU 0 is slow"
    assert results["test_skipped"]["skip_reason"] == "not on this host"
    assert results["test_params[gpu0-042f1913-float16]"]["params"] == {"dtype": "float16"}
    assert len(results["test_warns"]["warnings"]) == 1
    assert list(out.parent.glob("*.tmp")) == []


def test_a_failing_inventory_still_gives_a_report(tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("NVML hung")

    report = JsonReport(tmp_path / "r.json", broken)
    document = report.build(exitstatus=0)
    validate(document)
    (host,) = document["hosts"]
    assert host["error"] == "RuntimeError: NVML hung"
    assert host["gpus"] == [] and host["host"]


def test_nan_and_odd_values_are_written_as_valid_json(tmp_path: Path) -> None:
    report = JsonReport(
        tmp_path / "r.json", lambda: {"host": "h", "gpus": [], "power": float("nan"), "p": Path("/x")}
    )
    write_json(tmp_path / "r.json", report.build(exitstatus=0))
    document = json.loads((tmp_path / "r.json").read_text())
    validate(document)
    assert (document["hosts"][0]["power"], document["hosts"][0]["p"]) == (None, "/x")


def test_a_run_without_results_does_not_replace_a_baseline(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text("{}")
    report = JsonReport(None, lambda: {"host": "h", "gpus": []}, save_baseline=baseline)
    session: Any = SimpleNamespace(config=SimpleNamespace())
    report.pytest_sessionfinish(session, int(pytest.ExitCode.NO_TESTS_COLLECTED))
    assert report.written == [f"baseline NOT saved to {baseline}: the run ended with exit status 5"]
    report.written.clear()
    report.pytest_sessionfinish(session, int(pytest.ExitCode.OK))
    assert report.written == [f"baseline NOT saved to {baseline}: no check ran"]
    assert baseline.read_text() == "{}"


# -- fleets ----------------------------------------------------------------------------------------


def test_merged_reports_keep_each_nodes_host(tmp_path: Path) -> None:
    merged = merge_reports(
        [node_report(tmp_path, "node-a", "passed"), node_report(tmp_path, "node-b", "failed")]
    )
    validate(merged)
    assert [h["host"] for h in merged["hosts"]] == ["node-a", "node-b"]
    assert [r["host"] for r in merged["results"]] == ["node-a", "node-b"]
    assert (merged["exit_status"], merged["collected"], merged["interrupted"]) == (1, 2, False)
    table = merged["summary"]["table"]
    assert table["node-a"]["test_step_2_1_driver"]["passed"] == 1
    assert table["node-b"]["test_step_2_1_driver"]["failed"] == 1
    assert [m["hosts"] for m in merged["merged_from"]] == [["node-a"], ["node-b"]]
    assert load_report(tmp_path / "node-a.json")["hosts"][0]["host"] == "node-a"


def test_merging_refuses_two_reports_of_one_host(tmp_path: Path) -> None:
    first = node_report(tmp_path, "node-a", "passed")
    second = tmp_path / "again.json"
    second.write_text(first.read_text())
    with pytest.raises(ValueError, match=r"again\.json: host 'node-a' is already in .*node-a\.json"):
        merge_reports([first, second])


def test_merging_refuses_what_is_not_a_v1_report(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "pytest-gpuhost/report/v2"}))
    with pytest.raises(ValueError, match=r"other\.json: schema 'pytest-gpuhost/report/v2', expected"):
        merge_reports([other])
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    with pytest.raises(ValueError, match=r"garbage\.json: not a readable JSON report"):
        merge_reports([garbage])
    with pytest.raises(ValueError, match="no report to merge"):
        merge_reports([])
