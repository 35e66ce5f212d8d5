"""Xid events in the kernel log: NVIDIA's catalogue of codes, the parser, and reading the log since the last boot."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_gpuhost.facts.model import normalize_pci_bus_id
from pytest_gpuhost.hosts.host import CommandResult, Host

RMA_FIX = (
    "take the GPU out of service and open an RMA with the vendor; attach `sudo nvidia-bug-report.sh` output "
    "and `nvidia-smi -q -d ECC,ROW_REMAPPER,PAGE_RETIREMENT`"
)


@dataclass(frozen=True)
class XidInfo:
    meaning: str
    kind: str  # application, memory, bus, nvlink, firmware, engine, other


XID_KINDS_FIX = {
    "memory": "{reset} to apply the row remapping; if it recurs or a remapping failed, " + RMA_FIX,
    "bus": (
        "reboot (a GPU off the bus cannot be reset in place); check the slot, riser, power cables and "
        "temperatures; if it recurs, reseat the GPU or replace it"
    ),
    "nvlink": (
        "`nvidia-smi nvlink -s -i {index}` and `nvidia-smi nvlink -e -i {index}`; {reset}; if it recurs, "
        "check the NVLink bridge or baseboard with the vendor"
    ),
    "firmware": (
        "{reset}; update to the current driver of the branch; if it recurs, collect `sudo nvidia-bug-report.sh` "
        "for NVIDIA support"
    ),
    "engine": "{reset}; if it recurs with different applications, collect `sudo nvidia-bug-report.sh`",
    "other": (
        "look the code up in NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors); {reset}; "
        "collect `sudo nvidia-bug-report.sh`"
    ),
}


# What each Xid means, paraphrased from NVIDIA's Xid catalog (docs/health.md lists the source).
XID_TABLE: dict[int, XidInfo] = {
    8: XidInfo("GPU stopped processing: a channel timed out", "engine"),
    13: XidInfo(
        "graphics engine exception, usually an application fault (bad address, illegal instruction)",
        "application",
    ),
    31: XidInfo(
        "GPU memory page fault, usually an application touching memory it does not own", "application"
    ),
    32: XidInfo("invalid or corrupted push buffer stream (data corrupted on PCIe, or a driver fault)", "bus"),
    38: XidInfo("driver firmware error", "firmware"),
    43: XidInfo("GPU stopped processing the channel of a faulting application", "application"),
    45: XidInfo(
        "preemptive cleanup: the driver tore down a process (killed, or after an earlier error)",
        "application",
    ),
    48: XidInfo("double-bit (uncorrectable) ECC error in GPU memory", "memory"),
    56: XidInfo("display engine error", "engine"),
    57: XidInfo("error programming the video memory interface", "memory"),
    58: XidInfo("unstable video memory interface", "memory"),
    61: XidInfo("internal micro-controller breakpoint or warning", "firmware"),
    62: XidInfo("internal micro-controller halted", "firmware"),
    63: XidInfo("ECC page retirement or row remapping recorded; a GPU reset applies it", "memory"),
    64: XidInfo("ECC page retirement or row remapping could not be recorded", "memory"),
    68: XidInfo("video decoder (NVDEC) exception, usually caused by the decoding application", "application"),
    69: XidInfo("graphics engine class error", "engine"),
    74: XidInfo("NVLink error: a link between GPUs (or to an NVSwitch) failed", "nvlink"),
    79: XidInfo("GPU has fallen off the bus: it stopped answering on PCIe", "bus"),
    81: XidInfo("VGA subsystem error", "engine"),
    92: XidInfo("high rate of single-bit (correctable) ECC errors", "memory"),
    93: XidInfo("InfoROM wear limit exceeded", "firmware"),
    94: XidInfo("contained uncorrectable ECC error: the application using the memory was stopped", "memory"),
    95: XidInfo("uncontained uncorrectable ECC error: every application on the GPU is affected", "memory"),
    109: XidInfo("context switch timeout: an application did not yield the GPU in time", "application"),
    110: XidInfo("security fault", "firmware"),
    119: XidInfo("GSP (GPU System Processor) firmware did not answer a driver call in time", "firmware"),
    120: XidInfo("GSP (GPU System Processor) firmware error", "firmware"),
    121: XidInfo("C2C (chip-to-chip) link error", "nvlink"),
    122: XidInfo("SPI flash read failure (PMU RPC)", "firmware"),
    123: XidInfo("SPI flash write failure (PMU RPC)", "firmware"),
    124: XidInfo("SPI flash erase failure (PMU RPC)", "firmware"),
    140: XidInfo("unrecovered ECC error in GPU memory", "memory"),
    143: XidInfo("GPU initialisation failure", "firmware"),
    144: XidInfo("NVLink unit error", "nvlink"),
    145: XidInfo("NVLink unit error", "nvlink"),
    146: XidInfo("NVLink unit error", "nvlink"),
    147: XidInfo("NVLink unit error", "nvlink"),
    148: XidInfo("NVLink unit error", "nvlink"),
    149: XidInfo("NVLink unit error", "nvlink"),
    150: XidInfo("NVLink unit error", "nvlink"),
    154: XidInfo("GPU recovery action changed: the driver asks for a reset, a reboot or a drain", "firmware"),
}


def xid_info(code: int) -> XidInfo:
    return XID_TABLE.get(code, XidInfo("an Xid this suite has no description for", "other"))


@dataclass(frozen=True)
class XidEvent:
    """One Xid line of the kernel log. ``pci`` is ``domain:bus:device`` as the driver prints it."""

    code: int
    pci: str
    message: str
    line: str
    pid: str | None = None
    process: str | None = None

    def on_gpu(self, pci_bus_id: str) -> bool:
        return bool(pci_bus_id) and normalize_pci_bus_id(pci_bus_id).rsplit(".", 1)[0] == self.pci


# NVRM: Xid (PCI:0000:00:06): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
# NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate.
# NVRM: Xid (0000:01:00): 13, 0005 00000000 ...   (drivers before the PCI: prefix)
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\):\s*"
    r"(?P<code>\d+),\s*(?P<rest>.*?)\s*$"
)


_PID = re.compile(r"^pid=(?P<pid>'[^']*'|[^,\s]*),\s*")


_NAME = re.compile(r"^name=(?P<name>[^,]*),\s*")


_OFF_BUS = re.compile(
    r"NVRM: The NVIDIA GPU (?P<addr>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?"
)


def _xid_pci(text: str) -> str:
    domain, bus, device = text.lower().split(":")
    return f"{domain[-4:].rjust(4, '0')}:{bus}:{device}"


def parse_xids(text: str) -> tuple[XidEvent, ...]:
    """Every Xid in a kernel log (dmesg, journalctl -k or kern.log lines).

    A GPU that fell off the bus while the driver probed it is reported without an Xid line ("The
    NVIDIA GPU <address> ... has fallen off the bus"): that counts as Xid 79.
    """
    events: list[XidEvent] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = _XID.search(line)
        if match:
            rest = match.group("rest")
            pid = name = None
            pid_match = _PID.match(rest)
            if pid_match:
                pid = pid_match.group("pid").strip("'")
                rest = rest[pid_match.end() :]
            name_match = _NAME.match(rest)
            if name_match:
                name = name_match.group("name")
                rest = rest[name_match.end() :]
            events.append(
                XidEvent(
                    int(match.group("code")), _xid_pci(match.group("pci")), rest, line.strip(), pid, name
                )
            )
            continue
        off = _OFF_BUS.search(line)
        if off and any("fallen off the bus" in later for later in lines[number : number + 4]):
            pci = _xid_pci(off.group("addr"))
            if not any(e.code == 79 and e.pci == pci for e in events):
                events.append(
                    XidEvent(
                        79, pci, "GPU has fallen off the bus (reported without an Xid line)", line.strip()
                    )
                )
    return tuple(events)


@dataclass(frozen=True)
class KernelLog:
    """The kernel log since boot, or why it could not be read."""

    text: str | None
    source: str | None
    error: str | None = None


_BOOT_MARK = re.compile(r"kernel: (?:\[\s*0\.0+\] )?Linux version ")


def _since_last_boot(text: str) -> str:
    """The part of a kern.log after the last boot's first line (the file spans several boots)."""
    lines = text.splitlines()
    starts = [n for n, line in enumerate(lines) if _BOOT_MARK.search(line)]
    return "\n".join(lines[starts[-1] :]) if starts else text


def read_kernel_log(host: Host, timeout: float) -> KernelLog:
    """``dmesg``, else ``journalctl -k -b``, else ``/var/log/kern.log``; each may be closed to this user."""
    problems: list[str] = []
    dmesg = host.run(["dmesg"], timeout=timeout)
    if dmesg.ok and dmesg.stdout.strip():
        return KernelLog(dmesg.stdout, "dmesg")
    problems.append(_describe_dmesg(dmesg))
    journal = host.run(["journalctl", "-k", "-b", "--no-pager", "-q"], timeout=timeout)
    if journal.ok and " kernel: " in journal.stdout:
        return KernelLog(journal.stdout, "journalctl -k -b")
    if not journal.missing:
        problems.append(
            journal.describe()
            if not journal.ok
            else "`journalctl -k -b` shows no kernel messages to this user"
        )
    try:
        kern = host.read_text("/var/log/kern.log")
    except PermissionError as exc:
        problems.append(f"/var/log/kern.log is not readable: {exc}")
        kern = None
    if kern and kern.strip():
        return KernelLog(_since_last_boot(kern), "/var/log/kern.log")
    return KernelLog(None, None, "; ".join(problems))


def _describe_dmesg(result: CommandResult) -> str:
    text = result.describe() if not result.ok else "`dmesg` printed nothing"
    if "operation not permitted" in (result.stderr + result.stdout).lower():
        text += " (kernel.dmesg_restrict=1 lets only root read it)"
    return text
