"""The worker's side of priority bands, without NATS: which bands may be pulled and started."""

from __future__ import annotations

from services.worker.bands import Waiting, first_unclear, may_take


def test_the_top_unclear_band_is_the_highest_one_not_known_to_be_empty() -> None:
    assert first_unclear([(3, False), (1, True), (2, False), (5, False)]) == 2
    assert first_unclear([(1, True), (3, True)]) is None


def test_lower_bands_wait_while_a_higher_one_has_jobs() -> None:
    assert may_take(1, 2) and may_take(2, 2) and not may_take(3, 2)
    assert may_take(5, None)


def test_waiting_jobs_come_out_by_band_then_first_come() -> None:
    waiting: Waiting[str] = Waiting()
    waiting.add(5, ["e1", "e2"])
    waiting.add(1, ["a1"])
    waiting.add(3, ["c1"])
    assert len(waiting) == 4 and list(waiting) == ["a1", "c1", "e1", "e2"]
    assert waiting.up_to(3) == 2 and waiting.up_to(5) == 4
    band = waiting.first_band()
    assert band == 1 and waiting.popleft(band) == "a1"
    assert waiting.remove_if(lambda entry: entry.startswith("e")) == ["e1", "e2"]
    assert list(waiting) == ["c1"] and len(waiting) == 1
    waiting.clear()
    assert not waiting and waiting.first_band() is None
