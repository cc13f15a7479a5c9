"""What `jetdag watch` shows, folded from an execution's events. Pure: no I/O, no terminal.

Job changes come batched in `jobs` events (JobsEvent: `{"jobs": [{"jobId", "status", "workerId"?, "progress"?:
{"fraction", "message"}}], "progress": {...}}`). A job's progress message is shown when the events carry one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from jetdag.client.events import Event
from shared.messages import FINAL_EXECUTION_STATES, ExecutionEvent, ExecutionView, JobChange, JobsEvent

__all__ = ["Running", "WatchState", "exit_code"]

EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 3}
FINISHED = ("completed", "failed", "skipped", "cancelled")


def exit_code(status: str) -> int:
    """0 completed, 1 failed, 3 cancelled (2 is a usage or validation error, 130 Ctrl-C)."""
    return EXIT_CODES.get(status, 1)


@dataclass
class Running:
    worker_id: str | None = None
    fraction: float | None = None
    message: str | None = None


@dataclass
class WatchState:
    execution_id: str
    workflow_id: str
    status: str
    total: int
    jobs: dict[str, str] = field(default_factory=dict)
    """Latest status of every job an event named."""
    running: dict[str, Running] = field(default_factory=dict)
    snapshot: dict[str, int] | None = None
    """Counts from the latest execution event, until a job event moves on from it."""
    error: str | None = None

    @classmethod
    def from_view(cls, view: ExecutionView) -> WatchState:
        # Counts come from the events, replayed from the execution's first: starting from the view's counts
        # would show them going back to 0 while the replay catches up.
        return cls(view.execution_id, view.workflow_id, view.status, view.progress.total, error=view.error)

    @property
    def final(self) -> bool:
        return self.status in FINAL_EXECUTION_STATES

    def counts(self) -> dict[str, int]:
        """Jobs per status: completed, failed, skipped, cancelled, running, queued, delayed, pending."""
        if self.snapshot is not None and not self.jobs:
            return dict(self.snapshot)
        tally = Counter(self.jobs.values())
        counts = {s: tally[s] for s in (*FINISHED, "running", "delayed")}
        counts["queued"] = tally["queued"] + tally["ready"]
        counts["pending"] = max(0, self.total - sum(counts.values()))
        if self.snapshot is not None:
            # Jobs that finished before the first event we saw (a watch started late on a big execution).
            for status in FINISHED:
                counts[status] = max(counts[status], self.snapshot.get(status, 0))
        return counts

    def done(self) -> int:
        counts = self.counts()
        return sum(counts[s] for s in FINISHED)

    def fraction(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.done() / self.total)

    def apply(self, event: Event) -> None:
        payload = event.payload
        if isinstance(payload, ExecutionEvent):
            self.status = "pending" if event.kind == "retried" else payload.status
            self.total = payload.progress.total
            self.error = payload.error
            if event.kind == "retried":
                # A new round re-runs what did not complete: its jobs' earlier verdicts no longer hold.
                self.jobs = {j: s for j, s in self.jobs.items() if s == "completed"}
                self.running.clear()
            self.snapshot = _counts(payload.progress)
        elif isinstance(payload, JobsEvent):
            for change in payload.jobs:
                self._job(change)
            self.total = payload.progress.total

    def _job(self, change: JobChange) -> None:
        self.jobs[change.job_id] = change.status
        if change.status != "running":
            self.running.pop(change.job_id, None)
            return
        running = self.running.setdefault(change.job_id, Running())
        running.worker_id = change.worker_id or running.worker_id
        if change.progress is not None:
            if change.progress.fraction is not None:
                running.fraction = change.progress.fraction
            if change.progress.message is not None:
                running.message = change.progress.message


def _counts(progress: Any) -> dict[str, int]:
    names = ("completed", "failed", "skipped", "cancelled", "running", "queued", "delayed", "pending")
    return {name: int(getattr(progress, name, 0)) for name in names}
