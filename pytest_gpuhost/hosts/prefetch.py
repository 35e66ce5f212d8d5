"""Per-host session facts gathered for all hosts at once, while the checks run.

A fleet run without pytest-xdist checks one host after the other; each host's session fixtures
(the Docker tunnel and ``docker info``, the toolkit's files, the health survey, the kernel log)
cost round trips over SSH, and serially they add up with the number of hosts. Modules register
the work behind such a fixture here; when the run loop starts, the session starts, for every
host that a collected check of that fixture targets, all of them in threads, one host per
thread. The checks start at once: a fixture whose value is still being computed waits for that
value (or re-raises its exception) instead of asking again, so the first host's checks run
while the other hosts still answer, and the slowest host holds up only its own checks.

Only the process that runs the checks prefetches (not a pytest-xdist controller), only with two
or more hosts, and only what the selected checks use.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pytest_gpuhost.hosts import workers
from pytest_gpuhost.hosts.batch import Reads, batched

if TYPE_CHECKING:
    from pytest_gpuhost.hosts.host import Host
    from pytest_gpuhost.settings import Settings

T = TypeVar("T")
# fixture name -> how to compute its value for (config, host name); the order is the order of work.
WARMERS: dict[str, Callable[[pytest.Config, str], Any]] = {}
# fixture name -> what its computation will ask of a host whatever the answers (host, timeout):
# a host's prefetch asks all of its fixtures' reads in one round trip (hosts/batch.py).
READS: dict[str, Callable[[Host, float], Reads]] = {}
CACHE_KEY = pytest.StashKey[dict[tuple[str, str], tuple[bool, Any]]]()
# (fixture, host) -> set once the prefetch has kept that value (or given up on it)
PENDING_KEY = pytest.StashKey[dict[tuple[str, str], threading.Event]]()
_worker = threading.local()  # .host: the host a prefetch thread works for


def register(
    fixture: str,
    compute: Callable[[pytest.Config, str], Any],
    reads: Callable[[Host, float], Reads] | None = None,
) -> None:
    """``compute`` is how the prefetch makes ``fixture``'s value; ``reads``, when given, is what
    that will ask of the host in any case, asked for in the host's first round trip."""
    WARMERS.setdefault(fixture, compute)
    if reads is not None:
        READS.setdefault(fixture, reads)


def reader_fixture(
    name: str,
    read: Callable[[Host, float], Any],
    doc: str,
    reads: Callable[[Host, float], Reads] | None = None,
) -> Any:
    """The session fixture ``name``: ``read(host, timeout)`` of the checked host, once per host
    and prefetched for every host of a fleet (``reads`` as for ``register``). Assign it to a
    module attribute of that name."""

    def prefetched(config: pytest.Config, host: str) -> Any:
        from pytest_gpuhost.stash import SESSION_KEY

        session = config.stash[SESSION_KEY]
        return read(session.host_named(host), session.settings.timeout)

    register(name, prefetched, reads)

    def fixture(pytestconfig: pytest.Config, gpuhost_host: Host, gpuhost_settings: Settings) -> Any:
        return value(
            pytestconfig, name, gpuhost_host.name, lambda: read(gpuhost_host, gpuhost_settings.timeout)
        )

    fixture.__doc__ = doc
    fixture.__name__ = fixture.__qualname__ = name
    return pytest.fixture(scope="session", name=name)(fixture)


def value(config: pytest.Config, fixture: str, host: str, compute: Callable[[], T]) -> T:
    """The prefetched value of ``fixture`` for ``host``, else ``compute()`` now (and kept)."""
    cache = config.stash.setdefault(CACHE_KEY, {})
    found = cache.get((fixture, host))
    if found is None:
        wait_for(config, fixture, host)
        found = cache.get((fixture, host))
    if found is None:
        try:
            result: Any = compute()
        except (Exception, pytest.skip.Exception, pytest.fail.Exception) as exc:  # each caller sees the same
            cache[(fixture, host)] = (False, exc)
            raise
        cache[(fixture, host)] = (True, result)
        return result  # type: ignore[no-any-return]
    ok, result = found
    if not ok:
        raise result
    return result  # type: ignore[no-any-return]


def wait_for(config: pytest.Config, fixture: str, host: str) -> None:
    """Return once the prefetch has made (or given up on) ``fixture`` for ``host``; at once when
    nothing is pending or this is the host's own prefetch thread, which never waits for itself:
    it computes in order. Also for a value that ``fixture``'s computation makes on the way (the
    Docker connection of the engine's facts)."""
    pending = config.stash.get(PENDING_KEY, {}).get((fixture, host))
    if pending is not None and getattr(_worker, "host", None) != host:
        pending.wait()


def plan(items: Iterable[pytest.Item], target_of: Callable[[pytest.Item], str]) -> dict[str, list[str]]:
    """Per host, the registered fixtures its selected checks use, in registration order."""
    wanted: dict[str, set[str]] = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ())) & WARMERS.keys()
        if names:
            wanted.setdefault(target_of(item), set()).update(names)
    return {host: [f for f in WARMERS if f in names] for host, names in wanted.items()}


def warm(
    config: pytest.Config, work: Mapping[str, Sequence[str]]
) -> list[concurrent.futures.Future[None]] | None:
    """Start computing every host's planned values, one thread per host (the run's threads,
    ``workers``), and return at once; ``finish`` ends the work. Failures are kept for the fixture."""
    if len(work) < 2:
        return None
    pending = config.stash.setdefault(PENDING_KEY, {})
    for host, fixtures in work.items():
        for fixture in fixtures:
            pending[(fixture, host)] = threading.Event()

    def one_host(host: str) -> None:
        _worker.host = host
        try:
            with _first_round_trip(config, host, work[host]):
                for fixture in work[host]:
                    compute = functools.partial(WARMERS[fixture], config, host)
                    # A failure is kept in the cache: the check that uses the fixture reports it.
                    with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
                        value(config, fixture, host, compute)
                    pending[(fixture, host)].set()
        finally:
            _worker.host = None  # the thread serves other work of the run next
            for fixture in work[host]:  # whatever ended the thread, no fixture waits for it
                pending[(fixture, host)].set()

    pool = workers.host_pool(config, len(work))
    return [pool.submit(one_host, host) for host in work]  # in the order the checks will ask


@contextlib.contextmanager
def _first_round_trip(config: pytest.Config, name: str, fixtures: Sequence[str]) -> Iterator[None]:
    """Within the block, the reads that ``fixtures`` declared come from one round trip to the
    host: each would otherwise be a round trip of its own, one after the other."""
    from pytest_gpuhost.stash import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is None or not any(fixture in READS for fixture in fixtures):
        yield
        return
    host = session.host_named(name)
    # What the host's facts asked ahead for it (``declared_reads``) saves this round trip.
    with batched(host, declared_reads(host, session.settings.timeout, fixtures), take_ahead=True):
        yield


def declared_reads(host: Host, timeout: float, fixtures: Iterable[str] | None = None) -> Reads:
    """What the computations of ``fixtures`` (all registered ones when None) will ask ``host``."""
    reads = Reads()
    with contextlib.suppress(Exception):  # a read that cannot be named is asked on its own
        for fixture in list(WARMERS) if fixtures is None else fixtures:  # a suite may register meanwhile
            if fixture in READS:
                reads += READS[fixture](host, timeout)
    return reads


def finish(
    config: pytest.Config, warming: Sequence[concurrent.futures.Future[None]] | None, interrupted: bool
) -> None:
    """After the run loop: wait for the hosts still answering (their sessions are torn down
    next), except after Ctrl-C, which waits for nobody; fixtures asked later compute anew."""
    if warming is None:
        return
    for future in warming:
        future.cancel()  # a host not started yet (more hosts than threads) is not started
    if not interrupted:
        concurrent.futures.wait(warming)
    for event in config.stash.get(PENDING_KEY, {}).values():
        event.set()  # a cancelled host's values: computed by whoever asks
    config.stash[PENDING_KEY] = {}
