"""The watch view's state, folded from an execution's events (the batched `jobs` events with progress). Pure."""

from __future__ import annotations

from jetdag.client.events import decode_event
from jetdag.watch import WatchState, exit_code
from shared.messages import ExecutionView, Progress

AT = "2026-12-02T10:00:00.000Z"


def view(total: int = 3) -> ExecutionView:
    progress = Progress(total=total, completed=0, failed=0, running=0, pending=total)
    return ExecutionView(
        execution_id="e1",
        workflow_id="wf",
        status="pending",
        started_at=AT,
        completed_at=None,
        progress=progress,
        checkpoint_id=None,
        job_count=total,
        parallelism=None,
        round=1,
    )


def jobs_event(seq: int, *changes: tuple[str, str]) -> bytes:
    body = ",".join(
        f'{{"jobId":"{job}","status":"{status}","attempt":1,"at":"{AT}","workerId":"w1"}}' for job, status in changes
    )
    return (
        f'{{"executionId":"e1","round":1,"at":"{AT}","jobs":[{body}],'
        '"progress":{"total":3,"completed":0,"failed":0,"running":0}}'
    ).encode()


def test_job_changes_fold_into_counts() -> None:
    state = WatchState.from_view(view())
    state.apply(decode_event(1, "jobs", jobs_event(1, ("a", "queued"))))
    state.apply(decode_event(2, "jobs", jobs_event(2, ("a", "running"))))
    assert state.counts()["running"] == 1 and state.running["a"].worker_id == "w1"
    state.apply(decode_event(3, "jobs", jobs_event(3, ("a", "completed"), ("b", "failed"))))
    counts = state.counts()
    assert (counts["completed"], counts["failed"], counts["running"], counts["pending"]) == (1, 1, 0, 1)
    assert state.done() == 2 and round(state.fraction(), 2) == 0.67 and not state.running


def test_batched_job_events_with_progress_messages() -> None:
    state = WatchState.from_view(view(total=2))
    state.apply(
        decode_event(
            7,
            "jobs",
            b'{"executionId":"e1","round":1,"at":"t","jobs":['
            b'{"jobId":"train","status":"running","attempt":1,"at":"t","workerId":"w2",'
            b'"progress":{"fraction":0.4,"message":"epoch 4/10"}},'
            b'{"jobId":"prep","status":"completed","attempt":1,"at":"t"}],'
            b'"progress":{"total":2,"completed":1,"failed":0,"running":1}}',
        )
    )
    run = state.running["train"]
    assert (run.worker_id, run.fraction, run.message) == ("w2", 0.4, "epoch 4/10")
    assert state.counts()["completed"] == 1 and state.total == 2


def test_execution_events_and_a_retry() -> None:
    state = WatchState.from_view(view(total=2))
    state.apply(decode_event(1, "jobs", jobs_event(1, ("a", "completed"), ("b", "failed"))))
    failed = (
        b'{"executionId":"e1","workflowId":"wf","status":"failed","at":"t","error":"job b failed: x",'
        b'"progress":{"total":2,"completed":1,"failed":1,"running":0}}'
    )
    state.apply(decode_event(3, "failed", failed))
    assert state.final and state.error == "job b failed: x" and exit_code(state.status) == 1
    retried = failed.replace(b'"status":"failed"', b'"status":"pending"')
    state.apply(decode_event(4, "retried", retried))
    assert not state.final and state.jobs == {"a": "completed"}
    assert exit_code("completed") == 0 and exit_code("cancelled") == 3


def test_unknown_kinds_are_kept_raw() -> None:
    event = decode_event(9, "future-kind", b'{"x":1}')
    assert event.payload == {"x": 1}
    state = WatchState.from_view(view())
    state.apply(event)
    assert state.counts()["pending"] == 3
