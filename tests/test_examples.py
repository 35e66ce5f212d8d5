"""The shipped examples work as documented: each CI file runs the suite with --junitxml and
publishes that same report, and the site profile loads and overrides what it says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_gpuhost.profiles import load_profiles

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CI = EXAMPLES / "ci"
_JUNITXML = re.compile(r"--junitxml[= ](\S+)")


def suite_report_paths(commands: list[str]) -> list[str]:
    """The --junitxml path of each command that runs `pytest --gpuhost` (through any venv path)."""
    paths = []
    for command in commands:
        for line in command.replace("\\\n", " ").splitlines():
            if re.search(r"(^|[\s/])pytest\s+--gpuhost(\s|$)", line):
                match = _JUNITXML.search(line)
                assert match, f"runs the suite without --junitxml: {line.strip()}"
                paths.append(match.group(1))
    return paths


def load_yaml(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((CI / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_gitlab_ci_publishes_the_junit_report() -> None:
    data = load_yaml("gitlab-ci.yml")
    job = data["gpuhost"]
    (path,) = suite_report_paths(job["script"])
    assert job["artifacts"]["reports"]["junit"] == path
    assert job["artifacts"]["when"] == "always"  # published when a check failed, too
    assert job["stage"] in data["stages"]


def test_github_actions_publishes_the_junit_report() -> None:
    data = load_yaml("github-actions.yml")
    assert "workflow_dispatch" in data.get("on", data.get(True, {}))  # YAML 1.1 reads `on` as True
    (job,) = data["jobs"].values()
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    steps = job["steps"]
    (path,) = suite_report_paths([s["run"] for s in steps if "run" in s])
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    upload, publish = uses["actions/upload-artifact"], uses["mikepenz/action-junit-report"]
    assert upload["if"] == publish["if"] == "always()"
    assert path.startswith(upload["with"]["path"].rstrip("/") + "/")
    assert publish["with"]["report_paths"] == path
    assert data["permissions"]["checks"] == "write"


def test_jenkinsfile_publishes_the_junit_report() -> None:
    text = (CI / "Jenkinsfile").read_text(encoding="utf-8")
    (path,) = suite_report_paths([text])
    post = text[text.index("post {") :]
    always = post[post.index("always {") :]
    published = re.findall(r"\bjunit\s+(?:testResults:\s*)?'([^']+)'", always)
    assert published == [path]
    assert text.count("{") == text.count("}")


def test_site_profile_overrides_the_h100_sxm() -> None:
    profiles = load_profiles([EXAMPLES / "profile.toml"])
    shipped = load_profiles()
    h100 = profiles["h100-sxm"]
    assert h100.temperature_limit_c == 80 < shipped["h100-sxm"].temperature_limit_c
    assert h100.power_limit_w == 600
    assert h100.baseline.performance == pytest.approx(0.05)
    assert h100.sources[-1].endswith("profile.toml")
    # Fields it does not name stay as shipped, and other models are untouched.
    assert h100.tflops == shipped["h100-sxm"].tflops
    assert h100.baseline.temperature_c == shipped["h100-sxm"].baseline.temperature_c
    assert profiles["h200"] == shipped["h200"]


def test_the_fleet_inventory_names_the_playbooks_group() -> None:
    """The inventory's group is the one the playbook runs on, as ansible-inventory parses it."""
    playbook = yaml.safe_load((EXAMPLES / "fleet" / "ansible-playbook.yml").read_text())
    group = playbook[0]["hosts"]
    if shutil.which("ansible-inventory") is None:
        pytest.skip("needs ansible-core (the test extra installs it)")
    listed = subprocess.run(
        ["ansible-inventory", "-i", str(EXAMPLES / "fleet" / "inventory.ini"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    inventory = json.loads(listed.stdout)
    assert inventory[group]["hosts"] == ["gpu01", "gpu02"]
    assert inventory["_meta"]["hostvars"]["gpu01"]["ansible_user"] == "ops"
