"""When a schedule's ticks fall, and what to do about the latest one: pure, shared by the scheduler (which fires
them) and the client (which checks a schedule before sending it).

Cron expressions are parsed and iterated by croniter (5 fields, `minute hour day-of-month month day-of-week`, or
`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), read in the schedule's IANA time zone so that "9:00
Europe/Berlin" stays 9:00 across daylight saving time. `everyS` ticks fall every N seconds after the schedule's
creation, a grid every replica computes alike, so a tick has the same identity wherever it is fired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shared.commands import Invalid
from shared.messages import ScheduleRequest

__all__ = ["ALIASES", "Cadence", "Plan", "cadence_of", "check_workflow", "plan"]

ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


@dataclass(frozen=True, slots=True)
class Cadence:
    """The ticks of one schedule: a cron expression in a time zone, or every `every_ms` after `anchor_ms`."""

    cron: str | None
    zone: ZoneInfo
    every_ms: int
    anchor_ms: int

    def _dt(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.zone)

    def next_after(self, ms: int) -> int:
        """The first tick strictly after `ms`."""
        if self.cron is None:
            k = max(0, (ms - self.anchor_ms) // self.every_ms) + 1
            return self.anchor_ms + k * self.every_ms
        nxt: datetime = croniter(self.cron, self._dt(ms)).get_next(datetime)
        return int(nxt.timestamp() * 1000)

    def latest(self, ms: int) -> int | None:
        """The last tick at or before `ms` (None: none yet)."""
        if self.cron is None:
            k = (ms - self.anchor_ms) // self.every_ms
            return self.anchor_ms + k * self.every_ms if k >= 1 else None
        # croniter steps back from a second boundary: one past `ms` finds a tick at `ms` itself too.
        prev: datetime = croniter(self.cron, self._dt(ms + 1000 - ms % 1000)).get_prev(datetime)
        at = int(prev.timestamp() * 1000)
        return at if at <= ms else None

    def upcoming(self, ms: int, n: int) -> list[int]:
        out: list[int] = []
        at = ms
        for _ in range(n):
            at = self.next_after(at)
            out.append(at)
        return out


def cadence_of(spec: ScheduleRequest, created_ms: int) -> Cadence:
    """The cadence a schedule asks for; Invalid (a 400 naming the field) when it asks for something impossible."""
    if (spec.cron is None) == (spec.every_s is None):
        raise Invalid("a schedule needs exactly one of cron and everyS" + (", not both" if spec.cron else ""))
    if spec.every_s is not None:
        if spec.timezone is not None:
            raise Invalid("timezone applies to cron schedules only; everyS counts seconds, whatever the zone")
        return Cadence(None, ZoneInfo("UTC"), round(spec.every_s * 1000), created_ms)
    zone = _zone(spec.timezone)
    cron = spec.cron or ""
    expression = " ".join(cron.split())
    if expression.startswith("@"):
        if expression.lower() not in ALIASES:
            raise Invalid(f"cron: {cron!r} is not one of {', '.join(sorted(ALIASES))}")
        expression = expression.lower()
    elif len(expression.split(" ")) != 5:
        raise Invalid(
            f"cron: {cron!r} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(expression.split(' '))}"
        )
    try:
        ok = croniter.is_valid(expression)
    except Exception:  # croniter raises more than its own errors on some inputs; any of them means "invalid"
        ok = False
    if not ok:
        raise Invalid(f"cron: {cron!r} is not a valid cron expression")
    cadence = Cadence(expression, zone, 0, created_ms)
    try:
        cadence.next_after(created_ms)
    except Exception:
        raise Invalid(f"cron: {cron!r} never matches a time") from None
    return cadence


def _zone(name: str | None) -> ZoneInfo:
    if name is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Invalid(f"timezone: {name!r} is not a known IANA time zone (e.g. Europe/Berlin, UTC)") from None


def check_workflow(spec: ScheduleRequest) -> None:
    """What a schedule's workflow may not carry: each run starts at its tick, under the tick's own key."""
    workflow = spec.workflow
    for name, value in (("runAt", workflow.run_at), ("delayS", workflow.delay_s)):
        if value is not None:
            raise Invalid(f"workflow.{name}: a schedule's runs start at its ticks; leave {name} out")
    if workflow.idempotency_key is not None:
        raise Invalid("workflow.idempotencyKey: each tick's run has a key of its own; leave it out")


Decision = Literal["tick", "catch-up", "missed"]


@dataclass(frozen=True, slots=True)
class Plan:
    fire: tuple[int, Decision] | None
    """The latest tick not handled yet and what to do with it: run it (on time or a little late), run it as a
    catch-up, or record it missed."""
    next_ms: int
    """The first tick after now: when to look again."""


def plan(cadence: Cadence, *, handled_ms: int, now_ms: int, grace_ms: int, catch_up: bool) -> Plan:
    """What a schedule does now. Ticks at or before `handled_ms` are done with (the last one handled, or when
    the schedule was created or resumed). Of the ticks since, only the latest counts: however many were missed,
    a schedule runs at most once for them. Within `grace_ms` of its time a tick is just late (a restart, a
    takeover) and runs; later than that it was missed while no scheduler ran, and `catch_up` decides."""
    latest = cadence.latest(now_ms)
    if latest is None or latest <= handled_ms:
        return Plan(None, cadence.next_after(max(now_ms, handled_ms)))
    late: Decision = "catch-up" if catch_up else "missed"
    return Plan((latest, "tick" if now_ms - latest <= grace_ms else late), cadence.next_after(now_ms))
