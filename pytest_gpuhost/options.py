"""The plugin's options: one table, each option with its ini equivalent, resolved into settings.

Kept free of third-party imports: it is loaded in every pytest session of the environment.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

TIERS = ("quick", "container", "hardware", "burn")  # in order of cost
# The checks each tier runs, by their tier marker: the guide's burn is quick + container + burn,
# and the hardware tier is asked for by name.
TIER_RUNS: dict[str, frozenset[str]] = {
    "quick": frozenset({"quick"}),
    "container": frozenset({"quick", "container"}),
    "hardware": frozenset({"quick", "container", "hardware"}),
    "burn": frozenset({"quick", "container", "burn"}),
}
# Each tier's marker carries our prefix: a user's own ``@pytest.mark.burn`` is theirs, and our
# tier selection leaves it alone. The ``--gpuhost-tier`` values stay the bare tier names.
TIER_MARKERS: dict[str, str] = {tier: f"gpuhost_{tier}" for tier in TIERS}
MARKER_TIERS: dict[str, str] = {marker: tier for tier, marker in TIER_MARKERS.items()}
NEEDS_MARKER = "gpuhost_needs"
MEASURES_MARKER = "gpuhost_measures"
TIER_HELP: dict[str, str] = {
    "quick": "gpuhost tier: facts and files only, finishes in seconds",
    "container": "gpuhost tier: starts containers on the host",
    "hardware": "gpuhost tier: HBM, PCIe, GPU-to-GPU and NCCL bandwidth and memory patterns (tens of seconds)",
    "burn": "gpuhost tier: loads the GPUs at full power (--gpuhost-burn)",
}
MARKER_HELP: dict[str, str] = {
    **{TIER_MARKERS[tier]: TIER_HELP[tier] for tier in TIERS},
    f"{NEEDS_MARKER}(*names)": "skip unless these host preconditions hold",
    MEASURES_MARKER: "the check measures its GPU: skipped when the GPU is already busy",
}
GPU_ACCESS_MODES = ("gpus", "cdi", "runtime", "devices")
PULL_POLICIES = ("missing", "always", "never")
FAULT_SWITCH = "GPUHOST_ALLOW_FAULT_INJECTION"
DEFAULT_IMAGE = "nvidia/cuda:13.0.1-base-ubuntu24.04"
DEFAULT_ADVISORIES_MAX_AGE = 90.0


class OptionSpec:
    """One ``--gpuhost-*`` option and its ini twin. A plain class: this module loads in every
    pytest session, and building a dataclass at import costs more than a millisecond."""

    __slots__ = ("choices", "default", "flag", "help", "metavar", "multiple", "type")

    def __init__(
        self,
        flag: str,
        help: str,
        default: Any = None,
        type: type | None = str,
        choices: tuple[str, ...] | None = None,
        metavar: str | None = None,
        multiple: bool = False,
    ) -> None:
        self.flag = flag
        self.help = help
        self.default = default
        self.type = type
        self.choices = choices
        self.metavar = metavar
        self.multiple = multiple

    def __repr__(self) -> str:
        return f"OptionSpec({self.flag!r})"

    @property
    def ini(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def dest(self) -> str:
        return self.ini


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("--gpuhost-expect-gpus", "fail unless the host shows exactly N GPUs", type=int, metavar="N"),
    OptionSpec(
        "--gpuhost-tier",
        "quick: facts only (seconds); container: also containers (default); hardware: also HBM, PCIe, "
        "P2P and NCCL floors; burn: everything",
        default="container",
        choices=TIERS,
    ),
    OptionSpec(
        "--gpuhost-gpus",
        "GPUs to check: 'all' (default) or a comma list of indices and UUID prefixes",
        default="all",
        metavar="SELECT",
    ),
    OptionSpec(
        "--gpuhost-timeout",
        "seconds any one native call (NVML, nvidia-smi, docker) may take (default 30)",
        default=30.0,
        type=float,
        metavar="SECONDS",
    ),
    OptionSpec(
        "--gpuhost-image",
        "CUDA image for container checks (default: the newest nvidia/cuda base image the driver supports)",
        default=DEFAULT_IMAGE,
        metavar="IMAGE",
    ),
    OptionSpec(
        "--gpuhost-gpu-access",
        "how containers get GPUs: gpus (default), cdi, runtime, devices",
        default="gpus",
        choices=GPU_ACCESS_MODES,
    ),
    OptionSpec(
        "--gpuhost-pull",
        "image pull policy: missing (default), always, never",
        default="missing",
        choices=PULL_POLICIES,
    ),
    OptionSpec("--gpuhost-compose", "a compose file whose GPU reservations to validate", metavar="FILE"),
    OptionSpec(
        "--gpuhost-workload-image",
        "image with PyTorch or CuPy for the matmul, load and burn (default: the official PyTorch image "
        "for the driver's CUDA; 'base' for --gpuhost-image)",
        metavar="IMAGE",
    ),
    OptionSpec(
        "--gpuhost-volume",
        "extra bind mount SRC:DST[:ro] for GPU containers (repeatable), e.g. a driver root",
        default=(),
        metavar="SRC:DST[:MODE]",
        multiple=True,
    ),
    OptionSpec(
        "--gpuhost-env",
        "extra KEY=VALUE for GPU containers (repeatable)",
        default=(),
        metavar="KEY=VALUE",
        multiple=True,
    ),
    OptionSpec(
        "--gpuhost-python",
        "the workload image's Python interpreter (default python3)",
        default="python3",
        metavar="PATH",
    ),
    OptionSpec(
        "--gpuhost-mig",
        "expected MIG mode of the selected GPUs: on or off (default: not checked)",
        choices=("on", "off"),
    ),
    OptionSpec(
        "--gpuhost-profile",
        "a GPU-model profile file (TOML) adding or overriding models (repeatable; docs/profiles.md)",
        default=(),
        metavar="FILE",
        multiple=True,
    ),
    OptionSpec(
        "--gpuhost-json", "write this run's JSON report to FILE (docs/json-report.md)", metavar="FILE"
    ),
    OptionSpec(
        "--gpuhost-prometheus",
        "write the run's outcomes, actions and figures for node_exporter's textfile collector to FILE",
        metavar="FILE",
    ),
    OptionSpec(
        "--gpuhost-save-baseline",
        "save this run's versions and measured figures as a baseline to FILE (docs/baselines.md)",
        metavar="FILE",
    ),
    OptionSpec(
        "--gpuhost-baseline",
        "compare this run with the baseline in FILE: regressions fail test_baseline_regressions",
        metavar="FILE",
    ),
    OptionSpec(
        "--gpuhost-matmul-size",
        "matrix size n of the compute check (default 4096, at most 8192)",
        default=4096,
        type=int,
        metavar="N",
    ),
    OptionSpec(
        "--gpuhost-inject-fault",
        "TEST ONLY: corrupt one result element, DTYPE:ROW:COL (needs GPUHOST_ALLOW_FAULT_INJECTION=1)",
        default=(),
        metavar="DTYPE:ROW:COL",
        multiple=True,
    ),
    OptionSpec(
        "--gpuhost-dockerfile",
        "build the workload image from this Dockerfile and check it sees the GPUs (guide step 3.3)",
        metavar="FILE",
    ),
    OptionSpec(
        "--gpuhost-burn",
        "run the burn tier for DURATION (60s, 5m, 2h) on all selected GPUs at once",
        metavar="DURATION",
    ),
    OptionSpec(
        "--gpuhost-burn-on",
        "where the burn runs: container (default) or host",
        default="container",
        choices=("container", "host"),
    ),
    OptionSpec(
        "--gpuhost-registry",
        "pull the default images through this registry, a mirror of Docker Hub (HOST[:PORT])",
        metavar="HOST",
    ),
    OptionSpec(
        "--gpuhost-pull-timeout",
        "seconds one image pull or build may take in all (default 1800)",
        default=1800.0,
        type=float,
        metavar="SECONDS",
    ),
    OptionSpec(
        "--gpuhost-pull-stall",
        "seconds a pull may go without receiving a byte before it counts as stalled (default 120)",
        default=120.0,
        type=float,
        metavar="SECONDS",
    ),
    OptionSpec(
        "--gpuhost-hardware-passes",
        "times the hardware tier's HBM pattern test runs its six patterns (default 1)",
        default=1,
        type=int,
        metavar="N",
    ),
    OptionSpec(
        "--gpuhost-hardware-fault",
        "TEST ONLY: flip:GPU, slow:GPU[:FACTOR], alloc:GPU or allreduce:RANK (needs GPUHOST_ALLOW_FAULT_INJECTION=1)",
        default=(),
        metavar="SPEC",
        multiple=True,
    ),
    OptionSpec(
        "--gpuhost-temp-limit",
        "hard GPU temperature limit in °C during the burn (default 85)",
        default=85.0,
        type=float,
        metavar="CELSIUS",
    ),
    OptionSpec(
        "--gpuhost-advisories",
        "your own copy of the advisory table of guide step 4.2 (TOML; docs/maintenance.md)",
        metavar="FILE",
    ),
    OptionSpec(
        "--gpuhost-advisories-max-age",
        f"days after its review date that the advisory table warns as old (default {DEFAULT_ADVISORIES_MAX_AGE:g})",
        default=DEFAULT_ADVISORIES_MAX_AGE,
        type=float,
        metavar="DAYS",
    ),
    OptionSpec(
        "--gpuhost-daemon-reload",
        "yes: on a local systemd host, run `systemctl daemon-reload` while a GPU container runs and check "
        "it keeps its GPUs (guide step 2.3; default no)",
        default="no",
        choices=("no", "yes"),
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpuhost", "GPU host conformance (pytest-gpuhost)")
    group.addoption(
        "--gpuhost",
        action="store_true",
        default=None,
        help="run the GPU host conformance suite against this host",
    )
    parser.addini(
        "gpuhost", "run the GPU host conformance suite (like --gpuhost)", type="bool", default=False
    )
    for spec in OPTIONS:
        kwargs: dict[str, Any] = {"dest": spec.dest, "default": None, "help": spec.help}
        if spec.multiple:
            kwargs["action"] = "append"
        if spec.type is not None:
            kwargs["type"] = spec.type
        if spec.choices:
            kwargs["choices"] = spec.choices
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        group.addoption(spec.flag, **kwargs)
        if spec.multiple:
            parser.addini(spec.ini, f"{spec.help} (like {spec.flag})", type="linelist", default=None)
        else:
            parser.addini(spec.ini, f"{spec.help} (like {spec.flag})", type="string", default=None)
    accept_negative_durations(parser)


def accept_negative_durations(parser: pytest.Parser) -> None:
    """``--gpuhost-burn -5m`` reaches the plugin's check (a clear usage error) instead of argparse's
    "expected one argument": argparse takes a value starting with ``-`` only if it is a number.

    pytest >= 9 keeps one argparse parser (``optparser``); older ones get argparse's message.
    """
    optparser = getattr(parser, "optparser", None)
    matcher = getattr(optparser, "_negative_number_matcher", None)
    if isinstance(matcher, re.Pattern) and "[smh]" not in matcher.pattern:
        optparser._negative_number_matcher = re.compile(  # type: ignore[union-attr]
            rf"(?:{matcher.pattern})|^-\d+(?:\.\d+)?[smh]$"
        )


def register_markers(config: pytest.Config) -> None:
    """Our markers, registered in every session, with or without ``--gpuhost``: a project that
    carries the suite's modules (or writes its own checks) may run them under ``--strict-markers``."""
    for marker, help in MARKER_HELP.items():
        config.addinivalue_line("markers", f"{marker}: {help}")


def is_enabled(config: pytest.Config) -> bool:
    flag = config.getoption("gpuhost", default=None)
    return bool(flag) if flag is not None else bool(config.getini("gpuhost"))


class UsageError(ValueError):
    """A bad option value: reported by pytest as a usage error naming the option."""


def raw_value(config: pytest.Config, spec: OptionSpec) -> Any:
    """The option's value from the command line, else the ini file, else its default."""
    value = config.getoption(spec.dest, default=None)
    if value is not None:
        return tuple(value) if spec.multiple else value
    ini = config.getini(spec.ini)
    if ini in (None, "", []):
        return spec.default
    if spec.multiple:
        return tuple(ini)
    if spec.type is None or spec.type is str:
        value = ini
    else:
        try:
            value = spec.type(ini)
        except ValueError:
            raise UsageError(f"ini option {spec.ini} = {ini!r} is not a valid {spec.type.__name__}") from None
    if spec.choices and value not in spec.choices:
        raise UsageError(f"ini option {spec.ini} = {value!r}: choose from {', '.join(spec.choices)}")
    return value
