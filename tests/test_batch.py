"""Batched reads (``pytest_gpuhost.hosts.batch``) against a real loopback sshd: a batch is one round
trip, and every answer in it is the answer the host gives to the same question asked alone,
down to exit statuses, stderr, NUL bytes and timeouts. An answer is handed out once, only to
the thread that asked for the batch, and never outlives its block."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hosts_support import HereBackend
from sshd_support import SshLab

from pytest_gpuhost.facts.docker_engine import list_daemon_processes, parse_engine
from pytest_gpuhost.facts.gather import gather_host_facts
from pytest_gpuhost.facts.toolkit import gather_toolkit, toolkit_reads
from pytest_gpuhost.hosts import prefetch, remote_shell, workers
from pytest_gpuhost.hosts.batch import Reads, batched, builtins_only
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.hosts.remote import TestinfraHost, batch_items, control_path
from pytest_gpuhost.stash import SESSION_KEY


class Exchanges:
    """Counts the host's round trips: commands through testinfra and exchanges with the shell."""

    def __init__(self, host: TestinfraHost) -> None:
        self.testinfra = 0
        self.shell = 0
        inner_run = host.testinfra.run
        shell = host.shell
        assert shell is not None
        inner_exchange = shell._exchange

        def run(command: str) -> Any:
            self.testinfra += 1
            return inner_run(command)

        def exchange(*args: Any) -> Any:
            self.shell += 1
            return inner_exchange(*args)

        host.testinfra = _Proxy(host.testinfra, run)
        shell._exchange = exchange  # type: ignore[method-assign,assignment]

    @property
    def total(self) -> int:
        return self.testinfra + self.shell


class _Proxy:
    """testinfra's host with a counted ``run``."""

    def __init__(self, inner: Any, run: Any) -> None:
        self.backend = inner.backend
        self.run = run


@pytest.fixture
def node(lab: SshLab) -> Iterator[tuple[TestinfraHost, Exchanges]]:
    """A loopback host whose connection one command proved, and a count of its round trips."""
    import testinfra

    lab.start("node1", SetEnv="SHLVL=1")
    kwargs = {"ssh_config": str(lab.ssh_config())}
    backend_host = testinfra.get_host(
        "ssh://node1", controlpath=control_path("ssh://node1", kwargs), **kwargs
    )
    host = TestinfraHost(backend_host, "node1", "ssh://node1")
    exchanges = Exchanges(host)
    try:
        assert host.run(["true"]).ok
        yield host, exchanges
    finally:
        host.close()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files of every kind a fact module reads."""
    (tmp_path / "text").write_text("line one\nline two\n")
    (tmp_path / "no-newline").write_text("last line")
    (tmp_path / "nul").write_bytes(b"dockerd\0--config-file\0/etc/docker/daemon.json\0")
    (tmp_path / "latin1").write_bytes(b"caf\xe9\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / ".hidden").write_text("")
    (tmp_path / "dir" / "nvidia0").write_text("")
    (tmp_path / "dir" / "with space").write_text("")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "link").symlink_to("text")
    (tmp_path / "dangling").symlink_to("nowhere")
    return tmp_path


def questions(tree: Path) -> Reads:
    paths = [str(tree / name) for name in ("text", "no-newline", "nul", "latin1", "empty", "dir", "missing")]
    return Reads(
        files=tuple(paths),
        dirs=(str(tree / "dir"), str(tree / "emptydir"), str(tree / "missing"), str(tree / "text")),
        paths=(str(tree / "text"), str(tree / "dangling"), str(tree / "missing")),
        links=(str(tree / "link"), str(tree / "text"), str(tree / "missing")),
        commands=(
            (("sh", "-c", "echo out; echo err >&2; exit 3"), 10),
            (("printf", "%s|", "two\nlines", "it's"), 10),
            (("no-such-command-gpuhost",), 10),
            (("sleep", "5"), 1),
            (("cat",), 10),  # stdin is empty: it must not read the batch
        ),
    )


def ask(host: Any, reads: Reads) -> list[Any]:
    """Every answer to ``reads``, as the fact modules would ask them one by one."""
    answers: list[Any] = []
    for path in reads.files:
        answers.append(host.read_text(path))
    answers += [host.listdir(path) for path in reads.dirs]
    answers += [host.exists(path) for path in reads.paths]
    answers += [host.readlink(path) for path in reads.links]
    for argv, timeout in reads.commands:
        result = host.run(argv, timeout=timeout)
        answers.append((result.returncode, result.stdout, result.stderr, result.missing, result.timed_out))
    return answers


def test_a_batch_is_one_round_trip_with_the_answers_of_single_questions(
    node: tuple[TestinfraHost, Exchanges], tree: Path
) -> None:
    host, exchanges = node
    reads = questions(tree)
    before = exchanges.total
    with batched(host, reads):
        together = ask(host, reads)
    assert exchanges.total == before + 1, "the batch took more than one round trip"
    alone = ask(host, reads)
    assert exchanges.total == before + 1 + 22, "the single questions were not asked one by one"
    assert together == alone
    # What the answers are, so that both paths cannot be wrong alike.
    text, no_newline, nul, latin1, empty, directory, missing = together[:7]
    assert (text, no_newline, empty, directory, missing) == (
        "line one\nline two\n",
        "last line",
        "",
        None,
        None,
    )
    assert nul == "dockerd\0--config-file\0/etc/docker/daemon.json\0"
    assert latin1 == "caf\ufffd\n"
    assert together[7:11] == [[".hidden", "nvidia0", "with space"], [], [], []]  # a file has no entries
    assert together[11:14] == [True, True, False]
    assert together[14:17] == ["text", None, None]
    failing, quoted, absent, slow, no_stdin = together[17:]
    assert failing == (3, "out\n", "err\n", False, False)
    assert quoted[:2] == (0, "two\nlines|it's|")
    assert absent[3] and slow[4] and no_stdin[:2] == (0, "")


def test_an_answer_is_handed_out_once_and_never_outlives_its_block(
    node: tuple[TestinfraHost, Exchanges], tree: Path
) -> None:
    host, _ = node
    path = str(tree / "text")
    with batched(host, Reads(files=(path, str(tree / "empty")))):
        (tree / "text").write_text("changed\n")
        assert host.read_text(path) == "line one\nline two\n"  # from the batch
        assert host.read_text(path) == "changed\n"  # asked again
        (tree / "empty").write_text("now full\n")
    assert host.read_text(str(tree / "empty")) == "now full\n"  # the unused answer was dropped


def test_a_batch_inside_a_batch_asks_only_what_the_outer_one_did_not(
    node: tuple[TestinfraHost, Exchanges], tree: Path
) -> None:
    """The prefetch asks a host's declared reads first; a fact module's own batch inside it must
    not ask them again, and what the inner block leaves stays for the outer one."""
    host, exchanges = node
    text, empty = str(tree / "text"), str(tree / "empty")
    before = exchanges.total
    with batched(host, Reads(files=(text, empty))):
        with batched(host, Reads(files=(text,))):  # all answered already: no round trip
            assert exchanges.total == before + 1
            assert host.read_text(text) == "line one\nline two\n"
        with batched(host, Reads(files=(empty,), paths=(text,))):  # one question left to ask
            assert exchanges.total == before + 2
        assert host.read_text(empty) == ""  # the outer batch's answer outlived the inner blocks
        assert exchanges.total == before + 2


def test_a_host_s_prefetch_asks_the_declared_reads_in_its_first_round_trip(
    node: tuple[TestinfraHost, Exchanges], tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fixtures that read files one after the other cost the host one round trip, not two."""
    host, exchanges = node
    session: Any = types.SimpleNamespace(
        host_named=lambda name: host, settings=types.SimpleNamespace(timeout=10.0)
    )
    stash = pytest.Stash()
    stash[SESSION_KEY] = session
    fake_config: Any = types.SimpleNamespace(stash=stash, add_cleanup=lambda fn: None)
    monkeypatch.setattr(prefetch, "WARMERS", {})
    monkeypatch.setattr(prefetch, "READS", {})

    def reading(path: Path) -> tuple[Any, Any]:
        """A fixture's computation that reads ``path``, and its declared reads."""
        return (lambda cfg, name: host.read_text(str(path))), (lambda h, timeout: Reads(files=(str(path),)))

    for name, path in (("text_fixture", tree / "text"), ("empty_fixture", tree / "empty")):
        prefetch.register(name, *reading(path))
    before = exchanges.total
    work = {"node1": ["text_fixture", "empty_fixture"], "node2": []}
    prefetch.finish(fake_config, prefetch.warm(fake_config, work), interrupted=False)
    assert exchanges.total == before + 1
    assert prefetch.value(fake_config, "text_fixture", "node1", lambda: "again") == "line one\nline two\n"
    assert prefetch.value(fake_config, "empty_fixture", "node1", lambda: "again") == ""
    workers.close(fake_config)


def test_reads_asked_ahead_answer_the_one_later_batch_that_takes_them(
    node: tuple[TestinfraHost, Exchanges], tree: Path
) -> None:
    """A fleet host's facts carry its prefetch's first reads: the prefetch, in another thread,
    asks the host nothing for them. They are taken once, and only by a batch that says so."""
    host, exchanges = node
    text, empty, link = str(tree / "text"), str(tree / "empty"), str(tree / "link")
    before = exchanges.total
    with batched(host, Reads(files=(text,)), ahead=Reads(files=(text, empty), links=(link,))):
        assert host.read_text(text) == "line one\nline two\n"
        assert host.read_text(empty) is not None and exchanges.total == before + 2  # not this block's
    (tree / "text").write_text("changed\n")
    with batched(host, Reads(files=(text,))):  # does not take them: asks the host
        assert host.read_text(text) == "changed\n"
    assert exchanges.total == before + 3
    seen: list[Any] = []

    def later() -> None:
        with batched(host, Reads(files=(text, empty)), take_ahead=True):
            seen.extend([host.read_text(text), host.read_text(empty), exchanges.total])

    thread = threading.Thread(target=later)
    thread.start()
    thread.join()
    assert seen == ["line one\nline two\n", "", before + 3]  # as read ahead, with no round trip
    with batched(host, Reads(links=(link,)), take_ahead=True):  # taken already: asked now
        assert host.readlink(link) == "text"
    assert exchanges.total == before + 4


def test_a_fleet_host_s_facts_carry_its_prefetch_s_first_reads(
    node: tuple[TestinfraHost, Exchanges], tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The facts' round trip asks what the prefetch declared; the prefetch then costs none."""
    host, exchanges = node
    session: Any = types.SimpleNamespace(
        host_named=lambda name: host, settings=types.SimpleNamespace(timeout=10.0)
    )
    stash = pytest.Stash()
    stash[SESSION_KEY] = session
    fake_config: Any = types.SimpleNamespace(stash=stash, add_cleanup=lambda fn: None)
    monkeypatch.setattr(prefetch, "WARMERS", {})
    monkeypatch.setattr(prefetch, "READS", {})
    path = str(tree / "text")
    prefetch.register(
        "text_fixture", lambda cfg, name: host.read_text(path), lambda h, t: Reads(files=(path,))
    )
    before = exchanges.total
    gather_host_facts(host, 10.0, use_nvml=False, ahead=prefetch.declared_reads(host, 10.0))
    assert exchanges.total == before + 1
    work = {"node1": ["text_fixture"], "node2": []}
    prefetch.finish(fake_config, prefetch.warm(fake_config, work), interrupted=False)
    assert exchanges.total == before + 1
    assert prefetch.value(fake_config, "text_fixture", "node1", lambda: "again") == "line one\nline two\n"
    workers.close(fake_config)


def test_a_builtins_only_script_runs_in_the_batch_s_shell_and_leaves_its_variables_alone(
    node: tuple[TestinfraHost, Exchanges], tree: Path
) -> None:
    """No `timeout` and no `sh` of its own, the same answer, and the batch's own variables (its
    token and folder, named t and d) survive a script that sets them."""
    host, exchanges = node
    script = builtins_only('t=x; d=y; for a; do printf "%s|" "$a"; done; [ "$#" = 2 ]')
    argv = ("sh", "-c", script, "sh", "one two", "it's")
    (item,) = batch_items(Reads(commands=((argv, 10),)), host._command)
    assert not item.remote.startswith("timeout") and " sh -c " not in item.remote
    text = str(tree / "text")
    before = exchanges.total
    with batched(host, Reads(commands=((argv, 10),), files=(text,))):
        batched_answer = host.run(argv, timeout=10)
        assert host.read_text(text) == "line one\nline two\n"
    assert exchanges.total == before + 1
    alone = host.run(argv, timeout=10)
    assert (
        (batched_answer.returncode, batched_answer.stdout)
        == (alone.returncode, alone.stdout)
        == (
            0,
            "one two|it's|",
        )
    )


def test_another_thread_asks_the_host_itself(node: tuple[TestinfraHost, Exchanges], tree: Path) -> None:
    host, _ = node
    path = str(tree / "text")
    seen: list[str | None] = []
    with batched(host, Reads(files=(path,))):
        (tree / "text").write_text("changed\n")
        other = threading.Thread(target=lambda: seen.append(host.read_text(path)))
        other.start()
        other.join()
        assert host.read_text(path) == "line one\nline two\n"
    assert seen == ["changed\n"]


def test_a_host_whose_shell_ended_answers_one_question_at_a_time(
    node: tuple[TestinfraHost, Exchanges], tree: Path
) -> None:
    host, exchanges = node
    assert host.shell is not None
    host.shell.close()
    reads = questions(tree)
    before = exchanges.testinfra
    with batched(host, reads):
        together = ask(host, reads)
    assert exchanges.testinfra == before + 22
    assert together == ask(host, reads)


def test_a_batch_past_its_deadline_leaves_every_question_to_be_asked(
    node: tuple[TestinfraHost, Exchanges], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file read has no remote timeout of its own in a batch; one that hangs (here a FIFO that
    nobody writes) ends the batch at its local deadline, and the questions are asked again."""
    host, exchanges = node
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr("pytest_gpuhost.hosts.remote.CONNECT_GRACE", 0.5)
    monkeypatch.setattr("pytest_gpuhost.hosts.remote.READ_SECONDS", 0.5)
    try:
        before = exchanges.testinfra
        started = time.monotonic()
        with batched(host, Reads(files=(str(fifo), "/etc/hostname"))):
            assert time.monotonic() - started < 5  # the budget: two reads and the grace
            assert host.shell is not None and host.shell.dead
            assert host.read_text("/etc/hostname") == Path("/etc/hostname").read_text()
        assert exchanges.testinfra == before + 1  # asked again, through testinfra
    finally:
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "w"):  # the host's `cat` may end
            pass


def test_the_local_host_needs_no_batch(tree: Path) -> None:
    host = LocalHost()
    reads = dataclasses.replace(questions(tree), files=(str(tree / "text"),))  # a directory raises here
    with batched(host, reads):
        together = ask(host, reads)
    assert together == ask(host, reads)


def test_facts_gathered_in_batches_are_the_facts_of_single_questions(
    node: tuple[TestinfraHost, Exchanges], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host is this machine: its PCI bus, /proc, Docker daemons and toolkit files, whatever they are."""
    host, exchanges = node
    before = exchanges.total
    batched_facts = gather_host_facts(host, 10.0, use_nvml=False)
    batched_toolkit = gather_toolkit(host, 10.0)
    batched_daemons = list_daemon_processes(host)
    asked = exchanges.total - before
    monkeypatch.setattr(TestinfraHost, "preload", lambda self, *asked: None)
    before = exchanges.total
    assert gather_host_facts(host, 10.0, use_nvml=False) == batched_facts
    assert gather_toolkit(host, 10.0) == batched_toolkit
    assert list_daemon_processes(host) == batched_daemons
    alone = exchanges.total - before
    assert asked <= 5 and alone >= asked + 10, (asked, alone)


def test_a_fleet_host_s_toolkit_facts_need_no_round_trip_of_their_own(
    node: tuple[TestinfraHost, Exchanges],
) -> None:
    """The prefetch's first round trip holds the toolkit's usual files (``toolkit_reads``); the
    daemon's environment comes with its command line: the toolkit asks the host nothing more."""
    host, exchanges = node
    with batched(host, toolkit_reads(10.0)):  # as a fleet host's prefetch holds them
        daemons = list_daemon_processes(host)
        if not daemons:
            pytest.skip("needs a Docker daemon running on this machine")
        engine = parse_engine({}, {}, docker_host=None, sdk_version=None, socket=None, process=daemons[0])
        before = exchanges.total
        toolkit = gather_toolkit(host, 10.0, engine)
        assert exchanges.total == before
    assert toolkit == gather_toolkit(host, 10.0, engine)  # the same facts, asked anew


def test_the_shell_frames_each_batched_answer() -> None:
    """The loop itself, without SSH: each command's stdout, stderr and status, then the next."""
    shell = remote_shell.RemoteShell(HereBackend())
    try:
        answers = shell.run_many(
            ["printf 'a\\n\\nb'", "sh -c 'echo e >&2; exit 4'", "printf '%s o\\n' x", "printf 'i o'"],
            timeout=10,
        )
        assert answers == [(0, b"a\n\nb", b""), (4, b"", b"e\n"), (0, b"x o\n", b""), (0, b"i o", b"")]
        assert shell.run("echo next", timeout=10) == (0, b"next\n", b"")  # still in step
    finally:
        shell.close()
