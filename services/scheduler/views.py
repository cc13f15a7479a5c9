"""What clients see of an execution: views and records built from the owner's state (or a stored record)."""

from __future__ import annotations

from msgspec import UNSET

from shared.messages import (
    Counts,
    ExecutionRecord,
    ExecutionView,
    JobChange,
    JobPatch,
    JobView,
    Progress,
)

from .machine import ExecutionState, Job

__all__ = ["change_of", "execution_view", "job_change", "job_view", "progress", "record_view"]


def progress(counts: Counts, total: int) -> Progress:
    return Progress(
        total=total,
        completed=counts.completed,
        failed=counts.failed,
        running=counts.running,
        queued=counts.queued + counts.ready,
        pending=counts.pending,
        delayed=counts.delayed,
        skipped=counts.skipped,
        cancelled=counts.cancelled,
    )


def execution_view(state: ExecutionState, *, started_at: str, checkpoint_id: str | None) -> ExecutionView:
    return ExecutionView(
        execution_id=state.execution_id,
        workflow_id=state.workflow_id,
        status=state.status,
        started_at=started_at,
        completed_at=state.completed_at,
        progress=progress(state.counts, len(state.jobs)),
        checkpoint_id=checkpoint_id,
        job_count=len(state.jobs),
        parallelism=state.parallelism,
        round=state.round,
        error=state.error,
        run_at=state.run_at,
        priority=state.priority,
        paused=state.paused,
        paused_at=state.paused_at,
    )


def record_view(record: ExecutionRecord) -> ExecutionView:
    return ExecutionView(
        execution_id=record.execution_id,
        workflow_id=record.workflow_id,
        status=record.status,
        started_at=record.started_at,
        completed_at=record.completed_at,
        progress=progress(record.counts, record.job_count),
        checkpoint_id=record.checkpoint_id,
        job_count=record.job_count,
        parallelism=record.parallelism,
        round=record.round,
        error=record.error,
        run_at=record.run_at,
        priority=record.priority,
        paused=record.paused,
        paused_at=record.paused_at,
    )


def job_view(state: ExecutionState, job: Job) -> JobView:
    jobs = state.jobs
    return JobView(
        id=job.id,
        name=job.name,
        type=job.type,
        status=job.status,
        attempts=job.attempts,
        worker_id=job.worker_id,
        queued_at=job.queued_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        error=job.error,
        result=job.result,
        depends_on=[jobs[p].id for p in job.parents],
        capability=job.requested_capability,
        error_info=job.error_info,
        deliveries=job.deliveries,
        progress=job.progress,
        waiting_reason=job.waiting_reason,
        retry_at=job.retry_at,
        priority=job.priority,
        concurrency_key=job.concurrency_key,
        config=job.config,
    )


def change_of(patch: JobPatch) -> bool:
    """Whether subscribers are told of a patch: status changes, progress and waiting reasons are news;
    bookkeeping (a message stored, a token) is not."""
    return not (patch.status is UNSET and patch.progress is UNSET and patch.waiting_reason is UNSET)


def job_change(state: ExecutionState, job: Job, at: str) -> JobChange:
    """A job as a JobsEvent shows it."""
    return JobChange(
        job_id=job.id,
        status=job.status,
        attempt=job.attempt,
        at=at,
        worker_id=job.worker_id,
        error=job.error if job.status in ("failed", "delayed", "skipped") else None,
        retry_at=job.retry_at if job.status == "delayed" else None,
        progress=job.progress if job.status == "running" else None,
        waiting_reason=job.waiting_reason if job.status == "queued" else None,
    )
