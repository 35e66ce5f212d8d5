"""Unit tests of the fact gatherers over captures of real GPU hosts, and of the fakes themselves."""

from __future__ import annotations

import ast
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from captures_support import (
    CAPTURES,
    DATA,
    FAKE_BIN,
    PciFunction,
    build_driver_tree,
    capture_devnodes,
    capture_pci,
    capture_proc,
    load_nvml_dump,
)
from hosts_support import LocalAsRemote

from pytest_gpuhost.facts import nvml as nvml_facts
from pytest_gpuhost.facts.gather import (
    CHECK_DRIVER,
    CHECK_DRIVER_VERSION_FILE,
    CHECK_GPU_PRESENT,
    CHECK_NVML,
    derive_preconditions,
    gather_host_facts,
)
from pytest_gpuhost.facts.model import GpuInfo, KernelFacts, PciGpu, normalize_pci_bus_id
from pytest_gpuhost.facts.nvml import read_nvml
from pytest_gpuhost.facts.smi import classify_smi_failure, parse_smi_xml, read_smi
from pytest_gpuhost.facts.system import gather_kernel, parse_module_version, scan_pci
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

MIB = 1024 * 1024


def smi_xml(capture: str) -> str:
    return (DATA / capture / "nvidia-smi-q-x.xml").read_text()


# -- nvidia-smi -q -x ---------------------------------------------------------------------------


def test_parse_smi_xml_h100() -> None:
    listing = parse_smi_xml(smi_xml("h100"))
    assert listing.ok and listing.source == "nvidia-smi"
    assert (listing.driver_version, listing.cuda_driver_version) == ("580.159.04", "13.0")
    (gpu,) = listing.gpus
    assert gpu.index == 0
    assert gpu.uuid == "GPU-042f1913-64c6-43ac-27c6-466e2d9041b0"
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.pci_bus_id == "0000:00:06.0"
    assert gpu.memory_total_mib == 81559
    assert gpu.power_limit_w == 700.0
    assert gpu.minor_number == 0
    assert gpu.temperature_c == 36
    assert (gpu.persistence_mode, gpu.mig_current, gpu.mig_pending) == (True, False, False)
    # The v13 DTD gives thresholds relative to T.Limit only: no absolute value to report.
    assert gpu.temp_slowdown_c is None
    assert gpu.test_id == "gpu0-042f1913"


def test_parse_smi_xml_h200x2() -> None:
    listing = parse_smi_xml(smi_xml("h200x2"))
    assert [g.uuid for g in listing.gpus] == [
        "GPU-c5fa4f09-8c6e-3c49-2d20-b7a173690e33",
        "GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a",
    ]
    assert [g.pci_bus_id for g in listing.gpus] == ["0000:00:06.0", "0000:00:07.0"]
    assert [g.memory_total_mib for g in listing.gpus] == [143771, 143771]
    assert [g.minor_number for g in listing.gpus] == [0, 1]
    assert {g.power_limit_w for g in listing.gpus} == {700.0}
    assert (listing.driver_version, listing.cuda_driver_version) == ("580.159.04", "13.0")


@pytest.mark.parametrize("capture", CAPTURES)
def test_smi_xml_agrees_with_the_nvml_capture(capture: str) -> None:
    """Both captures come from one host: the parsers must read the same GPUs out of them."""
    dump = load_nvml_dump(capture)
    listing = parse_smi_xml(smi_xml(capture))
    assert listing.driver_version == dump["driver"]
    assert len(listing.gpus) == dump["count"]
    for gpu, raw in zip(listing.gpus, dump["gpus"], strict=True):
        assert gpu.uuid == raw["uuid"]
        assert gpu.name == raw["name"]
        assert gpu.memory_total_mib == raw["memory"]["total"] // MIB
        assert gpu.pci_bus_id == normalize_pci_bus_id(raw["pci"]["busId"])
        assert gpu.minor_number == raw["minor"]


def test_parse_smi_xml_rejects_broken_xml() -> None:
    listing = parse_smi_xml(smi_xml("h100")[:5000])
    assert not listing.ok
    assert listing.error_kind == "parse"
    assert listing.error and listing.error.startswith("unreadable XML")


def test_parse_smi_xml_not_available_fields_are_none() -> None:
    xml = smi_xml("h100").replace("<total>81559 MiB</total>", "<total>N/A</total>")
    xml = xml.replace(
        "<persistence_mode>Enabled</persistence_mode>", "<persistence_mode>[N/A]</persistence_mode>"
    )
    (gpu,) = parse_smi_xml(xml).gpus
    assert gpu.memory_total_mib is None
    assert gpu.persistence_mode is None


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        (
            "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.159",
            "version-mismatch",
        ),
        (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.",
            "no-driver",
        ),
        ("No devices were found", "no-driver"),
        ("Failed to initialize NVML: Insufficient Permissions", "permission"),
        ("Segmentation fault", "error"),
    ],
)
def test_classify_smi_failure(output: str, kind: str) -> None:
    assert classify_smi_failure(output) == kind


# -- PCI addresses and the kernel -------------------------------------------------------------


@pytest.mark.parametrize(
    ("bus_id", "expected"),
    [
        ("00000000:00:06.0", "0000:00:06.0"),  # NVML and nvidia-smi
        ("0000:00:06.0", "0000:00:06.0"),  # sysfs, NVML's busIdLegacy
        ("00000000:3B:00.0", "0000:3b:00.0"),  # upper case hex
        ("00000001:C1:00.0", "0001:c1:00.0"),  # a second PCI domain
        ("3b:00.0", "0000:3b:00.0"),  # no domain
        (" 0000:00:07.0\n", "0000:00:07.0"),
    ],
)
def test_normalize_pci_bus_id(bus_id: str, expected: str) -> None:
    assert normalize_pci_bus_id(bus_id) == expected


@pytest.mark.parametrize("capture", CAPTURES)
def test_parse_module_version_open_module(capture: str) -> None:
    version_text, _ = capture_proc(capture)
    assert version_text.startswith("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64")
    assert parse_module_version(version_text) == load_nvml_dump(capture)["driver"]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n",
            "535.104.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.86.15  Release Build  "
            "(dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 23:17:51 UTC 2025\n",
            "570.86.15",
        ),
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n",
            "470.256.02",
        ),
        ("GCC version:  gcc version 15.3.0 (GCC)\n", None),
        ("", None),
    ],
)
def test_parse_module_version(text: str, version: str | None) -> None:
    assert parse_module_version(text) == version


def test_scan_pci_keeps_only_nvidia_gpus(tmp_path: Path) -> None:
    """An NVIDIA audio function (0x0403), an NVSwitch (0x0680) and a virtio NIC are not GPUs."""
    others = [
        PciFunction("0000:00:01.0", "0x1af4", "0x1041", "0x020000", "virtio-pci"),
        PciFunction("0000:00:06.1", "0x10de", "0x22e8", "0x040300", "snd_hda_intel"),
        PciFunction("0000:00:08.0", "0x10de", "0x22a3", "0x068000", "nvidia"),
        PciFunction("0000:00:09.0", "0x10de", "0x2684", "0x030000", None),  # a VGA GPU, no driver
    ]
    root = build_driver_tree(tmp_path / "root", "h200x2", extra_pci=others)
    found = scan_pci(LocalHost(root=root))
    assert found == (
        PciGpu("0000:00:06.0", "0x2335", "0x030200", "nvidia"),
        PciGpu("0000:00:07.0", "0x2335", "0x030200", "nvidia"),
        PciGpu("0000:00:09.0", "0x2684", "0x030000", None),
    )


def test_scan_pci_of_a_machine_without_gpus(tmp_path: Path) -> None:
    assert scan_pci(LocalHost(root=build_driver_tree(tmp_path / "root", None))) == ()
    assert scan_pci(LocalHost(root=tmp_path / "nothing-here")) == ()


@pytest.mark.parametrize("capture", CAPTURES)
def test_gather_kernel(tmp_path: Path, capture: str) -> None:
    kernel = gather_kernel(LocalHost(root=build_driver_tree(tmp_path / "root", capture)))
    nodes, modules = capture_devnodes(capture)
    assert kernel.modules == frozenset(modules) == {"nvidia", "nvidia_uvm"}
    assert kernel.module_version == "580.159.04"
    assert kernel.version_error is None
    assert set(nodes) <= kernel.device_nodes
    assert kernel.proc_gpus == tuple(p.address for p in capture_pci(capture))


def test_gather_kernel_without_driver(tmp_path: Path) -> None:
    kernel = gather_kernel(
        LocalHost(root=build_driver_tree(tmp_path / "root", "h100", modules=[], version_text=""))
    )
    assert "nvidia" not in kernel.modules
    assert kernel.version_text is None
    assert kernel.version_error == "/proc/driver/nvidia/version does not exist"
    assert kernel.module_version is None


def test_gather_kernel_sees_built_in_modules(tmp_path: Path) -> None:
    """A module built into the kernel is missing from /proc/modules but has /sys/module/<name>."""
    root = build_driver_tree(tmp_path / "root", "h100")
    (root / "proc/modules").write_text("")
    assert {"nvidia", "nvidia_uvm"} <= gather_kernel(LocalHost(root=root)).modules


# -- NVML ---------------------------------------------------------------------------------------


def use_capture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capture: str, edit: Any = None) -> None:
    dump = load_nvml_dump(capture)
    if edit is not None:
        edit(dump)
    path = tmp_path / "nvml-dump.json"
    import json

    path.write_text(json.dumps(dump))
    monkeypatch.setenv("GPUHOST_FAKE_NVML", str(path))
    for var in ("GPUHOST_FAKE_NVML_INIT_ERROR", "GPUHOST_FAKE_NVML_HANG"):
        monkeypatch.delenv(var, raising=False)


def test_read_nvml_h100(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_capture(monkeypatch, tmp_path, "h100")
    listing = read_nvml(5, lambda: fake_nvml)
    assert listing.ok, listing.error
    assert (listing.driver_version, listing.library_version, listing.cuda_driver_version) == (
        "580.159.04",
        "580.159.04",
        "13.0",
    )
    (gpu,) = listing.gpus
    assert gpu.uuid == "GPU-042f1913-64c6-43ac-27c6-466e2d9041b0"
    assert gpu.pci_bus_id == "0000:00:06.0"
    assert gpu.memory_total_mib == 81559
    assert gpu.power_limit_w == 700.0
    assert (gpu.temperature_c, gpu.temp_slowdown_c, gpu.temp_shutdown_c, gpu.temp_max_operating_c) == (
        36,
        89,
        95,
        87,
    )
    assert gpu.compute_capability == (9, 0)
    assert (gpu.persistence_mode, gpu.mig_current, gpu.mig_pending, gpu.minor_number) == (
        True,
        False,
        False,
        0,
    )
    assert gpu.error is None
    assert fake_nvml._refcount == 0, "nvmlInit without nvmlShutdown"


def test_read_nvml_matches_smi_for_both_captures(
    fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for capture in CAPTURES:
        use_capture(monkeypatch, tmp_path, capture)
        nvml = read_nvml(5, lambda: fake_nvml)
        smi = parse_smi_xml(smi_xml(capture))
        for a, b in zip(nvml.gpus, smi.gpus, strict=True):
            assert (a.index, a.uuid, a.name, a.pci_bus_id, a.memory_total_mib, a.minor_number) == (
                b.index,
                b.uuid,
                b.name,
                b.pci_bus_id,
                b.memory_total_mib,
                b.minor_number,
            )
            assert a.power_limit_w == b.power_limit_w


def test_read_nvml_unsupported_field_is_none(
    fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def unsupported(dump: dict[str, Any]) -> None:
        dump["gpus"][0]["persistence"] = {"nvml_error": "Not Supported"}
        del dump["gpus"][0]["compute_cap"]

    use_capture(monkeypatch, tmp_path, "h100", unsupported)
    (gpu,) = read_nvml(5, lambda: fake_nvml).gpus
    assert gpu.persistence_mode is None
    assert gpu.compute_capability is None
    assert gpu.memory_total_mib == 81559


def test_read_nvml_lost_gpu(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def lose(dump: dict[str, Any]) -> None:
        dump["gpus"][1] = {"nvml_error": "GPU is lost"}

    use_capture(monkeypatch, tmp_path, "h200x2", lose)
    listing = read_nvml(5, lambda: fake_nvml)
    assert listing.ok
    assert listing.gpus[0].error is None
    assert listing.gpus[1].error == "NVML: GPU is lost"
    assert listing.gpus[1].uuid == ""


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (4, "permission"),
        (9, "no-driver"),
        (12, "library-not-found"),
        (15, "gpu-lost"),
        (18, "version-mismatch"),
        (999, "error"),
    ],
)
def test_read_nvml_init_errors(
    fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int, kind: str
) -> None:
    use_capture(monkeypatch, tmp_path, "h100")
    monkeypatch.setenv("GPUHOST_FAKE_NVML_INIT_ERROR", str(code))
    listing = read_nvml(5, lambda: fake_nvml)
    assert not listing.ok
    assert listing.error_kind == kind
    assert listing.error == f"NVML: {fake_nvml.NVMLError(code)}"


def test_read_nvml_without_library(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUHOST_FAKE_NVML", raising=False)
    monkeypatch.delenv("GPUHOST_FAKE_NVML_INIT_ERROR", raising=False)
    listing = read_nvml(5, lambda: fake_nvml)
    assert (listing.ok, listing.error_kind, listing.error) == (
        False,
        "library-not-found",
        "NVML: NVML Shared Library Not Found",
    )


def test_read_nvml_without_pynvml() -> None:
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    listing = read_nvml(5, missing)
    assert (listing.ok, listing.error_kind) == (False, "import")


def test_read_nvml_hang_times_out(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_capture(monkeypatch, tmp_path, "h100")
    monkeypatch.setenv("GPUHOST_FAKE_NVML_HANG", "nvmlDeviceGetCount:2")
    started = time.monotonic()
    listing = read_nvml(0.2, lambda: fake_nvml)
    assert time.monotonic() - started < 1.5
    assert (listing.ok, listing.error_kind, listing.error) == (
        False,
        "timeout",
        "NVML did not return within 0.2 s",
    )


def test_after_one_nvml_timeout_nvml_is_dead_for_the_session(
    fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One timeout per session: later reads (facts, live readings) say so at once, not 30 s each."""
    from pytest_gpuhost.facts.health_gather import read_live

    use_capture(monkeypatch, tmp_path, "h100")
    monkeypatch.setenv("GPUHOST_FAKE_NVML_HANG", "nvmlDeviceGetCount:2")
    assert read_nvml(0.2, lambda: fake_nvml).error_kind == "timeout"
    monkeypatch.delenv("GPUHOST_FAKE_NVML_HANG")  # even a recovered NVML is not asked again
    started = time.monotonic()
    again = read_nvml(30, lambda: fake_nvml)
    gpu = GpuInfo(index=0, uuid="GPU-x", name="", pci_bus_id="00000000:00:00.0")
    live = read_live(LocalHost(), gpu, 30, use_nvml=True, loader=lambda: fake_nvml)
    assert time.monotonic() - started < 1.0
    assert (again.ok, again.error_kind) == (False, "timeout")
    assert again.error == "NVML counts as dead for this session: NVML did not return within 0.2 s"
    assert all("NVML counts as dead" in why.detail for why in live.unavailable.values())


# -- the fake pynvml against the real nvidia-ml-py ----------------------------------------------


def test_fake_pynvml_has_the_real_error_codes_and_texts(fake_nvml: Any) -> None:
    real = pytest.importorskip("pynvml")
    if real.__file__ and Path(real.__file__).parent == FAKE_BIN.parent:
        pytest.fail("the real pynvml is shadowed by the fake")
    known_texts = dict(real.NVMLError._errcode_to_string)
    codes = {name: value for name, value in vars(real).items() if name.startswith("NVML_ERROR_")}
    assert len(codes) > 25
    for name, value in codes.items():
        assert getattr(fake_nvml, name) == value, name
        assert type(fake_nvml.NVMLError(value)).__name__ == type(real.NVMLError(value)).__name__
        assert isinstance(fake_nvml.NVMLError(value), fake_nvml.NVMLError)
        assert fake_nvml.NVMLError(value).value == value
        if value in known_texts:
            assert str(fake_nvml.NVMLError(value)) == known_texts[value], name
    for name in ("NVML_SUCCESS", "NVML_TEMPERATURE_GPU", "NVML_CLOCK_SM", "NVML_AGGREGATE_ECC"):
        assert getattr(fake_nvml, name) == getattr(real, name), name
    for name in dir(real):
        if name.startswith("NVML_TEMPERATURE_THRESHOLD_") and hasattr(fake_nvml, name):
            assert getattr(fake_nvml, name) == getattr(real, name), name


def test_fake_pynvml_has_everything_the_plugin_calls(fake_nvml: Any) -> None:
    """Every ``nvml.<name>`` in facts/nvml.py exists in the real module and in the fake."""
    real = pytest.importorskip("pynvml")
    source = Path(nvml_facts.__file__).read_text()
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nvml"
    }
    assert {"nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByIndex", "NVMLError"} <= used
    assert not used - set(dir(real))
    assert not used - set(dir(fake_nvml))


def test_fake_pynvml_before_init_and_after_shutdown(
    fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_capture(monkeypatch, tmp_path, "h100")
    with pytest.raises(fake_nvml.NVMLError) as excinfo:
        fake_nvml.nvmlDeviceGetCount()
    assert excinfo.value.value == fake_nvml.NVML_ERROR_UNINITIALIZED
    fake_nvml.nvmlInit()
    assert fake_nvml.nvmlDeviceGetCount() == 1
    with pytest.raises(fake_nvml.NVMLError_InvalidArgument):
        fake_nvml.nvmlDeviceGetHandleByIndex(1)
    handle = fake_nvml.nvmlDeviceGetHandleByUUID("GPU-042f1913-64c6-43ac-27c6-466e2d9041b0")
    assert fake_nvml.nvmlDeviceGetIndex(handle) == 0
    with pytest.raises(fake_nvml.NVMLError_NotSupported):
        fake_nvml.nvmlDeviceGetFanSpeed(handle)
    fake_nvml.nvmlShutdown()
    with pytest.raises(fake_nvml.NVMLError_Uninitialized):
        fake_nvml.nvmlShutdown()


# -- preconditions ------------------------------------------------------------------------------

PCI = (PciGpu("0000:00:06.0", "0x2330", "0x030200", "nvidia"),)
KERNEL = KernelFacts(
    modules=frozenset({"nvidia", "nvidia_uvm"}),
    version_text="NVRM version: ...",
    version_error=None,
    module_version="580.159.04",
    device_nodes=frozenset({"nvidia0", "nvidiactl", "nvidia-uvm"}),
    proc_gpus=("0000:00:06.0",),
)


def checks(pre: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {name: (p.ok, p.check) for name, p in pre.items()}


def test_preconditions_all_hold() -> None:
    pre = derive_preconditions(PCI, KERNEL, True, None, True, None, 1)
    assert all(p.ok for p in pre.values())
    assert set(pre) == {"gpu_present", "driver", "nvml", "nvidia_smi", "gpu_listing"}


def test_preconditions_no_gpu_fails_everything_on_the_bus_check() -> None:
    kernel = replace(KERNEL, modules=frozenset(), proc_gpus=())
    pre = derive_preconditions((), kernel, False, "NVML: NVML Shared Library Not Found", False, "missing", 0)
    assert checks(pre) == {name: (False, CHECK_GPU_PRESENT) for name in pre}
    assert {p.reason for p in pre.values()} == {"no NVIDIA GPU on the PCI bus"}


def test_preconditions_gpu_present_from_proc_or_driver_alone() -> None:
    assert derive_preconditions((), KERNEL, True, None, True, None, 1)["gpu_present"].ok
    no_proc = replace(KERNEL, proc_gpus=())
    assert derive_preconditions((), no_proc, True, None, True, None, 1)["gpu_present"].ok
    assert not derive_preconditions((), no_proc, True, None, True, None, 0)["gpu_present"].ok


def test_preconditions_module_not_loaded() -> None:
    pre = derive_preconditions(PCI, replace(KERNEL, modules=frozenset()), False, "x", False, "y", 0)
    assert pre["gpu_present"].ok
    for name in ("driver", "nvml", "nvidia_smi", "gpu_listing"):
        assert (pre[name].ok, pre[name].check) == (False, CHECK_DRIVER), name
        assert pre[name].reason == "the nvidia kernel module is not loaded"


def test_preconditions_unreadable_version_file() -> None:
    kernel = replace(KERNEL, version_error="/proc/driver/nvidia/version does not exist")
    pre = derive_preconditions(PCI, kernel, True, None, True, None, 1)
    assert (pre["driver"].ok, pre["driver"].check) == (False, CHECK_DRIVER_VERSION_FILE)
    assert pre["nvml"].check == CHECK_DRIVER_VERSION_FILE


def test_preconditions_nvml_fails_but_smi_lists_gpus() -> None:
    pre = derive_preconditions(PCI, KERNEL, False, "NVML did not return within 1 s", True, None, 1)
    assert (pre["nvml"].ok, pre["nvml"].check, pre["nvml"].reason) == (
        False,
        CHECK_NVML,
        "NVML did not return within 1 s",
    )
    assert pre["nvidia_smi"].ok
    assert pre["gpu_listing"].ok


def test_preconditions_both_listings_fail() -> None:
    pre = derive_preconditions(PCI, KERNEL, False, "NVML: mismatch", False, "smi: mismatch", 0)
    assert (pre["gpu_listing"].ok, pre["gpu_listing"].check, pre["gpu_listing"].reason) == (
        False,
        CHECK_NVML,
        "NVML: mismatch",
    )


def test_preconditions_driver_lists_no_gpu() -> None:
    pre = derive_preconditions(PCI, KERNEL, True, None, True, None, 0)
    assert pre["nvml"].ok
    assert (pre["gpu_listing"].ok, pre["gpu_listing"].reason) == (False, "the driver lists no GPU")


def test_gather_host_facts_from_the_fakes(
    fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_capture(monkeypatch, tmp_path, "h200x2")
    monkeypatch.setenv("GPUHOST_FAKE_SMI_XML", str(DATA / "h200x2/nvidia-smi-q-x.xml"))
    host = LocalHost(
        root=build_driver_tree(tmp_path / "root", "h200x2"),
        env={**os.environ, "PATH": f"{FAKE_BIN}:/usr/bin:/bin"},
        name="fake",
    )
    facts = gather_host_facts(host, 5, lambda: fake_nvml)
    assert facts.host == "fake"
    assert facts.listing.source == "nvml"
    assert [g.test_id for g in facts.gpus] == ["gpu0-c5fa4f09", "gpu1-1b94c864"]
    assert facts.smi.ok and len(facts.smi.gpus) == 2
    assert all(p.ok for p in facts.preconditions.values())
    assert (facts.driver_version, facts.cuda_driver_version) == ("580.159.04", "13.0")


def test_a_remote_host_is_read_through_nvidia_smi_and_nvml_does_not_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """How a host reached over SSH is read: no NVML, so NVML's checks are not applicable there."""
    monkeypatch.setenv("GPUHOST_FAKE_SMI_XML", str(DATA / "h100/nvidia-smi-q-x.xml"))
    host = LocalHost(
        root=build_driver_tree(tmp_path / "root", "h100"),
        env={**os.environ, "PATH": f"{FAKE_BIN}:/usr/bin:/bin"},
        name="remote",
    )
    facts = gather_host_facts(host, 5, use_nvml=False)
    assert facts.listing.source == "nvidia-smi" and [g.test_id for g in facts.gpus] == ["gpu0-042f1913"]
    nvml = facts.preconditions["nvml"]
    assert (nvml.ok, nvml.check) == (False, "")  # nothing failed: no check owns it
    assert facts.preconditions["gpu_listing"].ok and facts.preconditions["driver"].ok


# -- call_with_timeout --------------------------------------------------------------------------


def test_call_with_timeout_returns_the_value() -> None:
    assert call_with_timeout(lambda: 42, 1, "answer") == 42


def test_call_with_timeout_reraises_the_same_exception() -> None:
    error = RuntimeError("boom")

    def fail() -> None:
        raise error

    with pytest.raises(RuntimeError) as excinfo:
        call_with_timeout(fail, 1, "fail")
    assert excinfo.value is error


def test_call_with_timeout_reraises_base_exceptions() -> None:
    def leave() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        call_with_timeout(leave, 1, "leave")


def test_call_with_timeout_stops_waiting() -> None:
    release = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(NativeCallTimeout) as excinfo:
            call_with_timeout(lambda: release.wait(10), 0.2, "NVML")
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert (excinfo.value.what, excinfo.value.seconds) == ("NVML", 0.2)
    assert str(excinfo.value) == "NVML did not return within 0.2 s"
    assert isinstance(excinfo.value, TimeoutError)


# -- LocalHost ----------------------------------------------------------------------------------


def test_local_host_run_missing_executable() -> None:
    result = LocalHost().run(["gpuhost-no-such-command"], timeout=5)
    assert (result.missing, result.ok, result.returncode) == (True, False, None)
    assert result.describe() == "`gpuhost-no-such-command` is not installed or not on PATH"


def test_local_host_run_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    result = LocalHost().run([str(script)], timeout=5)
    assert result.missing and not result.ok


def test_local_host_run_timeout() -> None:
    started = time.monotonic()
    result = LocalHost().run(["sleep", "5"], timeout=0.3)
    assert time.monotonic() - started < 3
    assert (result.timed_out, result.ok, result.returncode) == (True, False, None)
    assert result.describe() == "`sleep 5` did not finish in time (hung driver or daemon?)"


def test_local_host_run_exit_code() -> None:
    result = LocalHost().run(["sh", "-c", "echo partial; echo 'it broke' >&2; exit 3"], timeout=5)
    assert (result.returncode, result.ok, result.stdout, result.stderr) == (
        3,
        False,
        "partial\n",
        "it broke\n",
    )
    assert result.describe().endswith("exited with 3: it broke")


def test_local_host_run_success_with_env() -> None:
    result = LocalHost(env={"PATH": "/usr/bin:/bin", "GPUHOST_PROBE": "on"}).run(
        ["sh", "-c", "echo $GPUHOST_PROBE"]
    )
    assert result.ok and result.stdout == "on\n"


def test_local_host_files_below_a_root(tmp_path: Path) -> None:
    host = LocalHost(root=build_driver_tree(tmp_path / "root", "h100"))
    assert host.read_text("/proc/driver/nvidia/version") == capture_proc("h100")[0]
    assert host.read_text("/proc/driver/nvidia/nope") is None
    assert host.read_text("/proc/modules/not-a-dir") is None
    assert host.listdir("/proc/driver/nvidia/gpus") == ["0000:00:06.0"]
    assert host.listdir("/nope") == []
    assert host.exists("/dev/nvidiactl") and not host.exists("/dev/nvidia9")
    assert host.readlink("/sys/bus/pci/devices/0000:00:06.0/driver") == "../../../bus/pci/drivers/nvidia"
    assert host.readlink("/dev/nvidiactl") is None
    assert (
        host.root / "sys/bus/pci/devices/0000:00:06.0/driver"
    ).resolve() == host.root / "sys/bus/pci/drivers/nvidia"


# -- nvidia-smi through the fake executable -----------------------------------------------------


def smi_host(monkeypatch: pytest.MonkeyPatch, capture: str, **env: str) -> LocalHost:
    variables = {
        **os.environ,
        "PATH": f"{FAKE_BIN}:/usr/bin:/bin",
        "GPUHOST_FAKE_SMI_XML": str(DATA / capture / "nvidia-smi-q-x.xml"),
    }
    for name in ("GPUHOST_FAKE_SMI_FAIL", "GPUHOST_FAKE_SMI_SLEEP"):
        variables.pop(name, None)
    return LocalHost(env={**variables, **env})


def test_read_smi_through_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    listing = read_smi(smi_host(monkeypatch, "h200x2"), 5)
    assert listing == parse_smi_xml(smi_xml("h200x2"))
    assert len(listing.gpus) == 2


@pytest.mark.parametrize(
    ("fail", "kind", "words"),
    [
        (
            "version-mismatch",
            "version-mismatch",
            "exited with 18: Failed to initialize NVML: Driver/library version mismatch; "
            "NVML library version: 580.159",
        ),
        ("no-driver", "no-driver", "exited with 9: NVIDIA-SMI has failed because it couldn't communicate"),
        ("no-devices", "no-driver", "exited with 6: No devices were found"),
        ("permission", "permission", "exited with 4: Failed to initialize NVML: Insufficient Permissions"),
    ],
)
def test_read_smi_failures(monkeypatch: pytest.MonkeyPatch, fail: str, kind: str, words: str) -> None:
    listing = read_smi(smi_host(monkeypatch, "h100", GPUHOST_FAKE_SMI_FAIL=fail), 5)
    assert (listing.ok, listing.error_kind) == (False, kind)
    assert listing.error is not None and words in listing.error


def test_read_smi_missing_and_hung(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = read_smi(LocalHost(env={"PATH": str(tmp_path)}), 5)
    assert (missing.ok, missing.error_kind) == (False, "missing")
    hung = read_smi(smi_host(monkeypatch, "h100", GPUHOST_FAKE_SMI_SLEEP="5"), 0.3)
    assert (hung.ok, hung.error_kind) == (False, "timeout")


def test_pci_devices_of_a_remote_host_are_read_in_one_command_with_the_same_result() -> None:
    from pytest_gpuhost.facts.system import pci_devices

    local = pci_devices(LocalHost())
    if not local:
        pytest.skip("this machine shows no PCI devices in /sys")
    assert pci_devices(LocalAsRemote()) == local
