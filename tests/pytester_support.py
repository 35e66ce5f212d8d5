"""``pytest --gpuhost`` in ``pytester`` against a fake host built from a capture of a real GPU host.

Everything above the driver boundary, the plugin, its hooks and the shipped suite, runs for real.
The ``gpuhost_pytester`` fixture of ``conftest.py`` makes one ``GpuhostPytester`` per test.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from captures_support import DATA, FAKE_BIN, FAKES, build_driver_tree, load_nvml_dump

# The checks of guide steps 1.1 and 2.1, as ``-k`` selects them from the shipped suite.
FOUNDATION_STEPS = "test_step_1_1_hardware or test_step_2_1_driver"


_HOST_CONFTEST = """
import os

from pytest_gpuhost.hosts.host import LocalHost


def pytest_gpuhost_make_host(config):
    env = dict(os.environ)
    env["PATH"] = {path!r}
    return LocalHost(root={root!r}, env=env, name={name!r})
"""


@dataclass(frozen=True)
class FakeGpuHost:
    """The files a pytester run's fake host replays."""

    name: str
    root: Path
    nvml_dump: Path | None
    smi_xml: Path | None


class GpuhostPytester:
    """Runs ``pytest --gpuhost`` in ``pytester`` against a fake host built from a capture.

    ``setup`` writes the pytester conftest that implements ``pytest_gpuhost_make_host`` and sets
    the environment the fake NVML and nvidia-smi read; ``run`` runs pytest in-process.
    """

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
        self.pytester = pytester
        self.monkeypatch = monkeypatch
        self.work = work
        # The fake pynvml shadows nvidia-ml-py for the in-process runs (pytester restores both).
        monkeypatch.syspath_prepend(str(FAKES))
        monkeypatch.delitem(sys.modules, "pynvml", raising=False)
        for var in ("NVML", "NVML_INIT_ERROR", "NVML_HANG", "SMI_XML", "SMI_L", "SMI_FAIL", "SMI_SLEEP"):
            monkeypatch.delenv(f"GPUHOST_FAKE_{var}", raising=False)

    def setup(
        self,
        capture: str | None = "h100",
        *,
        nvml_edit: Callable[[dict[str, Any]], object] | None = None,
        smi_edit: Callable[[str], str] | None = None,
        nvml_init_error: int | None = None,
        nvml_hang: str | None = None,
        smi_fail: str | None = None,
        smi_missing: bool | None = None,
        extra_conftest: str = "",
        **tree: Any,
    ) -> FakeGpuHost:
        """Fake ``capture``'s host; ``None`` is a machine with no GPU, NVML library or nvidia-smi.

        ``nvml_edit`` changes the NVML capture in place and ``smi_edit`` the XML text, to derive
        failures in the real formats; ``extra_conftest`` is appended to the pytester conftest;
        ``tree`` goes to ``build_driver_tree``.
        """
        work = self.work
        root = build_driver_tree(work / "root", capture, **tree)
        nvml_dump = smi_xml = None
        if capture is not None:
            dump = load_nvml_dump(capture)
            if nvml_edit is not None:
                nvml_edit(dump)
            nvml_dump = work / "nvml-dump.json"
            nvml_dump.write_text(json.dumps(dump, indent=1))
            xml = (DATA / capture / "nvidia-smi-q-x.xml").read_text()
            smi_xml = work / "nvidia-smi-q-x.xml"
            smi_xml.write_text(smi_edit(xml) if smi_edit is not None else xml)
            self.monkeypatch.setenv("GPUHOST_FAKE_NVML", str(nvml_dump))
            self.monkeypatch.setenv("GPUHOST_FAKE_SMI_XML", str(smi_xml))
            self.monkeypatch.setenv("GPUHOST_FAKE_SMI_L", str(DATA / capture / "nvidia-smi-L.txt"))
        if nvml_init_error is not None:
            self.monkeypatch.setenv("GPUHOST_FAKE_NVML_INIT_ERROR", str(nvml_init_error))
        if nvml_hang is not None:
            self.monkeypatch.setenv("GPUHOST_FAKE_NVML_HANG", nvml_hang)
        if smi_fail is not None:
            self.monkeypatch.setenv("GPUHOST_FAKE_SMI_FAIL", smi_fail)
        if smi_missing is None:
            smi_missing = capture is None
        # A real nvidia-smi on this machine must never answer: its directories leave PATH.
        system = [
            d
            for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not Path(d, "nvidia-smi").exists()
        ]
        path = os.pathsep.join(system if smi_missing else [str(FAKE_BIN), *system])
        name = f"fake-{capture or 'nogpu'}"
        conftest = _HOST_CONFTEST.format(path=path, root=str(root), name=name)
        self.pytester.makeconftest(conftest + extra_conftest)
        return FakeGpuHost(name, root, nvml_dump, smi_xml)

    def run(self, *args: str) -> pytest.RunResult:
        """``pytest --gpuhost`` on the foundation checks (steps 1.1 and 2.1), in-process."""
        return self.run_plain("--gpuhost-tier", "quick", "-k", FOUNDATION_STEPS, *args)

    def run_plain(self, *args: str, autoload: bool = False) -> pytest.RunResult:
        """``pytest --gpuhost`` with only ``args``: no tier or check selection."""
        return self.runpytest("--gpuhost", *args, autoload=autoload)

    def runpytest(self, *args: str, autoload: bool = False) -> pytest.RunResult:
        """``pytest args`` in-process, with this plugin loaded.

        Other installed plugins stay out unless ``autoload``: in-process runs re-import them
        each time (hypothesis alone costs over a second), and they are not under test here.
        """
        if autoload:
            return self.pytester.runpytest("-p", "no:cacheprovider", *args)
        with self.monkeypatch.context() as patch:
            patch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
            return self.pytester.runpytest("-p", "pytest_gpuhost.plugin", "-p", "no:cacheprovider", *args)
