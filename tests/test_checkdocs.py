"""The per-check pages in docs/checks are generated from the suite's source and must stay current.

A check without a docstring, or a page that no longer matches its check, fails here; the fix is
``python -m tools.checkdocs docs/checks``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tools import checkdocs
from tools.checkdocs import CheckDoc, collect_checks, missing_docstrings, render_all, stale_pages

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHECK_DOCS = DOCS / "checks"
REGENERATE = "regenerate with: python -m tools.checkdocs docs/checks"


@pytest.fixture(scope="module")
def checks() -> list[CheckDoc]:
    return collect_checks(ROOT / "suites")


def test_every_check_has_a_docstring(checks: list[CheckDoc]) -> None:
    """The docstring is the page's "what it verifies": a check without one cannot be documented."""
    assert missing_docstrings(checks) == []


def test_every_check_has_a_current_page(checks: list[CheckDoc], tmp_path: Path) -> None:
    """Regenerated pages equal the committed ones, and no page is left over from a removed check."""
    pages = render_all(checks)
    checkdocs.write_pages(tmp_path, pages)
    generated = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.md")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in CHECK_DOCS.glob("*.md")}
    assert {f"{c.name}.md" for c in checks} | {"index.md"} == set(generated)
    assert sorted(set(generated) - set(committed)) == [], f"pages missing in docs/checks; {REGENERATE}"
    assert sorted(set(committed) - set(generated)) == [], f"pages of removed checks; {REGENERATE}"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert stale == [], f"stale pages; {REGENERATE}"
    assert stale_pages(CHECK_DOCS, pages) == []


def test_cli_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--check` passes on the committed pages and fails, naming the page, on a stale one."""
    suite = str(ROOT / "suites")
    assert checkdocs.main(["--check", "--suite", suite, str(CHECK_DOCS)]) == 0
    assert checkdocs.main(["--suite", suite, str(tmp_path)]) == 0
    (tmp_path / "test_burn.md").write_text("edited by hand\n", encoding="utf-8")
    (tmp_path / "test_gone.md").write_text("a removed check\n", encoding="utf-8")
    assert checkdocs.main(["--check", "--suite", suite, str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "test_burn.md: stale" in err
    assert "test_gone.md: no such check" in err
    assert checkdocs.main(["--suite", suite, str(tmp_path)]) == 0
    assert not (tmp_path / "test_gone.md").exists()


def test_metadata_of_known_checks(checks: list[CheckDoc]) -> None:
    """Step, tier, preconditions, per-GPU and parameters come from the module and the decorators."""
    by_name = {c.name: c for c in checks}
    burn = by_name["test_burn"]
    assert (burn.step, burn.title, burn.tier, burn.per_gpu) == ("1.2", "burn", "burn", True)
    assert burn.needs == ("telemetry", "gpu_listing")
    assert burn.params[0][0] == "criterion" and "temperature" in (burn.params[0][1] or ())
    compose = by_name["test_compose_gpu_reservations_valid"]
    assert (compose.tier, compose.per_gpu) == ("quick", False)
    assert by_name["test_compose_service_sees_gpus"].tier == "container"
    assert by_name["test_baseline_regressions"].step == "4.2"
    assert by_name["test_ecc_mode"].step is None
    nvml = by_name["test_nvml_initialises"]
    assert any("libnvidia-ml.so.1" in d.cause for d in nvml.diagnoses)  # from the table it hands a helper
    assert any("rmmod" in d.fix for d in nvml.diagnoses)  # RELOAD_FIX, a module constant
    toolkit = by_name["test_toolkit_installed"]
    assert {d.level for d in toolkit.diagnoses} == {"fail", "warn"}  # version skew only warns
    assert all(d.level == "warn" for d in by_name["test_persistence_mode"].diagnoses)
    # Checks run in guide order: steps by number, then the rest.
    steps = [tuple(int(p) for p in c.step.split(".")) for c in checks if c.step]
    assert steps == sorted(steps)


def test_known_preconditions_and_links(checks: list[CheckDoc]) -> None:
    """Every precondition has a description, and every link of the pages points at a file and heading."""
    used = {n for c in checks for n in c.needs}
    assert used <= set(checkdocs.NEEDS_TEXT)
    for target, _ in checkdocs.FURTHER_READING.values():
        path, _, anchor = target.partition("#")
        page = (CHECK_DOCS / path).resolve()
        assert page.is_file(), target
        if anchor:
            assert anchor in _anchors(page), target


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_collects_from_source_without_importing(tmp_path: Path) -> None:
    """A suite module is parsed, not imported: its top-level code never runs."""
    suite = tmp_path / "suites"
    suite.mkdir()
    (suite / "test_step_9_1_example.py").write_text(
        textwrap.dedent(
            '''
            """Guide step 9.1: an example module."""
            import pytest
            from pytest_gpuhost.diagnosis import fail, warn

            raise RuntimeError("imported")

            pytestmark = [pytest.mark.gpuhost_container, pytest.mark.gpuhost_needs("driver")]
            FIX = "`do " + "this`"
            DTYPES = ("a", "b")

            def _helper(n):
                fail(f"found {n}", "a helper's cause", FIX)

            @pytest.mark.gpuhost_quick
            @pytest.mark.gpuhost_needs("gpu_listing")
            @pytest.mark.parametrize("dtype", DTYPES)
            def test_one(gpu, dtype):
                """Verifies one thing."""
                if gpu:
                    warn(f"found {gpu.index}", "a warning's cause", f"run `x -i {gpu.index}`")
                _helper(1)
                fail(gpu.found, gpu.cause, gpu.fix)  # nothing literal: not documented

            def test_two():
                pass
            '''
        ),
        encoding="utf-8",
    )
    one, two = collect_checks(suite)
    assert (one.name, one.step, one.title, one.tier, one.per_gpu) == (
        "test_one",
        "9.1",
        "example",
        "quick",
        True,
    )
    assert one.needs == ("driver", "gpu_listing")
    assert one.params == (("dtype", ("a", "b")),)
    assert [(d.level, d.found, d.cause, d.fix) for d in one.diagnoses] == [
        ("warn", "found {index}", "a warning's cause", "run `x -i {index}`"),
        ("fail", "found {n}", "a helper's cause", "`do this`"),
    ]
    assert (two.tier, two.per_gpu, two.diagnoses) == ("container", False, ())
    assert missing_docstrings([one, two]) == ["test_step_9_1_example::test_two"]
    page = render_all([one, two])["test_one.md"]
    assert "guide step 9.1, example" in page and "Verifies one thing." in page
    assert "One case per `dtype`: `a`, `b`." in page


def test_guide_links_resolve() -> None:
    """Every relative link of the walkthrough and the index names an existing file (and heading)."""
    for page in (DOCS / "guide.md", CHECK_DOCS / "index.md"):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: {target}"
