"""Merge the reports of a fleet that ran ``pytest --gpuhost`` on every node.

    python -m pytest_gpuhost.reporting.merge fleet.json node1.json node2.json ...
    python -m pytest_gpuhost.reporting.merge fleet.xml node1.xml node2.xml ...

The output's suffix picks the format: ``.xml`` merges JUnit files, anything else JSON reports
(``report_json.merge_reports``). JUnit merging uses only the standard library, so it works
wherever the plugin is installed: every ``<testsuite>`` is kept, and each test case's
``classname`` is prefixed with its host so that CI dashboards keep the nodes apart.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from pytest_gpuhost.reporting.json_report import merge_reports, write_json

COUNTS = ("tests", "failures", "errors", "skipped")
TESTSUITES_COUNTS = ("tests", "failures", "errors")


def junit_host(suite: ET.Element, fallback: str) -> str:
    """The node's name: the ``gpuhost.host`` property the plugin records, else pytest's hostname."""
    for prop in suite.iter("property"):
        if prop.get("name") == "gpuhost.host" and prop.get("value"):
            return str(prop.get("value"))
    return suite.get("hostname") or fallback


def junit_hosts(suite: ET.Element) -> list[str]:
    """Every host a suite reports: ``gpuhost.host``, or ``gpuhost.host[NAME]`` of a fleet run."""
    names = [
        str(prop.get("value"))
        for prop in suite.iter("property")
        if (prop.get("name") or "").split("[", 1)[0] == "gpuhost.host" and prop.get("value")
    ]
    return list(dict.fromkeys(names))


def is_gpuhost_suite(suite: ET.Element) -> bool:
    """A suite written by ``pytest --gpuhost``: it carries the plugin's ``gpuhost.*`` properties."""
    return any((prop.get("name") or "").startswith("gpuhost.") for prop in suite.iter("property"))


def junit_suites(path: Path) -> list[ET.Element]:
    """The ``<testsuite>`` elements of one JUnit file; raises ValueError naming the file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{path}: not a readable JUnit XML file: {exc}") from None
    if root.tag == "testsuite":
        return [root]
    if root.tag == "testsuites":
        return list(root.iter("testsuite"))
    raise ValueError(f"{path}: root element <{root.tag}>, expected <testsuites> or <testsuite>")


def merge_junit(paths: Iterable[Path | str]) -> ET.Element:
    """One ``<testsuites>`` holding every node's suites, class names prefixed with the host."""
    merged = ET.Element("testsuites", name="pytest-gpuhost fleet")
    totals = dict.fromkeys(COUNTS, 0)
    seconds = 0.0
    seen: dict[str, Path] = {}
    for path in map(Path, paths):
        for suite in junit_suites(path):
            if not is_gpuhost_suite(suite):
                raise ValueError(
                    f"{path}: testsuite {suite.get('name')!r} is not from `pytest --gpuhost` "
                    "(no gpuhost.* properties): merge only the nodes' --junitxml files"
                )
            host = junit_host(suite, path.stem)
            for name in junit_hosts(suite) or [host]:
                if name in seen:
                    raise ValueError(
                        f"{path}: host {name!r} is already in {seen[name]}; give each node its own name"
                    )
                seen[name] = path
            for case in suite.iter("testcase"):
                classname = case.get("classname") or ""
                if classname != host and not classname.startswith(f"{host}."):
                    case.set("classname", f"{host}.{classname}" if classname else host)
            for key in COUNTS:
                totals[key] += int(suite.get(key) or 0)
            seconds += float(suite.get("time") or 0.0)
            merged.append(suite)
    if not len(merged):
        raise ValueError("no JUnit test suite to merge")
    for key, value in totals.items():
        if key in TESTSUITES_COUNTS:  # junit-10.xsd has no `skipped` on <testsuites>
            merged.set(key, str(value))
    merged.set("time", f"{seconds:.3f}")
    return merged


def junit_total(root: ET.Element, key: str) -> int:
    """One count over the merged suites (``skipped`` is kept per suite only)."""
    return sum(int(suite.get(key) or 0) for suite in root.iter("testsuite"))


def write_junit(path: Path, root: ET.Element) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_gpuhost.reporting.merge",
        description="Merge per-node pytest-gpuhost reports: JSON (--gpuhost-json) or JUnit (--junitxml).",
    )
    parser.add_argument("output", type=Path, help="the merged file; a .xml suffix merges JUnit files")
    parser.add_argument("inputs", type=Path, nargs="+", help="the nodes' reports")
    args = parser.parse_args(argv)
    try:
        if args.output.suffix.lower() == ".xml":
            root = merge_junit(args.inputs)
            write_junit(args.output, root)
            summary = ", ".join(f"{junit_total(root, key)} {key}" for key in COUNTS)
        else:
            document = merge_reports(args.inputs)
            write_json(args.output, document)
            summary = f"{len(document['hosts'])} hosts, {document['summary']['total']} results"
    except ValueError as exc:
        print(f"pytest_gpuhost.reporting.merge: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(args.inputs)} reports into {args.output}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
