"""Prefetching per-host session facts: all hosts at once, each value computed once, and a failure
(a skip too) kept for the check that uses the fixture."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pytest_gpuhost.hosts import prefetch


class FakeConfig:
    def __init__(self) -> None:
        self.stash = pytest.Stash()


class FakeItem:
    def __init__(self, host: str, *fixtures: str) -> None:
        self.host = host
        self.fixturenames = list(fixtures)


@pytest.fixture
def warmers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    table: dict[str, Any] = {}
    monkeypatch.setattr(prefetch, "WARMERS", table)
    return table


def test_a_value_is_computed_once_and_a_skip_is_kept() -> None:
    config: Any = FakeConfig()
    calls: list[str] = []

    def compute(answer: int) -> int:
        calls.append(str(answer))
        return answer

    assert prefetch.value(config, "f", "gpu01", lambda: compute(42)) == 42
    assert prefetch.value(config, "f", "gpu01", lambda: compute(43)) == 42
    assert calls == ["42"]

    def skipped() -> int:
        calls.append("skip")
        pytest.skip("needs docker")

    for _ in range(2):
        with pytest.raises(pytest.skip.Exception, match="needs docker"):
            prefetch.value(config, "g", "gpu01", skipped)
    assert calls == ["42", "skip"]


def test_hosts_are_warmed_at_once_and_only_what_is_selected(warmers: dict[str, Any]) -> None:
    config: Any = FakeConfig()
    seen: list[tuple[str, str, str]] = []
    # Passes only when the four hosts' first values are computed at the same time.
    together = threading.Barrier(4, timeout=20)

    def slow(name: str) -> Any:
        def compute(cfg: Any, host: str) -> str:
            if name == "engine":
                together.wait()
            seen.append((name, host, threading.current_thread().name))
            return f"{name}@{host}"

        return compute

    prefetch.register("gpuhost_engine", slow("engine"))
    prefetch.register("gpuhost_toolkit", slow("toolkit"))
    items = [FakeItem(f"gpu0{i}", "gpuhost_engine", "gpuhost_facts") for i in range(1, 5)]
    items.append(FakeItem("gpu01", "gpuhost_toolkit"))
    work = prefetch.plan(items, lambda item: item.host)  # type: ignore[arg-type, attr-defined]
    assert work == {
        "gpu01": ["gpuhost_engine", "gpuhost_toolkit"],
        "gpu02": ["gpuhost_engine"],
        "gpu03": ["gpuhost_engine"],
        "gpu04": ["gpuhost_engine"],
    }
    prefetch.finish(config, prefetch.warm(config, work), interrupted=False)
    assert not together.broken
    assert len(seen) == 5 and all(thread.startswith("gpuhost-host") for _, _, thread in seen)
    assert prefetch.value(config, "gpuhost_engine", "gpu03", lambda: "again") == "engine@gpu03"


def test_one_host_is_not_prefetched(warmers: dict[str, Any]) -> None:
    config: Any = FakeConfig()
    prefetch.register("gpuhost_engine", lambda cfg, host: pytest.fail("must not run"))
    assert prefetch.warm(config, {"gpu01": ["gpuhost_engine"]}) is None
    assert prefetch.value(config, "gpuhost_engine", "gpu01", lambda: "now") == "now"


def test_the_first_host_s_checks_start_while_another_host_still_answers(warmers: dict[str, Any]) -> None:
    """gpu02 answers only once gpu01's value was taken: a warm that waited for every host, or a
    value that waited for the slowest, would hang here (the event's timeout fails it instead)."""
    config: Any = FakeConfig()
    gpu01_taken = threading.Event()
    calls: list[str] = []

    def compute(cfg: Any, host: str) -> str:
        if host == "gpu02":
            assert gpu01_taken.wait(timeout=20), "the checks waited for the slowest host"
        calls.append(host)
        return f"engine@{host}"

    prefetch.register("gpuhost_engine", compute)
    pool = prefetch.warm(config, {"gpu01": ["gpuhost_engine"], "gpu02": ["gpuhost_engine"]})
    try:
        assert prefetch.value(config, "gpuhost_engine", "gpu01", lambda: "again") == "engine@gpu01"
        gpu01_taken.set()
        # gpu02's value is still being computed: the check waits for it rather than asking again.
        assert prefetch.value(config, "gpuhost_engine", "gpu02", lambda: "again") == "engine@gpu02"
    finally:
        prefetch.finish(config, pool, interrupted=False)
    assert sorted(calls) == ["gpu01", "gpu02"]


def test_a_host_s_thread_never_waits_for_its_own_later_value(warmers: dict[str, Any]) -> None:
    """The toolkit's facts ask for the engine's: planned later for the same host, it is computed
    there and then, not awaited (which would wait forever)."""
    config: Any = FakeConfig()
    done = threading.Semaphore(0)

    def toolkit(cfg: Any, host: str) -> str:
        engine = prefetch.value(cfg, "gpuhost_engine", host, lambda: f"engine@{host}")
        done.release()
        return f"toolkit with {engine}"

    prefetch.register("gpuhost_toolkit", toolkit)
    prefetch.register("gpuhost_engine", lambda cfg, host: pytest.fail("already kept"))
    work = {h: ["gpuhost_toolkit", "gpuhost_engine"] for h in ("gpu01", "gpu02")}
    pool = prefetch.warm(config, work)
    assert done.acquire(timeout=20) and done.acquire(timeout=20)  # both hosts' threads got there
    prefetch.finish(config, pool, interrupted=False)
    assert prefetch.value(config, "gpuhost_toolkit", "gpu02", lambda: "again") == "toolkit with engine@gpu02"
    assert prefetch.value(config, "gpuhost_engine", "gpu01", lambda: "again") == "engine@gpu01"


def test_after_ctrl_c_nobody_waits_for_a_host_that_hangs(warmers: dict[str, Any]) -> None:
    config: Any = FakeConfig()
    release = threading.Event()

    def hangs(cfg: Any, host: str) -> str:
        release.wait(timeout=20)
        return "late"

    prefetch.register("gpuhost_engine", hangs)
    pool = prefetch.warm(config, {"gpu01": ["gpuhost_engine"], "gpu02": ["gpuhost_engine"]})
    try:
        prefetch.finish(config, pool, interrupted=True)  # returns at once
        assert prefetch.value(config, "gpuhost_engine", "gpu01", lambda: "asked anew") == "asked anew"
    finally:
        release.set()
