"""Dispatch tokens are drawn in batches from the OS's random source: each is still 8 random bytes, none
repeats across a refill."""

from __future__ import annotations

import re

from services.scheduler.lifecycle import DispatchTokens


def test_tokens_are_sixteen_hex_digits_and_never_repeat_across_refills() -> None:
    tokens = DispatchTokens()
    drawn = [tokens.next() for _ in range(3 * DispatchTokens.BATCH + 7)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in drawn)
    assert len(set(drawn)) == len(drawn)


def test_two_sources_draw_different_tokens() -> None:
    assert DispatchTokens().next() != DispatchTokens().next()
