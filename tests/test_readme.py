"""The README's comparison table quotes docs/performance.md: jetdag's numbers are its measured table's, BullMQ's
and Celery's are the ones it reports for the same machine. When performance.md is re-measured, this fails until
the README says the same."""

from __future__ import annotations

import re

from tests.docs import links, prose
from tests.helpers import ROOT

README = ROOT / "README.md"
PERFORMANCE = ROOT / "docs" / "performance.md"
COLUMNS = ["jetdag", "BullMQ", "Celery", "Temporal", "Hatchet", "Airflow"]


def comparison() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    lines = prose(README.read_text()).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| | jetdag | BullMQ |"))
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(COLUMNS, cells[1:], strict=True))
    return rows


def measured(workload: str) -> dict[str, str]:
    """performance.md's measured row of a workload: column → cell."""
    lines = PERFORMANCE.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| workload | jobs | wall s | jobs/s"))
    names = [c.strip() for c in lines[at].strip("|").split("|")]
    row = next(line for line in lines[at + 2 :] if line.startswith(f"| {workload} "))
    return dict(zip(names, [c.strip() for c in row.strip("|").split("|")], strict=True))


def test_jetdag_numbers_are_the_measured_ones() -> None:
    rows = comparison()
    assert rows["W2 fan-out 1→1,000→1, jobs/s"]["jetdag"] == measured("W2")["jobs/s"]
    assert rows["W3 10 x 500 layered, jobs/s"]["jetdag"] == measured("W3")["jobs/s"]
    assert rows["W1 latency per dependency hop"]["jetdag"] == f"{measured('W1')['hop e2e ms']} ms (end to end)"


def test_other_systems_numbers_are_the_ones_performance_md_reports() -> None:
    text = " ".join(PERFORMANCE.read_text().split())
    paragraph = text[text.index("For comparison on the same machine") :].split(". ")[0]
    for label, row in comparison().items():
        if not label.startswith("W"):
            continue
        for system in ("BullMQ", "Celery"):
            number = re.sub(r" ms$", "", row[system])
            assert number in paragraph, f"{label}, {system}: {row[system]!r} is not what performance.md reports"
        assert all(row[s] == "not measured" for s in ("Temporal", "Hatchet", "Airflow")), label


def test_the_readme_links_every_document() -> None:
    linked = set(links(README))
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, f"the README does not link {missing}"
