"""Per-host session facts gathered for all hosts at once, before the first check runs.

A fleet run without pytest-xdist checks one host after the other; each host's session fixtures
(the Docker tunnel and ``docker info``, the toolkit's files, the health survey, the kernel log)
cost round trips over SSH, and serially they add up with the number of hosts. Modules register
the work behind such a fixture here; before the run loop the session computes, for every host
that a collected check of that fixture targets, all of them in threads, one host per thread.
The fixture then takes the value (or re-raises the exception) instead of asking again.

Only the process that runs the checks prefetches (not a pytest-xdist controller), only with two
or more hosts, and only what the selected checks use.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from pytest_gpuhost.hosts.host import Host

T = TypeVar("T")
# fixture name -> how to compute its value for (config, host name); the order is the order of work.
WARMERS: dict[str, Callable[[pytest.Config, str], Any]] = {}
CACHE_KEY = pytest.StashKey[dict[tuple[str, str], tuple[bool, Any]]]()
MAX_THREADS = 64


def register(fixture: str, compute: Callable[[pytest.Config, str], Any]) -> None:
    WARMERS.setdefault(fixture, compute)


def register_reader(fixture: str, read: Callable[[Host, float], Any]) -> None:
    """Register a fixture whose value is ``read(host, timeout)`` of the host that is named."""

    def compute(config: pytest.Config, name: str) -> Any:
        from pytest_gpuhost.stash import SESSION_KEY

        session = config.stash[SESSION_KEY]
        return read(session.host_named(name), session.settings.timeout)

    register(fixture, compute)


def value(config: pytest.Config, fixture: str, host: str, compute: Callable[[], T]) -> T:
    """The prefetched value of ``fixture`` for ``host``, else ``compute()`` now (and kept)."""
    cache = config.stash.setdefault(CACHE_KEY, {})
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


def plan(items: Iterable[pytest.Item], target_of: Callable[[pytest.Item], str]) -> dict[str, list[str]]:
    """Per host, the registered fixtures its selected checks use, in registration order."""
    wanted: dict[str, set[str]] = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ())) & WARMERS.keys()
        if names:
            wanted.setdefault(target_of(item), set()).update(names)
    return {host: [f for f in WARMERS if f in names] for host, names in wanted.items()}


def warm(config: pytest.Config, work: Mapping[str, Sequence[str]]) -> None:
    """Compute every host's planned values, one thread per host; failures are kept for the fixture."""
    if len(work) < 2:
        return

    def one_host(host: str) -> None:
        for fixture in work[host]:
            compute = functools.partial(WARMERS[fixture], config, host)
            # A failure is kept in the cache: the check that uses the fixture reports it.
            with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
                value(config, fixture, host, compute)

    pool = ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(work)), thread_name_prefix="gpuhost-prefetch")
    try:
        wait([pool.submit(one_host, host) for host in work])
    finally:
        # Ctrl-C: do not wait for the hosts still answering; their fixtures ask again if needed.
        pool.shutdown(wait=False, cancel_futures=True)
