"""Pauses of the job queue and what they mean for each consumer: pure, shared by the scheduler (which applies
them to the JetStream consumers) and the gateway (which shows them).

A pause covers everything, one capability, one job type (of every capability), or one (capability, type) pair;
it lasts until resumed or until a time. A consumer is paused until the latest end of the pauses covering it:
JetStream's own `pause_until` ends a timed pause on the server, with no timer of ours. A new pause of a scope
replaces the earlier one of the same scope; a resume of a scope ends that scope's pause only (a resume without
one ends every pause), so a consumer another pause still covers stays paused.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.commands import Invalid
from shared.ids import check_name
from shared.messages import MAX_DELAY_S, QueuePause, QueuePauseRequest, QueueResumeRequest, QueueState
from shared.timeutil import iso_from_ms, ms_from_iso

__all__ = [
    "PAUSE_FOREVER",
    "active",
    "consumer_until",
    "covers",
    "describe",
    "held_by",
    "is_global",
    "pause_of",
    "paused",
    "resumed",
]

PAUSE_FOREVER = "2999-12-31T23:59:59Z"
"""JetStream pauses a consumer until a time; "until resumed" is a time far enough away."""


def is_global(pause: QueuePause) -> bool:
    return pause.capability is None and pause.type is None


def covers(pause: QueuePause, capability: str, job_type: str) -> bool:
    return pause.capability in (None, capability) and pause.type in (None, job_type)


def active(state: QueueState | None, now_ms: int) -> list[QueuePause]:
    """The pauses in effect at `now_ms` (a state written before scoped pauses existed is one global pause)."""
    if state is None:
        return []
    if not state.pauses and state.paused:
        return [QueuePause(paused_at=state.changed_at)]
    return [p for p in state.pauses if p.until is None or ms_from_iso(p.until) > now_ms]


def consumer_until(pauses: Iterable[QueuePause], capability: str, job_type: str) -> str | None:
    """Until when the (capability, type) consumers must be paused: the latest end among the pauses covering
    them (PAUSE_FOREVER when one has none); None: not paused."""
    ends = [p.until for p in pauses if covers(p, capability, job_type)]
    if not ends:
        return None
    if None in ends:
        return PAUSE_FOREVER
    return max((e for e in ends if e is not None), key=ms_from_iso)


def pause_of(request: QueuePauseRequest, now_ms: int) -> QueuePause:
    """The pause a POST /queue/pause body asks for, validated (Invalid: a sentence naming the field)."""
    if request.until is not None and request.duration_s is not None:
        raise Invalid("until and durationS are both given; send one of them")
    if request.capability is not None:
        check_name("capability", request.capability)
    if request.type is not None:
        check_name("type", request.type)
    until: int | None = None
    if request.duration_s is not None:
        until = now_ms + round(request.duration_s * 1000)
    elif request.until is not None:
        until = round(request.until.timestamp() * 1000)
        if until <= now_ms:
            raise Invalid(f"until must be in the future, got {request.until.isoformat()}")
        if until > now_ms + MAX_DELAY_S * 1000:
            raise Invalid(f"until must be at most {MAX_DELAY_S / 86400:g} days ahead, got {request.until.isoformat()}")
    return QueuePause(
        capability=request.capability,
        type=request.type,
        until=None if until is None else iso_from_ms(until),
        reason=request.reason,
        paused_at=iso_from_ms(now_ms),
    )


def paused(pauses: list[QueuePause], pause: QueuePause) -> list[QueuePause]:
    """The pauses after `pause`: it replaces the one of the same scope (unless that one ends at the same time
    for the same reason: then nothing changes, and the pause keeps its start)."""
    scope = (pause.capability, pause.type)
    same = [p for p in pauses if (p.capability, p.type) == scope]
    if same and (same[0].until, same[0].reason) == (pause.until, pause.reason):
        return pauses
    return [*(p for p in pauses if (p.capability, p.type) != scope), pause]


def resumed(pauses: list[QueuePause], request: QueueResumeRequest) -> tuple[list[QueuePause], list[QueuePause]]:
    """(remaining, ended): a resume without a scope ends every pause, with one the pause of that scope."""
    if request.capability is not None:
        check_name("capability", request.capability)
    if request.type is not None:
        check_name("type", request.type)
    if request.capability is None and request.type is None:
        return [], pauses
    scope = (request.capability, request.type)
    return [p for p in pauses if (p.capability, p.type) != scope], [
        p for p in pauses if (p.capability, p.type) == scope
    ]


def describe(pause: QueuePause) -> str:
    """What a pause covers, for messages and logs: `everything`, `capability 'gpu'`, `type 'train'`, or
    `capability 'gpu', type 'train'`."""
    if pause.capability is not None and pause.type is not None:
        return f"capability {pause.capability!r}, type {pause.type!r}"
    if pause.capability is not None:
        return f"capability {pause.capability!r}"
    if pause.type is not None:
        return f"type {pause.type!r}"
    return "everything"


def held_by(pauses: Iterable[QueuePause], capability: str, job_type: str) -> str | None:
    """Why the pauses hold a (capability, type) job, as a job's `waitingReason` says it: `the queue is paused`
    (everything, until resumed), with the scope when only some of the queue is (`for capability 'gpu'`) and the
    time when every pause covering it ends by itself; None: nothing holds it."""
    covering = [p for p in pauses if covers(p, capability, job_type)]
    if not covering:
        return None
    scope = "" if any(is_global(p) for p in covering) else " for " + "; ".join(describe(p) for p in covering)
    until = consumer_until(covering, capability, job_type)
    return f"the queue is paused{scope}" + ("" if until == PAUSE_FOREVER else f" until {until}")
