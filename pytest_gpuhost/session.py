"""The suite's machinery, installed by the entry point only when ``--gpuhost`` is given.

One ``GpuhostSession`` per pytest run: it gathers the host's facts once, points collection at
the shipped suite, parametrizes per-GPU checks, applies the tier, skips checks whose
preconditions failed, and prints the per-host summary.

A fleet run (testinfra's ``--hosts``, or several hosts from ``pytest_gpuhost_make_host``)
checks every host: each check is parametrized by ``gpuhost_target`` (the host's name) at
session scope, so the session fixtures (facts, health survey, kernel log) exist once per host.
"""

from __future__ import annotations

import pickle
import re
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.gather import gather_host_facts
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.facts.selection import select_gpus
from pytest_gpuhost.hosts import remote, workers
from pytest_gpuhost.hosts.batch import Reads
from pytest_gpuhost.hosts.host import Host, LocalHost
from pytest_gpuhost.hosts.remote import (
    CHECK_REACHABLE,
    host_specs,
    hosts_from_config,
    is_remote,
    probe_reachable,
    unreachable_facts,
)
from pytest_gpuhost.interrupts import install_sigterm_handler
from pytest_gpuhost.options import MARKER_TIERS, NEEDS_MARKER, TIER_RUNS, TIERS, UsageError
from pytest_gpuhost.reporting.junit import junit_to_system_out
from pytest_gpuhost.reporting.terminal import fleet_table
from pytest_gpuhost.rootdir import root_from_real_args
from pytest_gpuhost.settings import Settings
from pytest_gpuhost.stash import SESSION_KEY

TARGET = "gpuhost_target"
FACTS_KEY = "gpuhost_facts"


def suite_dir() -> Path:
    """The shipped conformance suite: ``pytest_gpuhost/suites`` when installed, ``suites/`` in a checkout."""
    import importlib.util

    spec = importlib.util.find_spec("pytest_gpuhost.suites")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "suites"


# The skip reasons (here and in the fixtures) of a check whose precondition failed on the host.
PRECONDITION_SKIP = re.compile(r"^(needs [^:]+|no GPU to check): \S+ failed: ")


def as_hosts(made: Host | Sequence[Host] | None) -> list[Host]:
    """What ``pytest_gpuhost_make_host`` returned, as a list; None is the local machine."""
    if made is None:
        return [LocalHost()]
    if isinstance(made, Sequence) and not isinstance(made, str):
        if not made:
            raise UsageError("no host to check")
        return list(made)
    return [made]


class GpuhostSession:
    def __init__(
        self, config: pytest.Config, settings: Settings, host: Host | Sequence[Host] | None = None
    ) -> None:
        self.config = config
        self.settings = settings
        self.hosts: list[Host] = as_hosts(host)
        remote.allow_background_commands()
        self.host: Host = self.hosts[0]
        # Ids name hosts and a reachability check runs once any host is remote or several are checked.
        self.fleet = len(self.hosts) > 1 or any(is_remote(h) for h in self.hosts)
        self._facts_by_host: dict[str, HostFacts] = {}
        self._lock = threading.Lock()
        self.unreachable: dict[str, Diagnosis] = {}
        self._pending_properties: list[tuple[str, str]] = []
        self.precondition_skips: dict[str, str] = {}  # nodeid: why it skipped
        self._written_properties: set[tuple[str, str]] = set()

    @classmethod
    def install(cls, config: pytest.Config) -> GpuhostSession:
        root_from_real_args(config)  # before any ini value is read: it may move the ini file too
        settings = Settings.from_config(config)
        from pytest_gpuhost.input_checks import check_inputs

        check_inputs(config, settings)  # output paths and the Dockerfile, before anything runs
        host = config.hook.pytest_gpuhost_make_host(config=config)
        if host is None and host_specs(config):  # testinfra is imported only when --hosts is given
            try:
                host = hosts_from_config(config) or None  # testinfra's --hosts, when given
            except UsageError:
                raise
            except Exception as exc:  # testinfra's and Ansible's errors for a bad host spec
                raise UsageError(f"--hosts {config.getoption('hosts', default='')}: {exc}") from None
        session = cls(config, settings, host)
        session.receive_facts(getattr(config, "workerinput", None))
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "gpuhost-session")
        from pytest_gpuhost.fixtures import containers as container_fixtures
        from pytest_gpuhost.fixtures import docker as docker_fixtures
        from pytest_gpuhost.fixtures import hardware as hardware_fixtures
        from pytest_gpuhost.fixtures import health as health_fixtures
        from pytest_gpuhost.fixtures import host as fixtures
        from pytest_gpuhost.fixtures import maintenance as maintenance_fixtures
        from pytest_gpuhost.fixtures import report as report_fixtures
        from pytest_gpuhost.fixtures import runtimes as runtime_fixtures
        from pytest_gpuhost.fixtures import stray_load
        from pytest_gpuhost.fixtures import workloads as workload_fixtures
        from pytest_gpuhost.reporting.json_report import PLUGIN_NAME, JsonReport, inventory_from_facts

        report_fixtures.profiles_from_config(config)  # a bad --gpuhost-profile stops here
        if not config.pluginmanager.has_plugin(PLUGIN_NAME):
            config.pluginmanager.register(
                JsonReport(
                    settings.json,
                    lambda: inventory_from_facts(session.facts),
                    save_baseline=settings.save_baseline,
                    baseline=settings.baseline,
                    inventories=session.inventories if session.fleet else None,
                ),
                PLUGIN_NAME,
            )
        from pytest_gpuhost.reporting.host_actions import ActionReporter

        config.pluginmanager.register(ActionReporter(), "gpuhost-actions")  # docs/actions.md
        if settings.prometheus:
            from pytest_gpuhost.reporting.prometheus import PLUGIN_NAME as PROMETHEUS
            from pytest_gpuhost.reporting.prometheus import PrometheusReport

            config.pluginmanager.register(PrometheusReport(settings.prometheus), PROMETHEUS)
        from pytest_gpuhost.reporting import html_report as report_html

        report_html.register(config)  # pytest-html extras: burn plots and diagnoses (only with --html)
        modules = (
            fixtures,
            container_fixtures,
            docker_fixtures,
            health_fixtures,
            maintenance_fixtures,
            report_fixtures,
            runtime_fixtures,
            workload_fixtures,
            stray_load,
            hardware_fixtures,
        )
        for module in modules:
            # Idempotent: a test may already have loaded one with `-p`.
            if not config.pluginmanager.is_registered(module):
                config.pluginmanager.register(module, f"gpuhost-{module.__name__.rsplit('.', 1)[-1]}")
        install_sigterm_handler()
        junit_to_system_out(config)
        from pytest_gpuhost.docker import image_session

        image_session.install(config, settings)  # pull limits and the terminal's pull progress
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            # Collect the shipped suite unless the user named their own paths.
            config.args = [str(suite_dir())]
        return session

    @property
    def facts(self) -> HostFacts:
        """The facts of the first (in a single-host run, the only) host."""
        return self.facts_for(self.host.name)

    def host_named(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def facts_for(self, name: str) -> HostFacts:
        """The host's facts, gathered once per run (per process under pytest-xdist)."""
        facts = self._facts_by_host.get(name)
        if facts is None:
            facts = self._gather(self.host_named(name))
            with self._lock:
                facts = self._facts_by_host.setdefault(name, facts)
        return facts

    def _gather(self, host: Host) -> HostFacts:
        if not self.fleet:
            return gather_host_facts(host, self.settings.timeout)
        reachable, diagnosis = probe_reachable(host, self.settings.timeout)
        if diagnosis is not None:
            self.unreachable[host.name] = diagnosis  # test_host_reachable reports it
            return unreachable_facts(host.name, reachable)
        # NVML answers for the machine pytest runs on only: remote GPUs are read with nvidia-smi.
        facts = gather_host_facts(
            host, self.settings.timeout, use_nvml=not is_remote(host), ahead=self._prefetch_reads(host)
        )
        facts.preconditions["reachable"] = reachable
        return facts

    def _prefetch_reads(self, host: Host) -> Reads | None:
        """What this host's prefetch will ask first, when this process prefetches (a fleet's checks
        run here, not in pytest-xdist's workers): the facts' round trip carries it, one less."""
        from pytest_gpuhost.hosts import prefetch

        config = self.config
        if len(self.hosts) < 2 or config.option.collectonly or config.pluginmanager.has_plugin("dsession"):
            return None
        return prefetch.declared_reads(host, self.settings.timeout)

    def gather_all(self) -> None:
        """Every host's facts, gathered in parallel: a fleet's collection waits for the slowest only."""
        missing = [h.name for h in self.hosts if h.name not in self._facts_by_host]
        if missing and self.fleet:
            workers.import_ahead(self.config, len(self.hosts))  # while the hosts answer
        if len(missing) > 1:
            pool = workers.host_pool(self.config, len(self.hosts))
            futures = [pool.submit(self.facts_for, name) for name in missing]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # Ctrl-C: waiting for the hosts still answering would not end
                remote.stop_background_commands(self.hosts)
                for future in futures:
                    future.cancel()
                raise
        elif missing:
            self.facts_for(missing[0])

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist's controller hands each worker the facts it gathered: each host's facts are
        gathered once per run, not once per worker, and every worker collects the same checks."""
        if self.fleet:
            self.gather_all()
            node.workerinput[FACTS_KEY] = pickle.dumps((self._facts_by_host, self.unreachable))

    def receive_facts(self, workerinput: dict[str, Any] | None) -> None:
        """A pytest-xdist worker takes the controller's facts (``pytest_configure_node``)."""
        if workerinput and FACTS_KEY in workerinput:
            facts, unreachable = pickle.loads(workerinput[FACTS_KEY])  # from our own controller
            self._facts_by_host.update(facts)
            self.unreachable.update(unreachable)

    def inventories(self) -> list[dict[str, Any]]:
        from pytest_gpuhost.reporting.json_report import inventory_from_facts

        self.gather_all()
        return [inventory_from_facts(self.facts_for(h.name)) for h in self.hosts]

    def selected_gpus(self) -> tuple[GpuInfo, ...]:
        return select_gpus(self.facts.gpus, self.settings.gpus)

    def target_of(self, item: pytest.Item) -> str:
        """The name of the host that ``item`` checks."""
        callspec = getattr(item, "callspec", None)
        target = callspec.params.get(TARGET) if callspec is not None else None
        return str(target) if target is not None else self.host.name

    def gpu_params(self, facts: HostFacts, selected: tuple[GpuInfo, ...]) -> list[Any]:
        """The ``gpu`` values of one host: its selected GPUs, or one skipped case saying why none."""
        if selected:
            return [pytest.param(g, id=g.test_id) for g in selected]
        listing = facts.preconditions["gpu_listing"]
        reason = (
            f"no GPU to check: {listing.check} failed: {listing.reason}"
            if not listing.ok
            else (f"--gpuhost-gpus {self.settings.gpus!r} selects no GPU")
        )
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-gpu")]

    def _parametrize_fleet(self, metafunc: pytest.Metafunc) -> None:
        """Every check once per host; per-GPU checks once per GPU of each host.

        Session scope: the fixtures that depend on the host are set up once per host. Each host's
        checks form one pytest-xdist group, so ``--dist loadgroup`` keeps them on one worker.
        """
        if TARGET not in metafunc.fixturenames:
            return
        self.gather_all()
        groups = len(self.hosts) > 1
        params: list[Any] = []
        for host in self.hosts:
            marks = [pytest.mark.xdist_group(name=host.name)] if groups else []
            if "gpu" not in metafunc.fixturenames:
                params.append(pytest.param(host.name, id=host.name, marks=marks))
                continue
            facts = self.facts_for(host.name)
            try:
                selected = select_gpus(facts.gpus, self.settings.gpus)
            except UsageError as exc:
                selected = ()
                marks = [*marks, pytest.mark.skip(reason=str(exc))]
            for param in self.gpu_params(facts, selected):
                params.append(
                    pytest.param(
                        host.name, *param.values, id=f"{host.name}-{param.id}", marks=[*marks, *param.marks]
                    )
                )
        if "gpu" in metafunc.fixturenames:
            metafunc.parametrize([TARGET, "gpu"], params, indirect=[TARGET], scope="session")
        else:
            metafunc.parametrize(TARGET, params, indirect=True, scope="session")

    # -- hooks -------------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """``--dist loadgroup`` over several hosts: group by host, which works on every pytest
        (xdist's own ``@group`` suffix is lost under pytest 9.2)."""
        if config.getvalue("dist") != "loadgroup" or len(self.hosts) < 2:
            return None
        from pytest_gpuhost.hosts.scheduler import HostGroupScheduling

        return HostGroupScheduling(config, log, [h.name for h in self.hosts])

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        self.gather_all()
        lines = []
        for host in self.hosts:
            facts = self.facts_for(host.name)
            gpus = facts.gpus
            models = ", ".join(sorted({g.name for g in gpus})) or "none"
            lines.append(
                f"gpuhost: host {facts.host}, tier {self.settings.tier}, driver {facts.driver_version or 'none'}, "
                f"CUDA {facts.cuda_driver_version or 'none'}, {len(gpus)} GPU(s): {models} "
                f"(source: {facts.listing.source if facts.listing.ok else 'none'})"
            )
        return lines + self.image_settings()[1]

    def image_settings(self) -> tuple[Settings, list[str]]:
        """The settings with the images chosen for the drivers (``image_session``), and why."""
        from pytest_gpuhost.docker.image_session import resolved

        self.gather_all()
        return resolved(self.config, self.settings, [self.facts_for(h.name) for h in self.hosts])

    def pytest_pycollect_makeitem(
        self, collector: pytest.Collector, name: str, obj: object
    ) -> list[Any] | None:
        """The reachability check exists in fleet runs only: the local machine is always reachable."""
        if name == CHECK_REACHABLE and not self.fleet:
            return []
        return None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if self.fleet:
            self._parametrize_fleet(metafunc)
            return
        if "gpu" not in metafunc.fixturenames:
            return
        try:
            gpus = self.selected_gpus()
        except UsageError as exc:
            raise pytest.UsageError(f"pytest-gpuhost: {exc}") from None
        metafunc.parametrize("gpu", self.gpu_params(self.facts, gpus))

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> None:
        """A --gpuhost-gpus naming no GPU of this host is a usage error, not a collection error per module."""
        if self.fleet:
            return  # hosts differ: a selection that misses one host skips that host's per-GPU checks
        try:
            self.selected_gpus()
        except UsageError as exc:
            raise pytest.UsageError(f"pytest-gpuhost: {exc}") from None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self.check_needs_names(items)
        runs = TIER_RUNS[self.settings.tier]
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            tiers = [MARKER_TIERS[m.name] for m in item.iter_markers() if m.name in MARKER_TIERS]
            lowest = min(tiers, key=TIERS.index) if tiers else None
            (drop if lowest is not None and lowest not in runs else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
        if self.fleet:
            # One host after the other, each starting with its reachability check: the session
            # fixtures of a host are set up once, and its first failure is the one that explains.
            order = {h.name: i for i, h in enumerate(self.hosts)}

            def key(item: pytest.Item) -> tuple[int, int]:
                first = getattr(item, "originalname", item.name) == CHECK_REACHABLE
                return order.get(self.target_of(item), -1), 0 if first else 1

            items.sort(key=key)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        reason = self.precondition_skip(item)
        if reason is not None:
            pytest.skip(reason)

    def precondition_skip(self, item: pytest.Item) -> str | None:
        """Why ``item`` skips before its fixtures run (its host or a ``gpuhost_needs`` failed)."""
        facts = self.facts_for(self.target_of(item))
        if self.fleet:
            reachable = facts.preconditions.get("reachable")
            is_probe = getattr(item, "originalname", item.name) == CHECK_REACHABLE
            if reachable is not None and not reachable.ok and not is_probe:
                return f"needs reachable: {reachable.check} failed: {reachable.reason}"
        for marker in item.iter_markers(NEEDS_MARKER):
            for name in marker.args:
                pre = facts.preconditions[name]
                if not pre.ok:
                    if not pre.check:  # nothing failed: the precondition does not apply to this host
                        return f"not applicable: {pre.reason}"
                    return f"needs {name}: {pre.check} failed: {pre.reason}"
        return None

    def check_needs_names(self, items: Sequence[pytest.Item]) -> None:
        """An unknown name in ``gpuhost_needs(...)`` is a usage error at collection, not a KeyError
        in every check's setup."""
        self.gather_all()
        known: set[str] = set()
        for host in self.hosts:
            known.update(self.facts_for(host.name).preconditions)
        for item in items:
            for marker in item.iter_markers(NEEDS_MARKER):
                unknown = [name for name in marker.args if name not in known]
                if unknown:
                    raise pytest.UsageError(
                        f"pytest-gpuhost: {item.nodeid}: @pytest.mark.{NEEDS_MARKER}({', '.join(map(repr, unknown))}): "
                        f"unknown precondition; known: {', '.join(sorted(known))}"
                    )

    def note_precondition_skip(self, report: pytest.TestReport) -> None:
        """Remember each check skipped because a precondition failed (also from xdist workers)."""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            if PRECONDITION_SKIP.match(reason):
                self.precondition_skips.setdefault(report.nodeid, reason)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        """A run in which a selected check skipped for a failed precondition fails, even when the
        check that owns the precondition was deselected: a host without a GPU never passes.

        A fleet run gathers every host's session facts the selected checks need, all hosts at once
        and beside the checks (``prefetch``), so that hosts checked one after the other wait on
        no round trip of theirs."""
        from pytest_gpuhost.hosts import prefetch

        warming = None
        prefetching = self.fleet and len(self.hosts) > 1 and not hasattr(self.config, "workerinput")
        if prefetching and not session.config.option.collectonly:
            runs = [item for item in session.items if self.precondition_skip(item) is None]
            warming = prefetch.warm(self.config, prefetch.plan(runs, self.target_of))  # not for skips
        try:
            result = yield
        except BaseException:
            prefetch.finish(self.config, warming, interrupted=True)
            raise
        prefetch.finish(self.config, warming, interrupted=False)
        if self.precondition_skips and not session.testsfailed:
            session.testsfailed = 1  # pytest then ends with TESTS_FAILED
        return result

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C (or SIGTERM) wins over the hosts' background threads: no command of theirs may
        keep pytest from exiting (``hosts.remote.stop_background_commands``)."""
        remote.stop_background_commands(self.hosts)

    def record_suite_property(self, host: str, name: str, value: object) -> None:
        """A JUnit testsuite property of ``host``; with several hosts its name ends in ``[host]``.

        It travels on the next test report, so it reaches the JUnit writer also from a
        pytest-xdist worker (pytest's ``record_testsuite_property`` is a no-op there).
        """
        if len(self.hosts) > 1:
            name = f"{name}[{host}]"
        with self._lock:
            self._pending_properties.append((name, str(value)))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Name the host on the report (the JSON report and the fleet table group by it), and
        carry the suite properties recorded since the last report."""
        report = yield
        if self.fleet:
            report.gpuhost_host = self.target_of(item)  # type: ignore[attr-defined]
        with self._lock:
            pending, self._pending_properties = self._pending_properties, []
        if pending:
            report.gpuhost_suite_properties = pending  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """In the process that writes the JUnit report, each property once per name and value."""
        from _pytest.junitxml import xml_key  # the LogXML instance; pytest has no public accessor

        self.note_precondition_skip(report)
        xml = self.config.stash.get(xml_key, None)
        for name, value in getattr(report, "gpuhost_suite_properties", None) or ():
            if xml is not None and (name, value) not in self._written_properties:
                self._written_properties.add((name, value))
                xml.add_global_property(name, value)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        write = terminalreporter.write_line
        if self.precondition_skips:
            nodeid, reason = next(iter(self.precondition_skips.items()))
            write(
                f"gpuhost: the run fails: {len(self.precondition_skips)} selected check(s) skipped because "
                f"a precondition failed, e.g. {nodeid.split('::')[-1]}: {reason}",
                red=True,
            )
        for host in self.hosts:
            facts = self.facts_for(host.name)
            terminalreporter.section(f"gpuhost: {facts.host}")
            write(f"driver {facts.driver_version or 'none'}, CUDA {facts.cuda_driver_version or 'none'}")
            if not facts.gpus:
                write("GPUs: none found")
            for gpu in facts.gpus:
                write(
                    f"  gpu{gpu.index}  {gpu.name}  {gpu.uuid}  {gpu.pci_bus_id}  {gpu.memory_total_mib or '?'} MiB"
                )
        if len(self.hosts) > 1:
            fleet_table(terminalreporter, [h.name for h in self.hosts])
        failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
        for report in failed:
            text = str(getattr(report, "longreprtext", "") or report.longrepr or "")
            first = next((line for line in text.splitlines() if line.strip().startswith("FOUND:")), "")
            first = first or (text.strip().splitlines() or [""])[-1]
            write(
                f"FAILED {report.nodeid.split('::')[-1]}: {first.strip().removeprefix('FOUND: ')}", red=True
            )
