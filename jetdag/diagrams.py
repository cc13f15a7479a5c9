"""The state diagrams of docs/architecture.md, generated from the scheduler's transition tables.

`python -m jetdag.diagrams` rewrites the generated blocks of docs/architecture.md; tests/test_docs.py fails when
the document and `services/scheduler/machine.py` disagree, so the picture cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from services.scheduler.machine import EXECUTION_TRANSITIONS, TRANSITIONS
from shared.messages import FINAL_EXECUTION_STATES, FINAL_JOB_STATES

__all__ = ["ARCHITECTURE", "blocks", "render", "state_diagram"]

S = TypeVar("S", bound=str)

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def state_diagram(transitions: Mapping[tuple[S, str], S], *, initial: str, final: Iterable[str]) -> str:
    """A Mermaid `stateDiagram-v2` of `transitions` ((state, trigger) → state), in the table's order.

    Triggers that lead from one state to the same other state share one arrow (labels joined by ` / `), so
    the picture has one arrow per pair of states; final states get an arrow to the end marker."""
    edges: dict[tuple[S, S], list[str]] = {}
    for (frm, trigger), to in transitions.items():
        edges.setdefault((frm, to), []).append(trigger)
    states: set[str] = {s for pair in edges for s in pair}
    lines = ["stateDiagram-v2", f"    [*] --> {initial}"]
    lines += [f"    {frm} --> {to}: {' / '.join(triggers)}" for (frm, to), triggers in edges.items()]
    lines += [f"    {state} --> [*]" for state in sorted(states & set(final))]
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    """Name → Mermaid source of every generated diagram."""
    return {
        "job-states": state_diagram(TRANSITIONS, initial="pending", final=FINAL_JOB_STATES),
        "execution-states": state_diagram(EXECUTION_TRANSITIONS, initial="pending", final=FINAL_EXECUTION_STATES),
    }


def _block(name: str) -> re.Pattern[str]:
    marker = re.escape(name)
    return re.compile(
        rf"(<!-- generated:{marker}:start[^>]*-->\n```mermaid\n).*?(^```\n<!-- generated:{marker}:end -->)", re.S | re.M
    )


def _replacement(source: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + source + "\n" + m.group(2)


def render(text: str) -> str:
    """`text` with every generated block replaced by what the code says now."""
    for name, source in blocks().items():
        pattern = _block(name)
        if not pattern.search(text):
            raise ValueError(f"no generated block {name!r} in the document")
        text = pattern.sub(_replacement(source), text)
    return text


def main() -> None:
    ARCHITECTURE.write_text(render(ARCHITECTURE.read_text()))


if __name__ == "__main__":
    main()
