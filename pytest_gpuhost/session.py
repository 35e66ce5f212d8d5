"""The suite's machinery, installed by the entry point only when ``--gpuhost`` is given.

One ``GpuhostSession`` per pytest run: it gathers the host's facts once, points collection at
the shipped suite, parametrizes per-GPU checks, applies the tier, skips checks whose
preconditions failed, and prints the per-host summary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_gpuhost.facts.gather import gather_host_facts
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.host import Host, LocalHost
from pytest_gpuhost.options import TIERS, UsageError
from pytest_gpuhost.settings import Settings

SESSION_KEY = pytest.StashKey["GpuhostSession"]()
NEEDS_MARKER = "gpuhost_needs"
TIER_HELP = {
    "quick": "gpuhost tier: facts and files only, finishes in seconds",
    "container": "gpuhost tier: starts containers on the host",
    "burn": "gpuhost tier: loads the GPUs at full power (--gpuhost-burn)",
}


def suite_dir() -> Path:
    """The shipped conformance suite: ``pytest_gpuhost/suites`` when installed, ``suites/`` in a checkout."""
    import importlib.util

    spec = importlib.util.find_spec("pytest_gpuhost.suites")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "suites"


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")


def install_sigterm_handler() -> None:
    """SIGTERM (a spot VM being evicted, a CI job cancelled) ends the run like Ctrl-C.

    pytest then unwinds: every container is removed in its ``finally``, the session fixtures
    sweep, and the JUnit report is still written with what completed.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def junit_to_system_out(config: pytest.Config) -> None:
    """Each check's measured values (its ``gpuhost.metric`` lines) go into the JUnit system-out.

    pytest writes no captured output to JUnit unless ``junit_logging`` says so; under --gpuhost
    the default becomes ``system-out``. A ``junit_logging`` the user set (ini or ``-o``) wins.
    """
    from _pytest.junitxml import xml_key  # the LogXML instance; pytest has no public accessor

    xml = config.stash.get(xml_key, None)
    user_set = "junit_logging" in getattr(config, "_inicfg", {})
    if xml is not None and not user_set and xml.logging == "no":
        xml.logging = "system-out"


def select_gpus(gpus: tuple[GpuInfo, ...], selection: str) -> tuple[GpuInfo, ...]:
    """``all``, or a comma list of indices and UUID prefixes (``0,2`` or ``GPU-042f``)."""
    if selection.strip().lower() == "all":
        return gpus
    chosen: list[GpuInfo] = []
    for token in (t.strip() for t in selection.split(",") if t.strip()):
        if token.isdigit():
            matches = [g for g in gpus if g.index == int(token)]
        else:
            prefix = token.lower().removeprefix("gpu-")
            matches = [g for g in gpus if g.uuid.lower().removeprefix("gpu-").startswith(prefix)]
        if not matches and gpus:
            known = ", ".join(f"{g.index} ({g.uuid})" for g in gpus)
            raise UsageError(f"--gpuhost-gpus {selection!r}: no GPU matches {token!r}; this host has {known}")
        chosen.extend(g for g in matches if g not in chosen)
    return tuple(chosen)


class GpuhostSession:
    def __init__(self, config: pytest.Config, settings: Settings, host: Host | None = None) -> None:
        self.config = config
        self.settings = settings
        self.host: Host = host or LocalHost()
        self._facts: HostFacts | None = None

    @classmethod
    def install(cls, config: pytest.Config) -> GpuhostSession:
        settings = Settings.from_config(config)
        for tier in TIERS:
            config.addinivalue_line("markers", f"{tier}: {TIER_HELP[tier]}")
        config.addinivalue_line(
            "markers", f"{NEEDS_MARKER}(*names): skip unless these host preconditions hold"
        )
        host = config.hook.pytest_gpuhost_make_host(config=config)
        session = cls(config, settings, host)
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "gpuhost-session")
        from pytest_gpuhost import (
            container_fixtures,
            docker_fixtures,
            fixtures,
            health_fixtures,
            report_fixtures,
            workload_fixtures,
        )
        from pytest_gpuhost.report_json import PLUGIN_NAME, JsonReport, inventory_from_facts

        report_fixtures.profiles_from_config(config)  # a bad --gpuhost-profile stops here
        if not config.pluginmanager.has_plugin(PLUGIN_NAME):
            config.pluginmanager.register(
                JsonReport(
                    settings.json,
                    lambda: inventory_from_facts(session.facts),
                    save_baseline=settings.save_baseline,
                    baseline=settings.baseline,
                ),
                PLUGIN_NAME,
            )
        from pytest_gpuhost import report_html

        report_html.register(config)  # pytest-html extras: burn plots and diagnoses (only with --html)
        modules = (
            fixtures,
            container_fixtures,
            docker_fixtures,
            health_fixtures,
            report_fixtures,
            workload_fixtures,
        )
        for module in modules:
            # Idempotent: a test may already have loaded one with `-p`.
            if not config.pluginmanager.is_registered(module):
                config.pluginmanager.register(module, f"gpuhost-{module.__name__.rsplit('.', 1)[-1]}")
        install_sigterm_handler()
        junit_to_system_out(config)
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            # Collect the shipped suite unless the user named their own paths.
            config.args = [str(suite_dir())]
        return session

    @property
    def facts(self) -> HostFacts:
        if self._facts is None:
            self._facts = gather_host_facts(self.host, self.settings.timeout)
        return self._facts

    def selected_gpus(self) -> tuple[GpuInfo, ...]:
        return select_gpus(self.facts.gpus, self.settings.gpus)

    # -- hooks -------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        facts = self.facts
        gpus = facts.gpus
        models = ", ".join(sorted({g.name for g in gpus})) or "none"
        return [
            f"gpuhost: host {facts.host}, tier {self.settings.tier}, driver {facts.driver_version or 'none'}, "
            f"CUDA {facts.cuda_driver_version or 'none'}, {len(gpus)} GPU(s): {models} "
            f"(source: {facts.listing.source if facts.listing.ok else 'none'})"
        ]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "gpu" not in metafunc.fixturenames:
            return
        try:
            gpus = self.selected_gpus()
        except UsageError as exc:
            raise pytest.UsageError(f"pytest-gpuhost: {exc}") from None
        if gpus:
            metafunc.parametrize("gpu", gpus, ids=[g.test_id for g in gpus])
            return
        listing = self.facts.preconditions["gpu_listing"]
        reason = (
            f"no GPU to check: {listing.check} failed: {listing.reason}"
            if not listing.ok
            else (f"--gpuhost-gpus {self.settings.gpus!r} selects no GPU")
        )
        metafunc.parametrize("gpu", [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-gpu")])

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> None:
        """A --gpuhost-gpus naming no GPU of this host is a usage error, not a collection error per module."""
        try:
            self.selected_gpus()
        except UsageError as exc:
            raise pytest.UsageError(f"pytest-gpuhost: {exc}") from None

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        rank = self.settings.tier_rank()
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            tiers = [TIERS.index(m.name) for m in item.iter_markers() if m.name in TIERS]
            (drop if tiers and min(tiers) > rank else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        for marker in item.iter_markers(NEEDS_MARKER):
            for name in marker.args:
                pre = self.facts.preconditions[name]
                if not pre.ok:
                    pytest.skip(f"needs {name}: {pre.check} failed: {pre.reason}")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        facts = self.facts
        write = terminalreporter.write_line
        terminalreporter.section(f"gpuhost: {facts.host}")
        write(f"driver {facts.driver_version or 'none'}, CUDA {facts.cuda_driver_version or 'none'}")
        if not facts.gpus:
            write("GPUs: none found")
        for gpu in facts.gpus:
            write(
                f"  gpu{gpu.index}  {gpu.name}  {gpu.uuid}  {gpu.pci_bus_id}  {gpu.memory_total_mib or '?'} MiB"
            )
        failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
        for report in failed:
            text = str(getattr(report, "longreprtext", "") or report.longrepr or "")
            first = next((line for line in text.splitlines() if line.strip().startswith("FOUND:")), "")
            first = first or (text.strip().splitlines() or [""])[-1]
            write(
                f"FAILED {report.nodeid.split('::')[-1]}: {first.strip().removeprefix('FOUND: ')}", red=True
            )
