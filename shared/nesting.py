"""How deep free-form JSON (a job's `config`, a worker's `metadata`) may nest.

Deep nesting costs recursion everywhere the value goes (decoders, encoders, handlers), and past ~1,000 levels
msgspec and Python give up with a RecursionError: a limit far below that, checked at the edge, turns a
hostile body into a 400 instead of a 500.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_NESTING", "nesting_exceeds"]

MAX_NESTING = 64
"""Levels of objects and arrays one free-form value may have (`{}` is one level, `{"a": []}` two)."""


def nesting_exceeds(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether `value` (decoded JSON) nests objects and arrays deeper than `limit` levels. Iterative, so
    checking a hostile value cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
