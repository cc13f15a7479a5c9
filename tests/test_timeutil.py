"""Timestamps as the API shows them: exact to the millisecond both ways, the same as datetime would print."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from shared.timeutil import iso_from_ms, ms_from_iso


def test_iso_round_trip_is_exact() -> None:
    rng = random.Random(7)
    for ms in [0, 1, 999, 1000, 1_764_290_000_999, *(rng.randrange(0, 4_000_000_000_000) for _ in range(5000))]:
        text = iso_from_ms(ms)
        assert text == datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
        assert ms_from_iso(text) == ms, text


def test_offsets_and_naive_times_are_read_as_the_same_instant() -> None:
    assert ms_from_iso("2026-11-28T01:02:03.456+01:00") == ms_from_iso("2026-11-28T00:02:03.456Z")
    assert ms_from_iso("2026-11-28T00:02:03.456") == ms_from_iso("2026-11-28T00:02:03.456Z")
