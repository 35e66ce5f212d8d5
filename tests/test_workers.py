"""The run's pool of host threads (``pytest_gpuhost.hosts.workers``): one per host, shared by
the fact gathering and the prefetch, and the heavy imports started ahead beside the hosts."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest

from pytest_gpuhost.hosts import workers


class FakeConfig:
    def __init__(self) -> None:
        self.stash = pytest.Stash()
        self.cleanups: list[Any] = []

    def add_cleanup(self, cleanup: Any) -> None:
        self.cleanups.append(cleanup)


def test_one_pool_per_run_closed_with_the_run() -> None:
    config: Any = FakeConfig()
    pool = workers.host_pool(config, 4)
    assert workers.host_pool(config, 40) is pool  # the first use sizes it
    names = {pool.submit(lambda: threading.current_thread().name).result() for _ in range(8)}
    assert all(name.startswith("gpuhost-host") for name in names)
    assert len(config.cleanups) == 1
    config.cleanups[0]()
    assert workers.POOL_KEY not in config.stash
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)  # shut down


IMPORT_AHEAD = """
import sys, threading
from pytest_gpuhost.hosts import workers
class Config:
    def __init__(self):
        import pytest
        self.stash = pytest.Stash()
    def add_cleanup(self, cleanup):
        pass
assert "docker" not in sys.modules
config = Config()
workers.import_ahead(config, 2)
pool = config.stash[workers.POOL_KEY]
print(pool._max_workers)
pool.shutdown(wait=True)
print("docker" in sys.modules)
"""


def test_the_docker_sdk_is_imported_ahead_in_a_thread_beside_the_hosts() -> None:
    """A fresh interpreter: the SDK is not imported yet, and the pool has a thread for it."""
    done = subprocess.run([sys.executable, "-c", IMPORT_AHEAD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "True"]
