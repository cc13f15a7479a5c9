"""shared.pauses: what a pause covers, until when a consumer stays paused, replacing and resuming by scope, and the
validation of a POST /queue/pause body (pure, no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.commands import Invalid
from shared.messages import QueuePause, QueuePauseRequest, QueueResumeRequest, QueueState
from shared.pauses import PAUSE_FOREVER, active, consumer_until, held_by, pause_of, paused, resumed
from shared.timeutil import iso_from_ms

NOW = 1_800_000_000_000


def p(capability: str | None = None, job_type: str | None = None, until_s: float | None = None) -> QueuePause:
    until = None if until_s is None else iso_from_ms(NOW + round(until_s * 1000))
    return QueuePause(capability=capability, type=job_type, until=until, paused_at=iso_from_ms(NOW))


def test_a_consumer_is_paused_until_the_latest_end_of_the_pauses_covering_it() -> None:
    pauses = [p("gpu", until_s=10), p(job_type="train", until_s=60), p("cpu", "etl")]
    assert consumer_until(pauses, "gpu", "noop") == iso_from_ms(NOW + 10_000)
    assert consumer_until(pauses, "gpu", "train") == iso_from_ms(NOW + 60_000)
    assert consumer_until(pauses, "cpu", "etl") == PAUSE_FOREVER
    assert consumer_until(pauses, "cpu", "noop") is None
    assert consumer_until([*pauses, p()], "cpu", "noop") == PAUSE_FOREVER


def test_a_held_job_says_which_pauses_hold_it_and_until_when() -> None:
    assert held_by([p()], "cpu", "noop") == "the queue is paused"
    assert held_by([p(until_s=10)], "cpu", "noop") == f"the queue is paused until {iso_from_ms(NOW + 10_000)}"
    assert held_by([p("gpu")], "gpu", "noop") == "the queue is paused for capability 'gpu'"
    assert held_by([p("gpu")], "cpu", "noop") is None
    both = [p("gpu", until_s=10), p(job_type="train", until_s=60)]
    assert held_by(both, "gpu", "train") == (
        f"the queue is paused for capability 'gpu'; type 'train' until {iso_from_ms(NOW + 60_000)}"
    )
    # One pause without an end holds it until resumed; a pause of everything needs no scope.
    assert held_by([*both, p("gpu", "train")], "gpu", "train") == (
        "the queue is paused for capability 'gpu'; type 'train'; capability 'gpu', type 'train'"
    )
    assert held_by([p("gpu"), p()], "gpu", "noop") == "the queue is paused"


def test_ended_pauses_are_not_in_effect_and_an_old_switch_is_a_pause_of_everything() -> None:
    state = QueueState(paused=False, changed_at="", pauses=[p("gpu", until_s=-1), p("cpu", until_s=5)])
    assert active(state, NOW) == [state.pauses[1]]
    assert active(QueueState(paused=True, changed_at="2026-01-01T00:00:00.000Z"), NOW) == [
        QueuePause(paused_at="2026-01-01T00:00:00.000Z")
    ]
    assert active(None, NOW) == []


def test_a_pause_replaces_its_scope_and_the_same_pause_again_changes_nothing() -> None:
    first = [p(), p("gpu")]
    assert paused(first, p("gpu")) is first
    longer = p("gpu", until_s=30)
    assert paused(first, longer) == [first[0], longer]


def test_a_resume_ends_its_scope_only_and_without_one_every_pause() -> None:
    pauses = [p(), p("gpu"), p("gpu", "train")]
    assert resumed(pauses, QueueResumeRequest(capability="gpu")) == ([pauses[0], pauses[2]], [pauses[1]])
    assert resumed(pauses, QueueResumeRequest()) == ([], pauses)
    assert resumed(pauses, QueueResumeRequest(type="train")) == (pauses, [])


def test_pause_of_a_request() -> None:
    pause = pause_of(QueuePauseRequest(duration_s=2.5, type="train", reason="deploy"), NOW)
    assert pause == QueuePause(type="train", until=iso_from_ms(NOW + 2500), reason="deploy", paused_at=iso_from_ms(NOW))
    at = datetime.fromtimestamp((NOW + 60_000) / 1000, UTC)
    assert pause_of(QueuePauseRequest(until=at), NOW).until == iso_from_ms(NOW + 60_000)
    assert pause_of(QueuePauseRequest(), NOW).until is None


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (QueuePauseRequest(duration_s=5, until=datetime.fromtimestamp(NOW / 1000 + 60, UTC)), "until and durationS"),
        (QueuePauseRequest(until=datetime.fromtimestamp(NOW / 1000 - 1, UTC)), "until must be in the future"),
        (QueuePauseRequest(until=datetime(2999, 1, 1, tzinfo=UTC)), "until must be at most"),
        (QueuePauseRequest(capability="a__b"), "capability"),
        (QueuePauseRequest(type="a b"), "type"),
    ],
)
def test_pause_of_refuses_with_a_sentence_naming_the_field(request_: QueuePauseRequest, field: str) -> None:
    with pytest.raises(Invalid, match=field):
        pause_of(request_, NOW)
