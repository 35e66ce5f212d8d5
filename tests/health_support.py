"""Helpers of the health tests (``test_health.py``, ``test_actions.py``): kernel logs and a host with them."""

from __future__ import annotations

from typing import Any

from captures_support import DATA
from pytester_support import GpuhostPytester

XID_79 = "[ 4254.197860] NVRM: Xid (PCI:0000:00:06): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."


def healthy_log(capture: str) -> str:
    """The kernel log of a capture's host: NVIDIA lines without an Xid."""
    return (DATA / capture / "kernel-log-nvidia.txt").read_text()


# Appended to the pytester conftest: the fake tools' folder goes first on the fake host's PATH.
_PREPEND_PATH = """

_gpuhost_make_host = pytest_gpuhost_make_host


def pytest_gpuhost_make_host(config):
    host = _gpuhost_make_host(config)
    host.env["PATH"] = {bin_dir!r} + os.pathsep + host.env["PATH"]
    return host
"""


def health_host(gp: GpuhostPytester, kernel_log: str | None, **setup: Any) -> None:
    """``gp.setup("h100")`` with a fake ``dmesg`` (and a journal with no entries) first on the host's PATH."""
    bin_dir = gp.work / "health-bin"
    bin_dir.mkdir()
    if kernel_log is None:
        script = "#!/bin/sh\necho 'dmesg: read kernel buffer failed: Operation not permitted' >&2\nexit 1\n"
    else:
        (gp.work / "dmesg.txt").write_text(kernel_log)
        script = f"#!/bin/sh\ncat {gp.work / 'dmesg.txt'}\n"
    (bin_dir / "dmesg").write_text(script)
    (bin_dir / "journalctl").write_text("#!/bin/sh\necho '-- No entries --'\n")
    for tool in ("dmesg", "journalctl"):
        (bin_dir / tool).chmod(0o755)
    gp.setup("h100", extra_conftest=_PREPEND_PATH.format(bin_dir=str(bin_dir)), **setup)
