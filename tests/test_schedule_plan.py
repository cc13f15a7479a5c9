"""When a schedule's ticks fall and what a scheduler does about the latest one (shared/schedules.py). Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.commands import Invalid
from shared.messages import ExecuteRequest, JobConfig, ScheduleRequest
from shared.schedules import cadence_of, check_workflow, plan

WORKFLOW = ExecuteRequest(workflow_id="w", jobs=[JobConfig(id="a", name="a", type="noop")])


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def spec(**fields: Any) -> ScheduleRequest:
    return ScheduleRequest(schedule_id="s", workflow=WORKFLOW, **fields)


def test_every_ticks_on_a_grid_from_creation() -> None:
    cadence = cadence_of(spec(every_s=2), 10_000)
    assert cadence.latest(11_999) is None and cadence.latest(12_000) == 12_000 and cadence.latest(13_999) == 12_000
    assert cadence.next_after(12_000) == 14_000 and cadence.next_after(5_000) == 12_000
    assert cadence.upcoming(12_500, 3) == [14_000, 16_000, 18_000]


def test_cron_in_a_time_zone_keeps_local_time_across_dst() -> None:
    cadence = cadence_of(spec(cron="0 9 * * *", timezone="Europe/Berlin"), ms("2026-03-27T00:00:00+00:00"))
    ticks = cadence.upcoming(ms("2026-03-27T00:00:00+00:00"), 3)
    # 9:00 in Berlin is 8:00 UTC in winter, 7:00 UTC from the night of 28/29 March on.
    assert [datetime.fromtimestamp(t / 1000, UTC).hour for t in ticks] == [8, 8, 7]
    assert cadence.latest(ticks[1]) == ticks[1] and cadence.latest(ticks[1] - 1) == ticks[0]


def test_aliases_and_whitespace() -> None:
    at = ms("2026-12-02T10:30:00+00:00")
    assert cadence_of(spec(cron="@hourly"), at).next_after(at) == ms("2026-12-02T11:00:00+00:00")
    assert cadence_of(spec(cron=" */15  *  * * * "), at).next_after(at) == ms("2026-12-02T10:45:00+00:00")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"cron": "* * * * *", "every_s": 5}, "exactly one of cron and everyS, not both"),
        ({}, "exactly one of cron and everyS"),
        ({"cron": "61 * * * *"}, "is not a valid cron expression"),
        ({"cron": "* * * *"}, "must have 5 fields"),
        ({"cron": "0 0 * * * *"}, "must have 5 fields"),
        ({"cron": "@fortnightly"}, "is not one of"),
        ({"cron": "0 0 31 2 *"}, "never matches"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not a known IANA"),
        ({"every_s": 5, "timezone": "UTC"}, "timezone applies to cron schedules only"),
    ],
)
def test_bad_cadences_name_the_field(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(Invalid) as info:
        cadence_of(spec(**fields), 0)
    assert needle in str(info.value.message)


def test_a_schedule_workflow_starts_at_its_ticks() -> None:
    for fields, needle in (({"delay_s": 5}, "workflow.delayS"), ({"idempotency_key": "k"}, "workflow.idempotencyKey")):
        workflow = ExecuteRequest(workflow_id="w", jobs=WORKFLOW.jobs, **fields)
        with pytest.raises(Invalid) as info:
            check_workflow(ScheduleRequest(schedule_id="s", workflow=workflow, every_s=5))
        assert needle in info.value.message


def test_plan_runs_the_latest_tick_once_and_decides_missed_ones_by_catch_up() -> None:
    cadence = cadence_of(spec(every_s=10), 0)
    # On time (or a little late: a takeover) it runs.
    assert plan(cadence, handled_ms=0, now_ms=10_500, grace_ms=60_000, catch_up=False).fire == (10_000, "tick")
    # Handled already: nothing until the next tick.
    p = plan(cadence, handled_ms=10_000, now_ms=10_500, grace_ms=60_000, catch_up=False)
    assert p.fire is None and p.next_ms == 20_000
    # Down for an hour: one run for all of the missed ticks (the latest), or none.
    hourly = cadence_of(spec(every_s=3600), 0)
    late = plan(hourly, handled_ms=3_600_000, now_ms=11_100_000, grace_ms=60_000, catch_up=True)
    assert late.fire == (10_800_000, "catch-up") and late.next_ms == 14_400_000
    missed = plan(hourly, handled_ms=3_600_000, now_ms=11_100_000, grace_ms=60_000, catch_up=False)
    assert missed.fire == (10_800_000, "missed")
    # A schedule that ticks more often than the grace runs at its first tick after the restart, on time.
    assert plan(cadence, handled_ms=10_000, now_ms=3_600_005, grace_ms=60_000, catch_up=False).fire == (
        3_600_000,
        "tick",
    )
    # Created or resumed after a tick: that tick is not this schedule's to run.
    assert plan(cadence, handled_ms=15_000, now_ms=19_000, grace_ms=60_000, catch_up=True).fire is None
