"""What the commands print: rich on a terminal, plain aligned text (no colour, no box) when piped, one JSON
document with `--json`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

__all__ = ["err", "is_tty", "out", "print_json", "print_table"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def is_tty() -> bool:
    return out.is_terminal


def print_json(value: Any) -> None:
    """One JSON document on stdout: Structs as their wire form (camelCase), the same the REST API sends."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
    sys.stdout.flush()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None) -> None:
    if is_tty():
        table = Table(*headers, title=title, title_justify="left", header_style="bold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    # Piped: whitespace-aligned columns that `awk`/`grep` take apart, with no trailing blanks.
    if title:
        sys.stdout.write(title + "\n")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n")
    sys.stdout.flush()
