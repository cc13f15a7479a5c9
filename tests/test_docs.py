"""The documents stay true of the repository: every relative link and #anchor resolves, the architecture's state
diagrams are the scheduler's transition tables, and no file refers to a document the project does not have."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from jetdag import diagrams
from tests.docs import anchors, links
from tests.helpers import ROOT

DOCUMENTS = sorted([ROOT / "README.md", ROOT / "DEVELOPERS.md", *(ROOT / "docs").glob("*.md")])


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken: list[str] = []
    for target in links(doc):
        url = urlparse(target)
        if url.scheme or target.startswith("//"):
            continue  # an address on the web, not a file of ours
        path = (doc.parent / unquote(url.path)).resolve() if url.path else doc
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
            continue
        if url.fragment and path.suffix == ".md" and url.fragment not in anchors(path):
            broken.append(f"{target}: no heading with anchor #{url.fragment} in {path.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_anchors() -> None:
    """The checker above would pass on a document it cannot read: prove it finds what it must."""
    architecture = ROOT / "docs" / "architecture.md"
    assert "security.md" in links(architecture)
    assert {"the-job-state-machine", "ownership-and-recovery", "nats-layout"} <= anchors(architecture)
    assert "composeyaml" in anchors(ROOT / "docs" / "security.md")  # `## compose.yaml`


def test_architecture_state_diagrams_are_the_transition_tables() -> None:
    text = diagrams.ARCHITECTURE.read_text()
    assert diagrams.render(text) == text, "docs/architecture.md is stale: run `python -m jetdag.diagrams`"
    for source in diagrams.blocks().values():
        assert source in text


def test_state_diagram_draws_every_transition() -> None:
    table = {("a", "go"): "b", ("a", "skip"): "b", ("b", "back"): "a", ("b", "end"): "c"}
    assert diagrams.state_diagram(table, initial="a", final={"c"}).splitlines() == [
        "stateDiagram-v2",
        "    [*] --> a",
        "    a --> b: go / skip",
        "    b --> a: back",
        "    b --> c: end",
        "    c --> [*]",
    ]


def test_no_file_refers_to_a_design_document_the_project_does_not_have() -> None:
    missing = "DESIGN" + ".md"  # spelled in two parts so this file does not match itself
    offenders = [
        str(path.relative_to(ROOT))
        for path in tracked_files()
        if path.suffix not in (".png", ".jpg", ".ico", ".woff2") and missing in path.read_text(errors="replace")
    ]
    assert not offenders, f"{offenders} refer to {missing}, which is not in the repository: docs/architecture.md is"
