"""One pool of threads per run for the work done on every host at once.

Gathering the facts starts the threads and the prefetch reuses them. A thread started while the
checks run waits for a GIL hand-off from every busy thread before it runs (5 ms each): starting
32 of them at the run loop's start cost a 32-host quick tier 0.2 s, one fifth of a host's share.
"""

from __future__ import annotations

import importlib
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

MAX_THREADS = 64
# Imported on first use by every host's thread at once (the docker SDK and requests: 0.1 s of
# CPU, with the import lock held); while the hosts' first answers are awaited the GIL is idle.
IMPORT_AHEAD = ("docker",)
POOL_KEY = pytest.StashKey[ThreadPoolExecutor]()


def host_pool(config: pytest.Config, hosts: int) -> ThreadPoolExecutor:
    """The run's pool, made on first use with one thread per host (``hosts``, at most 64) and
    shut down with the run (``config.add_cleanup``)."""
    pool = config.stash.get(POOL_KEY, None)
    if pool is None:
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(MAX_THREADS, hosts)), thread_name_prefix="gpuhost-host"
        )
        config.stash[POOL_KEY] = pool
        add_cleanup = getattr(config, "add_cleanup", None)
        if add_cleanup is not None:
            add_cleanup(lambda: close(config))
    return pool


def close(config: pytest.Config) -> None:
    """Cancel what has not started and return: a host still answering is ended by its own
    timeout or by ``remote.stop_background_commands``, never awaited here."""
    pool = config.stash.get(POOL_KEY, None)
    if pool is not None:
        del config.stash[POOL_KEY]
        pool.shutdown(wait=False, cancel_futures=True)


def import_ahead(config: pytest.Config, hosts: int) -> None:
    """Start importing ``IMPORT_AHEAD`` in the run's pool and return at once. An import that
    fails is left for its first real use to report."""
    missing = [name for name in IMPORT_AHEAD if name not in sys.modules]
    if missing:
        pool = host_pool(config, hosts + 1)  # a thread for the import beside each host's
        for name in missing:
            pool.submit(importlib.import_module, name)
