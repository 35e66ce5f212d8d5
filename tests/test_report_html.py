"""pytest-html extras: a check's announced PNG is embedded in the self-contained report, a failure's
diagnosis is attached as text, and without pytest-html the plugin does nothing."""

from __future__ import annotations

import base64
import html as htmllib
import json
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from pytest_gpuhost.reporting import html_report as report_html

CONFTEST = """
from pytest_gpuhost.reporting import html_report as report_html

def pytest_configure(config):
    config.gpuhost_html_registered = report_html.register(config)
"""


def tiny_png() -> bytes:
    """A real 1x1 red PNG: signature, IHDR, IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
def html_plugin() -> None:
    pytest.importorskip("pytest_html", reason="pytest-html (the optional `html` extra) is not installed")


def test_png_embedded_and_diagnosis_attached(html_plugin: None, pytester: pytest.Pytester) -> None:
    png = pytester.path / "burn-series.png"
    png.write_bytes(tiny_png())
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            from pytest_gpuhost.diagnosis import fail

            def test_burn_like():
                print("gpuhost.file {pytester.path / "burn-series.csv"}")
                print("gpuhost.file {png}")
                print("gpuhost.file {pytester.path / "gone.png"}")

            def test_fails():
                fail("GPU 0 reached 91 °C", "the cooling does not keep up", "check the fans")
            """
        )
    )
    result = pytester.runpytest_subprocess("--html=report.html", "--self-contained-html")
    result.assert_outcomes(passed=1, failed=1)
    html = (pytester.path / "report.html").read_text(encoding="utf-8")
    encoded = base64.b64encode(tiny_png()).decode("ascii")
    assert f"data:image/png;base64,{encoded}" in html
    texts = {
        base64.b64decode(b).decode("utf-8")
        for b in re.findall(r"data:text/plain;charset=utf-8;base64,([A-Za-z0-9+/=]+)", html)
    }
    assert texts == {"FOUND: GPU 0 reached 91 °C\nCAUSE: the cooling does not keep up\nFIX:   check the fans"}
    # pytest-html's data: one image for the passing check (not the CSV, not the missing PNG), one text.
    blob = re.search(r'data-jsonblob="([^"]*)"', html)
    assert blob is not None
    tests = json.loads(htmllib.unescape(blob.group(1)))["tests"]
    extras = {
        nodeid.split("::")[-1]: [e["name"] for r in runs for e in r["extras"]]
        for nodeid, runs in tests.items()
    }
    assert extras == {"test_burn_like": ["burn-series.png"], "test_fails": ["diagnosis"]}


def test_inert_without_html_report(pytester: pytest.Pytester) -> None:
    """Without --html (or with pytest-html disabled) nothing is registered and reports are untouched."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        def test_registered(request):
            assert request.config.gpuhost_html_registered is False
            assert not request.config.pluginmanager.has_plugin("gpuhost-html-extras")
        """
    )
    pytester.runpytest_inprocess("-p", "no:html").assert_outcomes(passed=1)
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_inert_when_pytest_html_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pytest_html", "pytest_html.extras"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    assert report_html.pytest_html_extras() is None


def test_importing_does_not_import_pytest_html() -> None:
    code = "import sys, pytest_gpuhost.reporting.html_report; print('pytest_html' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_announced_files_and_diagnosis_text() -> None:
    stdout = "gpuhost.metric a=1\ngpuhost.file /r/x.png\ngpuhost.file /r/x.png\ngpuhost.file /r/y.csv\n"
    assert list(report_html.announced_files(stdout)) == [Path("/r/x.png"), Path("/r/y.csv")]
    text = "FOUND: a\nCAUSE: b\nFIX:   c\n  continued\nother output"
    assert report_html.diagnosis_text(text) == "FOUND: a\nCAUSE: b\nFIX:   c\n  continued"
    assert report_html.diagnosis_text("AssertionError: plain") is None
