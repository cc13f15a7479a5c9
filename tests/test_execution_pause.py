"""Pausing one execution (issue 13 part 5): POST /execute/{id}/pause holds the jobs that have not started,
running ones finish, a takeover keeps it paused, POST /execute/{id}/resume runs the rest; bad input changes
nothing. Real services through HTTP and the CLI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from jetdag.client import AsyncClient
from shared.messages import ExecutionEvent
from tests.api import job, jobs, status, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for
from tests.test_cli_api import jetdag


async def messages_of(nc: Client, stack: Stack, execution_id: str) -> int:
    """Job messages of the execution still in the job stream (what a worker could still be handed)."""
    info = await nc.jetstream().stream_info(
        stack.names.jobs_stream, subjects_filter=stack.names.jobs_of_execution(execution_id)
    )
    return sum((info.state.subjects or {}).values())


async def last_event(nc: Client, stack: Stack, execution_id: str, what: str) -> ExecutionEvent:
    """The latest `what` event of the execution; events are published after the command answers, so wait."""
    subject = stack.names.execution_event(execution_id, what)

    async def read() -> ExecutionEvent | None:
        try:
            msg = await nc.jetstream().get_last_msg(stack.names.events_stream, subject)
        except NotFoundError:
            return None
        return msgspec.json.decode(msg.data or b"", type=ExecutionEvent)

    found: ExecutionEvent = await wait_for(read, timeout=10, message=f"the {what} event on {subject}")
    return found


def by_status(listing: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for job_id, j in listing.items():
        out.setdefault(j["status"], []).append(job_id)
    return out


async def test_a_paused_execution_starts_nothing_new_survives_a_takeover_and_completes_once_resumed(
    stack: Stack, http: httpx.AsyncClient, nc: Client, tmp_path: Path
) -> None:
    await stack.up()
    worker = await stack.worker("w1", "tests.handlers", "--concurrency", "2")
    gate = tmp_path / "open"
    held = {"path": str(gate)}
    # A fan-out of four that outnumbers the worker's two slots, and a chain behind the first of them.
    dag = [job(f"h{i}", "hold", config=held) for i in range(4)]
    dag += [job("b", "add", ["h0"], config={"value": 1}), job("c", "add", ["b"], config={"value": 1})]
    eid = await submit(http, stack.url, dag)

    async def two_running() -> bool:
        return bool((await status(http, stack.url, eid))["progress"]["running"] == 2)

    await wait_for(two_running, timeout=20, message="two jobs running")
    assert await messages_of(nc, stack, eid) == 4  # two running (not acked yet), two queued
    asked = time.perf_counter()
    r = await http.post(f"{stack.url}/execute/{eid}/pause")
    answered = time.perf_counter()
    assert r.status_code == 200, r.text
    paused = r.json()["execution"]
    assert paused["paused"] is True and paused["pausedAt"] is not None and paused["status"] == "running"
    listing = by_status(await jobs(http, stack.url, eid))
    assert sorted(listing["running"]) == ["h0", "h1"] and sorted(listing["ready"]) == ["h2", "h3"]
    assert sorted(listing["pending"]) == ["b", "c"] and "queued" not in listing
    # The two queued jobs' messages are gone from the job stream (no worker can be handed them); the running
    # jobs' stay, for their redelivery should their worker die.
    assert await wait_for(lambda: _left(nc, stack, eid, 2), timeout=10, message="messages withdrawn")
    withdrawn = time.perf_counter()
    event = await last_event(nc, stack, eid, "paused")
    assert event.paused is True and event.status == "running"
    async with AsyncClient(stack.url.removesuffix("/api/distributed")) as client:
        again = await client.pause_execution(eid)  # idempotent: the same pause
    assert again.paused and again.paused_at == paused["pausedAt"]

    # kill -9 of the execution's owner: its successor replays the journal, the pause included.
    stack.procs[1].kill()
    await stack.scheduler("scheduler-2")

    async def still_paused() -> dict[str, Any] | None:
        r = await http.get(f"{stack.url}/execute/{eid}")
        return r.json()["execution"] if r.status_code == 200 and r.json()["execution"]["paused"] else None

    after = await wait_for(still_paused, timeout=30, message="the new owner to show it paused")
    assert after["pausedAt"] == paused["pausedAt"]

    # The running jobs finish; their dependent becomes ready and is held.
    gate.write_text("open")

    async def finished_two() -> dict[str, list[str]] | None:
        found = by_status(await jobs(http, stack.url, eid))
        return found if sorted(found.get("completed", [])) == ["h0", "h1"] else None

    listing = await wait_for(finished_two, timeout=30, message="the running jobs to complete")
    assert sorted(listing["ready"]) == ["b", "h2", "h3"] and listing["pending"] == ["c"]
    # Another execution runs to its end on the same worker meanwhile: the worker is pulling, and still
    # nothing of the paused one starts.
    other = await submit(http, stack.url, [job("x", "add", config={"value": 1})])
    assert (await wait_final(http, stack.url, other))["status"] == "completed"
    assert by_status(await jobs(http, stack.url, eid)) == listing
    assert await messages_of(nc, stack, eid) == 0
    ran = [line["jobId"] for line in worker.log_lines() if line.get("event") == "job completed"]
    assert sorted(ran) == ["h0", "h1", "x"]

    resumed_at = time.perf_counter()
    resumed = await jetdag(stack, "resume", eid)
    assert resumed.returncode == 0 and resumed.stdout.strip() == f"{eid} running", resumed
    final = await wait_final(http, stack.url, eid)
    print(
        f"\npause answered in {(answered - asked) * 1000:.0f} ms, its queued messages gone "
        f"{(withdrawn - asked) * 1000:.0f} ms after the request; resume (CLI) to completed "
        f"{time.perf_counter() - resumed_at:.2f} s"
    )
    assert final["status"] == "completed" and final["paused"] is False and final["pausedAt"] is None
    done = await jobs(http, stack.url, eid)
    assert all(j["status"] == "completed" and j["attempts"] == 1 for j in done.values())  # none ran twice
    assert done["c"]["result"]["total"] == 2
    assert (await last_event(nc, stack, eid, "resumed")).paused is False

    # Bad input changes nothing: an ended execution (409), an unknown one (404), a malformed id (400).
    for action in ("pause", "resume"):
        r = await http.post(f"{stack.url}/execute/{eid}/{action}")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == f"execution {eid} already ended (completed); there is nothing to {action}"
        r = await http.post(f"{stack.url}/execute/exec-does-not-exist/{action}")
        assert r.status_code == 404 and "does not exist" in r.json()["error"], r.text
        r = await http.post(f"{stack.url}/execute/bad%20id!/{action}")
        assert r.status_code == 400 and "executionId" in r.json()["error"], r.text
    refused = await jetdag(stack, "pause", eid)
    assert refused.returncode == 4 and "already ended" in refused.stderr
    assert (await status(http, stack.url, eid))["paused"] is False


async def _left(nc: Client, stack: Stack, execution_id: str, n: int) -> bool:
    return await messages_of(nc, stack, execution_id) == n
