"""Fakes of a GPU host's driver boundary, built from captures of real GPU hosts.

Only the driver is faked: ``/sys``, ``/proc`` and ``/dev`` as files below a temporary root, NVML
(``tests/fakes/pynvml.py``) and ``nvidia-smi`` (``tests/fakes/bin/nvidia-smi``). Everything above
them, the plugin, its hooks and the shipped suite, runs for real inside ``pytester``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.hosts.host import LocalHost

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
FAKES = TESTS / "fakes"
FAKE_BIN = FAKES / "bin"
CAPTURES = ("h100", "h200x2")
# The checks of guide steps 1.1 and 2.1, as ``-k`` selects them from the shipped suite.
FOUNDATION_STEPS = "test_step_1_1_hardware or test_step_2_1_driver"


def _preload_plugin_modules() -> None:
    """Import the plugin's lazily imported modules before any pytester run snapshots sys.modules.

    In-process pytester runs drop the modules a run imported, but ``from pytest_gpuhost import
    fixtures`` would still find the first run's module as a package attribute, holding that
    run's stash key. Imported here once, they stay for every run.
    """
    import pytest_gpuhost

    for info in pkgutil.walk_packages(pytest_gpuhost.__path__, "pytest_gpuhost.", onerror=lambda name: None):
        with contextlib.suppress(Exception):
            importlib.import_module(info.name)


_preload_plugin_modules()


@pytest.fixture(autouse=True)
def _nvml_alive_again() -> None:
    """A test whose fake NVML hangs marks NVML dead for the process: the next test starts afresh."""
    from pytest_gpuhost.facts.nvml import reset_nvml_dead

    reset_nvml_dead()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds and installs the wheel (~10 s); deselect with -m 'not packaging'"
    )


# -- reading the captures -----------------------------------------------------------------------


@dataclass(frozen=True)
class PciFunction:
    """One line of a capture's ``sys-pci-nvidia.txt``: a PCI function as sysfs shows it."""

    address: str
    vendor: str
    device: str
    class_code: str
    driver: str | None


def capture_pci(capture: str) -> list[PciFunction]:
    functions = []
    for line in (DATA / capture / "sys-pci-nvidia.txt").read_text().splitlines():
        if not line.strip():
            continue
        address, rest = line.split(maxsplit=1)
        fields = dict(re.findall(r"(\w+)=(\S+)", rest))
        functions.append(
            PciFunction(address, fields["vendor"], fields["device"], fields["class"], fields.get("driver"))
        )
    return functions


def capture_proc(capture: str) -> tuple[str, dict[str, str]]:
    """``/proc/driver/nvidia/version`` and each ``gpus/<address>/information`` of a capture."""
    text = (DATA / capture / "proc-driver-nvidia.txt").read_text()
    version, *sections = re.split(r"^== /proc/driver/nvidia/gpus/", text, flags=re.MULTILINE)
    gpus = {}
    for section in sections:
        header, _, body = section.partition("\n")
        gpus[header.split("/")[0]] = body
    return version, gpus


def capture_devnodes(capture: str) -> tuple[list[str], list[str]]:
    """The ``/dev/nvidia*`` names and the loaded nvidia modules of a capture."""
    nodes, modules = [], []
    for line in (DATA / capture / "devnodes-modules.txt").read_text().splitlines():
        if line.startswith("c") and " /dev/" in line:
            nodes.append(line.rsplit("/", 1)[-1])
        elif re.fullmatch(r"[a-z_]+", line.strip()):
            modules.append(line.strip())
    return nodes, modules


def load_nvml_dump(capture: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / capture / "nvml-dump.json").read_text())
    return data


# -- the fake driver file tree ------------------------------------------------------------------

# Sizes as a real /proc/modules shows them; only the names matter to the plugin.
_MODULE_LINES = {
    "nvidia": "nvidia 14376960 {users} {deps} Live 0x0000000000000000 (O)",
    "nvidia_uvm": "nvidia_uvm 2080768 0 - Live 0x0000000000000000 (O)",
    "nvidia_modeset": "nvidia_modeset 1814528 0 - Live 0x0000000000000000 (O)",
    "nvidia_drm": "nvidia_drm 122880 0 - Live 0x0000000000000000 (O)",
    "nouveau": "nouveau 3096576 0 - Live 0x0000000000000000",
}


def _proc_modules(modules: Sequence[str]) -> str:
    lines = []
    for name in modules:
        users = [m for m in modules if m.startswith("nvidia_")] if name == "nvidia" else []
        template = _MODULE_LINES.get(name, name + " 16384 0 - Live 0x0000000000000000")
        lines.append(template.format(users=len(users), deps="".join(f"{u}," for u in users) or "-"))
    return "".join(line + "\n" for line in lines)


def build_driver_tree(
    root: Path,
    capture: str | None,
    *,
    pci: Sequence[PciFunction] | None = None,
    extra_pci: Iterable[PciFunction] = (),
    modules: Sequence[str] | None = None,
    version_text: str | None = None,
    proc_gpus: Sequence[str] | None = None,
    dev_nodes: Sequence[str] | None = None,
) -> Path:
    """A host's ``/sys``, ``/proc`` and ``/dev`` below ``root``, as the capture shows them.

    Each keyword replaces that part of the capture (an empty sequence removes it); ``capture``
    None is a machine without NVIDIA hardware or driver. The layout is the kernel's: the device
    directory under ``/sys/devices``, a ``/sys/bus/pci/devices`` link to it, and ``driver`` a
    link to ``/sys/bus/pci/drivers/<name>``.
    """
    if capture is not None:
        version, gpus = capture_proc(capture)
        nodes, loaded = capture_devnodes(capture)
        pci = capture_pci(capture) if pci is None else pci
        modules = loaded if modules is None else modules
        version_text = version if version_text is None else version_text
        proc_gpus = list(gpus) if proc_gpus is None else proc_gpus
        dev_nodes = nodes if dev_nodes is None else dev_nodes
    else:
        gpus = {}
    functions = [*(pci or ()), *extra_pci]
    root.mkdir(parents=True, exist_ok=True)
    devices = root / "sys/devices/pci0000:00"
    links = root / "sys/bus/pci/devices"
    links.mkdir(parents=True, exist_ok=True)
    for fn in functions:
        device = devices / fn.address
        device.mkdir(parents=True)
        (device / "vendor").write_text(fn.vendor + "\n")
        (device / "device").write_text(fn.device + "\n")
        (device / "class").write_text(fn.class_code + "\n")
        if fn.driver:
            (root / "sys/bus/pci/drivers" / fn.driver).mkdir(parents=True, exist_ok=True)
            (device / "driver").symlink_to(f"../../../bus/pci/drivers/{fn.driver}")
        (links / fn.address).symlink_to(f"../../../devices/pci0000:00/{fn.address}")
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "modules").write_text(_proc_modules(modules or ()))
    for name in modules or ():
        (root / "sys/module" / name).mkdir(parents=True, exist_ok=True)
        (root / "sys/module" / name / "initstate").write_text("live\n")
    if version_text:
        (proc / "driver/nvidia").mkdir(parents=True, exist_ok=True)
        (proc / "driver/nvidia/version").write_text(version_text)
    for address in proc_gpus or ():
        info = proc / "driver/nvidia/gpus" / address
        info.mkdir(parents=True)
        (info / "information").write_text(gpus.get(address, ""))
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for node in dev_nodes or ():
        (dev / node).touch()
    if dev_nodes:
        (dev / "nvidia-caps").mkdir(exist_ok=True)
    return root


# -- a GPU host for pytester runs ---------------------------------------------------------------

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


@pytest.fixture
def gpuhost_pytester(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> GpuhostPytester:
    return GpuhostPytester(pytester, monkeypatch, tmp_path_factory.mktemp("gpuhost-fake"))


@pytest.fixture
def fake_nvml() -> Any:
    """The fake pynvml as a fresh module, for ``read_nvml(loader=...)``; not left in sys.modules."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpuhost_fake_pynvml", FAKES / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LocalAsRemote(LocalHost):
    """This machine, taking the remote path of the code (one command instead of many reads)."""

    remote = True
