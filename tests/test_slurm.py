"""The Slurm health-check example against a real slurmd: a failing check drains the node with
its action as the reason (``examples/slurm/gpuhost-healthcheck.sh``, docs/fleets.md).

The check that fails is a stand-in named like the suite's ``test_row_remapping``, so the table
gives it ``replace-gpu``; the script runs pytest-gpuhost exactly as on a node.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_support import SlurmLab, slurm_or_skip

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "slurm" / "gpuhost-healthcheck.sh"
FAKE_CHECK = """
from pytest_gpuhost.diagnosis import fail


def test_row_remapping():
    fail(
        "row remapping failed on GPU 5 (0000:9b:00.0)",
        "a memory bank ran out of spare rows",
        "take the GPU out of service and open an RMA",
    )
"""


@pytest.fixture
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmLab]:
    slurm_or_skip()
    lab = SlurmLab(tmp_path_factory.mktemp("slurm"))
    try:
        yield lab
    finally:
        lab.stop()


def test_a_failing_check_drains_the_node_with_its_action(slurm: SlurmLab, tmp_path: Path) -> None:
    check = tmp_path / "fake" / "test_fake_remap.py"
    check.parent.mkdir()
    check.write_text(FAKE_CHECK)
    reports = tmp_path / "reports"
    # slurmd runs the program with its own environment: a wrapper sets what the node's would.
    wrapper = tmp_path / "healthcheck.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export SLURM_CONF={slurm.conf} GPUHOST_PYTHON={sys.executable} GPUHOST_REPORTS={reports}\n"
        f"export GPUHOST_ARGS='{check}' PATH={Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f"exec {EXAMPLE}\n"
    )
    wrapper.chmod(0o755)
    slurm.start(wrapper)
    deadline = time.monotonic() + 90
    shown = ""
    while time.monotonic() < deadline:
        shown = slurm.show_node()
        if "DRAIN" in shown and "gpuhost:" in shown:
            break
        time.sleep(0.5)
    else:
        log = "\n".join(p.read_text() for p in reports.glob("*.log")) if reports.exists() else ""
        pytest.fail(f"not drained in time:\n{shown}\nslurmd:\n{slurm.log('slurmd')}\ncheck:\n{log}")
    assert re.search(r"State=\S*DRAIN", shown), shown
    reason = re.search(r"Reason=(.*?) \[", shown)
    assert reason is not None, shown
    assert reason.group(1) == "gpuhost: replace-gpu row remapping failed on GPU 5 (0000:9b:00.0)"
    assert (reports / f"gpuhost-{slurm.node}.json").exists()
