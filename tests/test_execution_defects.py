"""Regression tests of the defects found using jetdag as a new user and as a hostile client would (executions
that never end or do work after a cancel, silent waits, misleading verdicts), and of the handler-author API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from services.scheduler.recovery import shard_of
from shared.settings import ExecutionSettings
from tests.api import job, jobs, stats, status, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for

QUICK_AUDIT = {"JETDAG_STALL_AFTER_S": "1", "JETDAG_SWEEP_INTERVAL_S": "0.3", "JETDAG_HEARTBEAT_INTERVAL_S": "1"}


async def running(http: httpx.AsyncClient, url: str, eid: str, n: int = 1) -> None:
    async def started() -> bool:
        return bool((await status(http, url, eid))["progress"]["running"] >= n)

    await wait_for(started, timeout=20, message=f"{n} running job(s)")


# --- 1. cancel, then retry -----------------------------------------------------------------------------------


async def test_cancel_then_retry_runs_the_new_round_to_its_end(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    eid = await submit(http, stack.url, [job("long", "sleep", config={"seconds": 1}), job("after", "noop", ["long"])])
    await running(http, stack.url, eid)
    assert (await http.post(f"{stack.url}/execute/{eid}/cancel")).status_code == 200
    r = await http.post(f"{stack.url}/execute/{eid}/retry")
    assert r.status_code == 200, r.text
    final = await wait_final(http, stack.url, eid, timeout=30)
    assert final["status"] == "completed" and final["round"] == 2
    assert {j["status"] for j in (await jobs(http, stack.url, eid)).values()} == {"completed"}


# --- 2. cancel withdraws queued jobs ---------------------------------------------------------------------------


async def test_a_cancelled_job_never_runs_and_is_not_counted_waiting(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    eid = await submit(http, stack.url, [job("probe", capability="probecap")])

    async def queued() -> bool:
        return bool((await jobs(http, stack.url, eid))["probe"]["status"] == "queued")

    await wait_for(queued, timeout=10, message="the job to be queued")
    assert (await http.post(f"{stack.url}/execute/{eid}/cancel")).status_code == 200
    s = (await stats(http, stack.url))["stats"]
    assert s["waiting"] == 0, s
    # Across a restart too: the withdrawal is in the stream, not in the scheduler's memory.
    next(p for p in stack.procs if p.name == "scheduler").kill()
    await stack.scheduler("scheduler-2")

    async def answered() -> dict[str, Any] | None:
        r = await http.get(f"{stack.url}/queue/stats")
        return r.json()["stats"] if r.status_code == 200 else None

    s = await wait_for(answered, timeout=20, message="queue stats from the new scheduler")
    assert s["waiting"] == 0, s
    # A capable worker comes later: it runs a job submitted after the cancel (same consumer, in order), and
    # never the cancelled one.
    worker = await stack.worker("w1", "--capabilities", "probecap")

    async def submitted() -> str | None:
        # 503 until the new scheduler holds the shards the killed one leased.
        r = await http.post(
            f"{stack.url}/execute", json={"workflowId": "wf-test", "jobs": [job("probe", capability="probecap")]}
        )
        return str(r.json()["executionId"]) if r.status_code == 201 else None

    later = await wait_for(submitted, timeout=30, interval=0.5, message="a submit to the new scheduler")
    assert (await wait_final(http, stack.url, later))["status"] == "completed"
    ran = [line["executionId"] for line in worker.log_lines() if line.get("event") == "job completed"]
    assert ran == [later]
    assert (await jobs(http, stack.url, eid))["probe"]["status"] == "cancelled"


# --- 3. a job no worker can run says why ------------------------------------------------------------------------


async def test_a_job_no_worker_can_run_says_why_and_its_schedule_timeout_fails_it(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    await stack.up(workers=1, **QUICK_AUDIT)
    reasons: list[str] = []

    async def on_jobs(msg: Any) -> None:
        reasons.extend(c["waitingReason"] for c in json.loads(msg.data)["jobs"] if c.get("waitingReason"))

    await nc.subscribe(f"{stack.names.events_prefix}.execution.*.jobs", cb=on_jobs)
    eid = await submit(
        http,
        stack.url,
        [
            job("prep", "preprocessing"),
            job("tpu", "preprocessing", capability="tpu"),
            job("late", "noop", capability="tpu", scheduleTimeoutS=2),
        ],
    )
    expected = {
        "prep": "no live worker has a handler for 'preprocessing'",
        "tpu": "no live worker has capability 'tpu' and a handler for 'preprocessing'",
    }

    async def explained() -> dict[str, Any] | None:
        listing = await jobs(http, stack.url, eid)
        seen = {k: listing[k]["waitingReason"] for k in expected}
        return listing if seen == expected else None

    listing = await wait_for(explained, timeout=20, message="the waiting reasons")
    assert all(listing[k]["attempts"] == 0 and listing[k]["status"] == "queued" for k in expected)
    assert set(expected.values()) <= set(reasons)  # the events say it too
    scheduler = next(p for p in stack.procs if p.name == "scheduler")
    assert scheduler.has_logged("job waiting", jobId="prep", reason=expected["prep"])

    async def timed_out() -> dict[str, Any] | None:
        late = (await jobs(http, stack.url, eid))["late"]
        return late if late["status"] == "failed" else None

    late = await wait_for(timed_out, timeout=20, message="the schedule timeout to fail the job")
    assert late["error"] == "not started within 2 s of being queued: no live worker has capability 'tpu'"
    assert late["attempts"] == 0
    assert (await http.post(f"{stack.url}/execute/{eid}/cancel")).status_code == 200


# --- 7. a result that is not JSON ---------------------------------------------------------------------------------


async def test_a_result_that_is_not_json_fails_the_attempt_with_the_reason(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up()
    worker = await stack.worker("w1", "tests.handlers")
    eid = await submit(http, stack.url, [job("odd", "not_json", retries=1, backoffMs=10)])
    final = await wait_final(http, stack.url, eid)
    odd = (await jobs(http, stack.url, eid))["odd"]
    assert final["status"] == "failed" and odd["attempts"] == 2  # one failed attempt, retried under its policy
    assert odd["error"].startswith("result is not JSON-serialisable: "), odd["error"]
    assert "poison" not in odd["error"] and len(odd["deliveries"]) == 2
    assert not worker.has_logged("job report not delivered; the job will be redelivered")


# --- 9. a failure keeps its traceback -----------------------------------------------------------------------------


async def test_a_failure_keeps_its_type_message_and_traceback(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("w1", "tests.handlers")
    eid = await submit(http, stack.url, [job("div", "raises")])
    await wait_final(http, stack.url, eid)
    div = (await jobs(http, stack.url, eid))["div"]
    info = div["errorInfo"]
    assert info["type"] == "ZeroDivisionError" and info["message"] == "ZeroDivisionError: division by zero"
    assert "tests/handlers.py" in info["traceback"] and "_divide" in info["traceback"]
    assert div["error"] == "ZeroDivisionError: division by zero"
    # What the job logged before it failed, and nothing the worker logged around it.
    assert info["log"] == ["INFO dividing by=0"]


async def test_a_failure_keeps_the_last_lines_its_job_logged(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("w1", "tests.handlers")
    eid = await submit(http, stack.url, [job("chatty", "chatty"), job("fine", "noop")])
    await wait_final(http, stack.url, eid)
    listing = await jobs(http, stack.url, eid)
    lines = listing["chatty"]["errorInfo"]["log"]
    # The last 20 of 31 lines, from ctx.log and the stdlib, logged in the worker's thread.
    assert lines == [f"INFO row n={n}" for n in range(11, 30)] + ["WARNING user.loader: disk almost full"]
    assert listing["fine"]["status"] == "completed" and listing["fine"]["errorInfo"] is None


async def test_non_retryable_fails_at_once(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("w1", "tests.handlers")
    eid = await submit(http, stack.url, [job("bad", "final", retries=3, backoffMs=10)])
    await wait_final(http, stack.url, eid)
    bad = (await jobs(http, stack.url, eid))["bad"]
    assert bad["status"] == "failed" and bad["attempts"] == 1 and bad["error"] == "the input is malformed"


async def test_progress_and_workflow_id_reach_the_job_listing(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await stack.up()
    await stack.worker("w1", "tests.handlers")
    gate = tmp_path / "go"
    r = await http.post(
        f"{stack.url}/execute",
        json={"workflowId": "wf-progress", "jobs": [job("p", "progress", config={"path": str(gate)})]},
    )
    eid = r.json()["executionId"]

    async def half() -> dict[str, Any] | None:
        progress = (await jobs(http, stack.url, eid))["p"]["progress"]
        return progress if progress and progress["fraction"] == 0.5 else None

    progress = await wait_for(half, timeout=20, message="the job's progress")
    assert progress["message"] == "half way"
    gate.write_text("go")
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    assert (await jobs(http, stack.url, eid))["p"]["result"] == {"workflow": "wf-progress"}


# --- 16. an execution left open with nothing in flight -------------------------------------------------------


async def test_a_job_message_lost_from_the_stream_is_found_and_dispatched_again(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    """An operator purges the job stream (or a node loses it): the execution would wait forever for a message
    that no longer exists. The audit finds it and dispatches the job again."""
    await stack.up(0, **QUICK_AUDIT)
    eid = await submit(http, stack.url, [job("lost", capability="later"), job("next", "noop", ["lost"])])

    async def placed() -> bool:
        info = await nc.jetstream().stream_info(stack.names.jobs_stream)
        return bool(info.state.messages == 1)

    await wait_for(placed, timeout=10, message="the job message in the stream")
    await nc.jetstream().purge_stream(stack.names.jobs_stream)
    queued_at = (await jobs(http, stack.url, eid))["lost"]["queuedAt"]

    async def dispatched_again() -> bool:
        return bool((await jobs(http, stack.url, eid))["lost"]["queuedAt"] != queued_at)

    await wait_for(dispatched_again, timeout=20, message="the lost job to be dispatched again")
    await stack.worker("w1", "--capabilities", "later")
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"


async def test_a_running_job_whose_report_was_lost_is_found_and_runs_again(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    """The other way to be left open with nothing in flight: a job ran, its worker stored its report and acked
    its message, and the report was lost before the scheduler read it (here: purged while the scheduler is
    stopped). Nothing would ever report on the job again; the audit finds it and runs it again."""
    await stack.up(workers=1, **QUICK_AUDIT)
    scheduler = next(p for p in stack.procs if p.name == "scheduler")
    # The job outlasts the stopped scheduler's pull requests (they expire after 10 s), so its report is stored
    # and not delivered: a report already in the scheduler's socket would not be lost by the purge.
    eid = await submit(http, stack.url, [job("a", "sleep", config={"seconds": 12}), job("b", "noop", ["a"])])
    await running(http, stack.url, eid)
    js = nc.jetstream()
    shard = stack.names.reports_consumer(shard_of(eid, ExecutionSettings().shards))
    os.kill(scheduler.pid, signal.SIGSTOP)
    try:

        async def reported_and_acked() -> bool:
            consumer = await js.consumer_info(stack.names.reports_stream, shard)
            queued = await js.stream_info(stack.names.jobs_stream, subjects_filter=stack.names.jobs_of_execution(eid))
            return consumer.num_pending >= 1 and not consumer.num_ack_pending and queued.state.messages == 0

        await wait_for(reported_and_acked, timeout=40, message="the report stored, undelivered, the job message acked")
        await js.purge_stream(stack.names.reports_stream)
    finally:
        os.kill(scheduler.pid, signal.SIGCONT)
    final = await wait_final(http, stack.url, eid, timeout=60)
    assert final["status"] == "completed", final
    assert scheduler.has_logged("running jobs with no job message and no report left; dispatched again")
    a = (await jobs(http, stack.url, eid))["a"]
    # It ran twice, both runs on the books; one attempt (the first one's result was lost, not its verdict).
    assert a["status"] == "completed" and a["attempts"] == 1, a
    assert [d["workerId"] for d in a["deliveries"]] == ["w1", "w1"], a


# --- 4. a slow command is answered, not reported failed --------------------------------------------------------


async def test_the_largest_dag_and_its_cancel_are_answered_not_503(stack: Stack, http: httpx.AsyncClient) -> None:
    """The documented maximum (JETDAG_MAX_JOBS, every job ready at once) and its cancel, with the stack's
    default timeouts (the tests' request timeout is 5 s): each answers what happened, however long it takes."""
    await stack.up()  # no worker: every job stays queued, so the cancel has all of them to withdraw
    max_jobs = ExecutionSettings().max_jobs
    body = {"workflowId": "wf-largest", "jobs": [job(f"j{i}") for i in range(max_jobs)]}
    started = asyncio.get_running_loop().time()
    r = await http.post(f"{stack.url}/execute", json=body, timeout=120)
    submitted = asyncio.get_running_loop().time() - started
    assert r.status_code == 201, r.text[:300]
    eid = r.json()["executionId"]

    async def all_queued() -> bool:
        return bool((await status(http, stack.url, eid))["progress"]["queued"] == max_jobs)

    await wait_for(all_queued, timeout=60, message=f"{max_jobs} jobs queued")
    started = asyncio.get_running_loop().time()
    r = await http.post(f"{stack.url}/execute/{eid}/cancel", timeout=120)
    cancelled = asyncio.get_running_loop().time() - started
    assert r.status_code == 200, r.text[:300]
    assert r.json()["status"] == "cancelled"
    print(f"\n{max_jobs} jobs: 201 after {submitted:.1f} s, cancel 200 after {cancelled:.1f} s")

    async def nothing_waiting() -> bool:
        return bool((await stats(http, stack.url))["stats"]["waiting"] == 0)

    await wait_for(nothing_waiting, timeout=60, message="the withdrawn jobs no longer counted waiting")
    assert (await status(http, stack.url, eid))["progress"]["cancelled"] == max_jobs


# --- 4. a retried submit never creates a second execution --------------------------------------------------


async def test_the_same_idempotency_key_returns_the_same_execution(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    body = {"workflowId": "wf-idem", "jobs": [job("a")]}
    first = await http.post(f"{stack.url}/execute", json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 201, first.text
    again = await http.post(f"{stack.url}/execute", json=body, headers={"Idempotency-Key": "order-42"})
    assert again.status_code == 200 and again.json()["executionId"] == first.json()["executionId"]
    # The key in the body does the same.
    field = await http.post(f"{stack.url}/execute", json={**body, "idempotencyKey": "order-42"})
    assert field.status_code == 200 and field.json()["executionId"] == first.json()["executionId"]
    other = await http.post(
        f"{stack.url}/execute", json={**body, "workflowId": "wf-other"}, headers={"Idempotency-Key": "order-42"}
    )
    assert other.status_code == 409 and "a different request" in other.json()["error"], other.text
    bad = await http.post(f"{stack.url}/execute", json=body, headers={"Idempotency-Key": "no spaces"})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]
    listed = (await http.get(f"{stack.url}/executions", params={"workflowId": "wf-idem"})).json()
    assert listed["count"] == 1


async def test_an_idempotency_key_is_kept_for_its_ttl_then_names_a_new_execution(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=1, JETDAG_IDEMPOTENCY_TTL_S="2")
    body = {"workflowId": "wf-ttl", "jobs": [job("a")]}
    headers = {"Idempotency-Key": "nightly-7"}
    first = await http.post(f"{stack.url}/execute", json=body, headers=headers)
    assert first.status_code == 201, first.text
    started = asyncio.get_running_loop().time()
    again = await http.post(f"{stack.url}/execute", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["executionId"] == first.json()["executionId"]
    created: list[str] = []

    async def expired() -> bool:
        r = await http.post(f"{stack.url}/execute", json=body, headers=headers)
        assert r.status_code in (200, 201), r.text
        if r.status_code == 201:
            created.append(r.json()["executionId"])
            return True
        assert r.json()["executionId"] == first.json()["executionId"]
        return False

    await wait_for(expired, timeout=30, interval=0.2, message="the key forgotten after its TTL")
    # Not before its TTL, and then one new execution, not a second copy of the first.
    assert asyncio.get_running_loop().time() - started >= 1.5
    assert created and created[0] != first.json()["executionId"]
    listed = (await http.get(f"{stack.url}/executions", params={"workflowId": "wf-ttl"})).json()
    assert listed["count"] == 2


async def test_concurrent_submits_with_one_key_create_one_execution(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    body = {"workflowId": "wf-race", "jobs": [job("a"), job("b", "noop", ["a"])]}
    answers = await asyncio.gather(
        *(http.post(f"{stack.url}/execute", json=body, headers={"Idempotency-Key": "race-1"}) for _ in range(8))
    )
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["executionId"] for r in answers}) == 1
    listed = (await http.get(f"{stack.url}/executions", params={"workflowId": "wf-race"})).json()
    assert listed["count"] == 1
