"""Retention: finished executions are removed after JETDAG_EXECUTION_RETENTION_S, with everything they
stored, while open ones stay and the cumulative counters of GET /queue/stats do not move."""

from __future__ import annotations

import httpx
import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from shared.jetstream import kv_entries
from shared.messages import Archive, Removal
from tests.api import job, stats, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


async def test_finished_executions_expire_and_counters_stay_exact(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    await stack.up(workers=1, JETDAG_EXECUTION_RETENTION_S="2", JETDAG_SWEEP_INTERVAL_S="0.2")
    done = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"])])
    failed = await submit(http, stack.url, [job("x", "fail"), job("y", "noop", ["x"]), job("z")])
    assert (await wait_final(http, stack.url, done))["status"] == "completed"
    assert (await wait_final(http, stack.url, failed))["status"] == "failed"
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    waiting = await submit(http, stack.url, [job("later")])  # open for as long as the queue is paused

    async def held() -> dict[str, int] | None:  # its job is published just after POST /execute answers
        s: dict[str, int] = (await stats(http, stack.url))["stats"]
        return s if s["paused"] == 1 else None

    before = await wait_for(held, timeout=10, message="the job to be held by the pause")
    assert (before["completed"], before["failed"]) == (3, 1)

    async def removed() -> bool:
        codes = [(await http.get(f"{stack.url}/execute/{e}")).status_code for e in (done, failed)]
        return codes == [404, 404]

    await wait_for(removed, timeout=30, message="the finished executions to be removed")
    r = await http.get(f"{stack.url}/execute/{done}/jobs")
    assert r.status_code == 404
    after = (await stats(http, stack.url))["stats"]
    assert (after["completed"], after["failed"]) == (3, 1), after  # removed executions still count
    listed = (await http.get(f"{stack.url}/executions")).json()
    assert [e["executionId"] for e in listed["executions"]] == [waiting]
    # Nothing of them is left in the buckets; the archive holds what they counted.
    js = nc.jetstream()
    keys = [e.key for e in await kv_entries(js, stack.names.executions_bucket)]
    assert not [k for k in keys if k.startswith((done, failed))], keys
    checkpoints = [e.key for e in await kv_entries(js, stack.names.checkpoints_bucket)]
    assert done not in checkpoints and failed not in checkpoints
    entry = await (await js.key_value(stack.names.executions_bucket)).get("archive")
    archive = msgspec.json.decode(entry.value or b"", type=Archive)
    assert (archive.completed, archive.failed, archive.executions, archive.removing) == (3, 1, 2, {})
    # What is left of a removed execution is its delete marker, and that expires (an hour by default).
    stream = f"KV_{stack.names.executions_bucket}"
    marker = await js.get_msg(stream, subject=f"$KV.{stack.names.executions_bucket}.{done}")
    assert marker.headers is not None
    assert marker.headers.get("KV-Operation") == "DEL" and int(marker.headers["Nats-TTL"]) > 0, marker.headers
    # ...because the bucket honours per-message TTLs: a marker with a 1 s TTL is gone within seconds.
    await js.publish(
        f"$KV.{stack.names.executions_bucket}.ttl-probe", b"", headers={"KV-Operation": "DEL", "Nats-TTL": "1"}
    )

    async def expired() -> bool:
        try:
            await js.get_msg(stream, subject=f"$KV.{stack.names.executions_bucket}.ttl-probe")
        except NotFoundError:
            return True
        return False

    await wait_for(expired, timeout=15, message="a 1 s TTL marker to expire")

    # The open execution was never touched; once it ends, it expires too and is counted on.
    assert (await http.post(f"{stack.url}/queue/resume")).status_code == 200
    assert (await wait_final(http, stack.url, waiting))["status"] == "completed"

    async def gone() -> bool:
        return (await http.get(f"{stack.url}/execute/{waiting}")).status_code == 404

    await wait_for(gone, timeout=30, message="the last execution to be removed")
    final = (await stats(http, stack.url))["stats"]
    assert (final["completed"], final["failed"], final["waiting"], final["paused"]) == (4, 1, 0, 0), final


async def test_a_removal_interrupted_after_its_announcement_is_finished(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    """A scheduler that died right after announcing a removal (step 1) leaves it in the archive: the next
    round, on any replica, finishes it — and drops an announced execution that was changed since."""
    await stack.up(workers=1, JETDAG_EXECUTION_RETENTION_S="3600", JETDAG_SWEEP_INTERVAL_S="0.2")
    gone, stays = [await submit(http, stack.url, [job("a"), job("b", "noop", ["a"])]) for _ in range(2)]
    for eid in (gone, stays):
        assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    assert (await stats(http, stack.url))["stats"]["completed"] == 4
    kv = await nc.jetstream().key_value(stack.names.executions_bucket)
    revision = {eid: (await kv.get(eid)).revision or 0 for eid in (gone, stays)}
    announced = Archive(
        removing={
            gone: Removal(revision=revision[gone], completed=2, failed=0),
            stays: Removal(revision=revision[stays] - 1, completed=2, failed=0),  # as if retried since
        }
    )
    await kv.create("archive", msgspec.json.encode(announced))

    async def finished() -> Archive | None:
        archive = msgspec.json.decode((await kv.get("archive")).value or b"", type=Archive)
        return archive if not archive.removing else None

    archive = await wait_for(finished, timeout=30, message="the announced removal to be finished")
    assert (archive.completed, archive.executions) == (2, 1)
    assert (await http.get(f"{stack.url}/execute/{gone}")).status_code == 404
    assert (await http.get(f"{stack.url}/execute/{stays}")).status_code == 200
    assert (await stats(http, stack.url))["stats"]["completed"] == 4
    keys = [e.key for e in await kv_entries(nc.jetstream(), stack.names.executions_bucket)]
    assert not [k for k in keys if k.startswith(gone)] and [k for k in keys if k.startswith(stays + ".snapshot.")]
