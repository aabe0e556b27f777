"""JUnit XML for a batch: one ``testsuite``, a test case per model and one per gate of each model.

    write_junit(rows, Path("out/junit.xml"))

The model's test case fails (``<failure>``) unless its status is ``passed`` or ``gate_failed``
(then its gate cases tell), or is an ``<error>`` for a crash, a timeout or the memory limit; its
``<system-out>`` names the output folder and the figures. Each gate case fails when the gate did.
This is the Ant/Jenkins JUnit format that GitHub, GitLab and Jenkins read (tests/data/junit.xsd).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from prunecli.batch.rows import BatchRow
from prunecli.model_io.atomic import atomic_write_bytes

SUITE = "prunecli.batch"


def junit_xml(rows: list[BatchRow]) -> bytes:
    """The JUnit XML document of ``rows``."""
    cases = [case for row in sorted(rows, key=lambda row: row.name) for case in _cases(row)]
    failures = sum(1 for case in cases if case.find("failure") is not None)
    errors = sum(1 for case in cases if case.find("error") is not None)
    total = sum(row.seconds for row in rows)
    suites = ElementTree.Element("testsuites", tests=str(len(cases)), failures=str(failures), errors=str(errors),
                                 time=f"{total:.2f}")  # fmt: skip
    suite = ElementTree.SubElement(suites, "testsuite", name=SUITE, tests=str(len(cases)), failures=str(failures),
                                   errors=str(errors), skipped="0", time=f"{total:.2f}")  # fmt: skip
    suite.extend(cases)
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)


def write_junit(rows: list[BatchRow], path: Path) -> None:
    """Write ``junit_xml(rows)`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, junit_xml(rows))


def _cases(row: BatchRow) -> list[ElementTree.Element]:
    model = ElementTree.Element("testcase", classname=f"{SUITE}.{row.name}", name="run", time=f"{row.seconds:.2f}")
    if row.status in ("error", "timeout", "memory"):
        ElementTree.SubElement(model, "error", message=row.error or row.status, type=row.status).text = row.error
    elif row.status not in ("passed", "gate_failed"):
        ElementTree.SubElement(model, "failure", message=row.error or row.status, type=row.status).text = row.error
    ElementTree.SubElement(model, "system-out").text = _system_out(row)
    cases = [model]
    for gate, passed in row.gates.items():
        case = ElementTree.Element("testcase", classname=f"{SUITE}.{row.name}", name=f"gate {gate}", time="0")
        if not passed:
            ElementTree.SubElement(case, "failure", message=f"gate {gate} failed", type="gate")
        cases.append(case)
    return cases


def _system_out(row: BatchRow) -> str:
    """The model case's standard output: its output folder, figures before -> after, peak memory."""
    lines = [f"output: {row.output}"]
    figures = [("params", row.params_before, row.params_after), ("MACs", row.macs_before, row.macs_after),
               ("accuracy", row.accuracy_before, row.accuracy_after)]  # fmt: skip
    lines += [f"{label}: {before} -> {after}" for label, before, after in figures if before is not None]
    if row.peak_rss_mb is not None:
        lines.append(f"peak RSS: {row.peak_rss_mb:g} MB")
    return "\n".join(lines)
