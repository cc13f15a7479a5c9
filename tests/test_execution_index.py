"""The scheduler's execution index against a real bucket: finished executions are kept as summaries (memory
follows the open executions, not the history), yet listings, filters and totals stay exact."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.client import Client

from services.scheduler import index as index_module
from services.scheduler.index import ExecutionIndex
from shared.jetstream import ensure_bucket, kv_config
from shared.messages import Counts, ExecutionRecord
from shared.service import cancel_and_wait
from shared.settings import StorageSettings, load
from tests.helpers import wait_for


def record(
    n: int, status: str, workflow: str, *, completed: int = 0, failed: int = 0, queued: int = 0
) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=f"exec-{n:04d}",
        workflow_id=workflow,
        status=status,  # type: ignore[arg-type]
        created_at="2026-11-28T00:00:00Z",
        started_at="2026-11-28T00:00:00Z",
        completed_at=None,
        job_count=completed + failed + queued,
        parallelism=None,
        counts=Counts(completed=completed, failed=failed, queued=queued),
        updated_at="2026-11-28T00:00:00Z",
    )


async def test_index_lists_counts_and_forgets_finished_records(nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "RECENT_FINISHED", 2)
    kv = await ensure_bucket(nc.jetstream(), kv_config("idx", "index test", load(StorageSettings)))
    settled: list[tuple[str, int]] = []
    index = ExecutionIndex(nc.jetstream(), "idx", on_finished=lambda key, rev: settled.append((key, rev)))
    running = asyncio.create_task(index.run())
    try:
        await asyncio.wait_for(index.ready.wait(), 10)
        revisions = {}
        for n in range(6):  # 0-4 finished (4 failed), 5 still running
            status, wf = ("running", "b") if n == 5 else ("failed" if n == 4 else "completed", "a" if n % 2 else "b")
            rec = record(n, status, wf, completed=2, failed=1 if n == 4 else 0, queued=3 if n == 5 else 0)
            revisions[n] = await kv.put(rec.execution_id, msgspec.json.encode(rec))
        await kv.put("exec-0000.job.x", b"{}")  # job records are not execution records
        await wait_for(lambda: len(index) == 6, timeout=10, message="the index to follow the bucket")

        assert (index.completed, index.failed, index.open_jobs) == (12, 1, 3)
        assert [r.execution_id for r in index.open_executions()] == ["exec-0005"]
        assert index.open_record("exec-0001") is None
        # Finished records are kept in full only for the last RECENT_FINISHED; the rest are read from the bucket.
        assert index.get("exec-0004") is not None and index.get("exec-0003") is not None
        assert index.get("exec-0000") is None
        old = await kv.get("exec-0000")
        index.remember(msgspec.json.decode(old.value or b"", type=ExecutionRecord), old.revision or 0)
        assert index.get("exec-0000") is not None
        assert settled == [(f"exec-{n:04d}", revisions[n]) for n in range(5)]

        assert index.select(before=None, status=None, workflow_id=None, limit=10) == [
            f"exec-{n:04d}" for n in (5, 4, 3, 2, 1, 0)
        ]
        assert index.select(before="exec-0004", status=None, workflow_id=None, limit=2) == ["exec-0003", "exec-0002"]
        assert index.select(before=None, status="completed", workflow_id="b", limit=10) == ["exec-0002", "exec-0000"]
        assert index.select(before=None, status="failed", workflow_id=None, limit=10) == ["exec-0004"]

        # A finished execution retried (open again), then deleted: totals follow each change exactly.
        again = record(4, "running", "b", completed=2, queued=1)
        await kv.put(again.execution_id, msgspec.json.encode(again))
        await wait_for(lambda: index.open_record("exec-0004") is not None, timeout=10, message="the retry")
        assert (index.completed, index.failed, index.open_jobs) == (12, 0, 4)
        await kv.delete("exec-0004")
        await wait_for(lambda: len(index) == 5, timeout=10, message="the deletion")
        assert (index.completed, index.failed, index.open_jobs) == (10, 0, 3)
        assert "exec-0004" not in index.select(before=None, status=None, workflow_id=None, limit=10)
    finally:
        await cancel_and_wait([running])
