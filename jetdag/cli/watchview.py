"""The live view of `jetdag submit --watch` and `jetdag watch`: a rich progress bar on a terminal, plain
progress lines otherwise. Ctrl-C stops the watching, never the execution."""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jetdag.cli.output import err, is_tty, out
from jetdag.client import Client
from jetdag.watch import WatchState, exit_code
from shared.messages import FINAL_EXECUTION_STATES

__all__ = ["watch"]

MAX_RUNNING_SHOWN = 8


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def summary(state: WatchState) -> str:
    c = state.counts()
    parts = [f"{c['completed']} completed", f"{c['failed']} failed", f"{c['running']} running", f"{c['queued']} queued"]
    for extra in ("delayed", "skipped", "cancelled"):
        if c[extra]:
            parts.append(f"{c[extra]} {extra}")
    return f"{state.done()}/{state.total} done: " + ", ".join(parts)


class _View:
    """The renderable rich's Live refreshes (from its own thread: reads go through the lock)."""

    def __init__(self, state: WatchState, started: float, lock: threading.Lock) -> None:
        self.state = state
        self.started = started
        self.lock = lock

    def __rich__(self) -> RenderableType:
        with self.lock:
            state = self.state
            percent = int(state.fraction() * 100)
            head = Table.grid(padding=(0, 1))
            head.add_row(
                Text(state.workflow_id, style="bold"),
                ProgressBar(total=max(state.total, 1), completed=state.done(), width=40),
                Text(f"{percent:3d}%", style="bold"),
                Text(_elapsed(time.monotonic() - self.started), style="dim"),
                Text(state.status, style=_STYLE.get(state.status, "")),
            )
            c = state.counts()
            parts = [
                (f"✓ {c['completed']} completed", "green"),
                (f"✗ {c['failed']} failed", "red" if c["failed"] else "dim"),
                (f"▶ {c['running']} running", "cyan"),
                (f"… {c['queued']} queued", "dim"),
                *((f"{c[k]} {k}", "yellow") for k in ("delayed", "skipped", "cancelled") if c[k]),
            ]
            line = Text("  ").join(Text(text, style=style) for text, style in parts)
            rows: list[RenderableType] = [head, line]
            for job_id, run in list(state.running.items())[:MAX_RUNNING_SHOWN]:
                detail = f" {int(run.fraction * 100)}%" if run.fraction is not None else ""
                detail += f" {run.message}" if run.message else ""
                where = f" on {run.worker_id}" if run.worker_id else ""
                rows.append(Text(f"  ▶ {job_id}{where}{detail}", style="cyan"))
            hidden = len(state.running) - MAX_RUNNING_SHOWN
            if hidden > 0:
                rows.append(Text(f"  … and {hidden} more running", style="dim"))
            return Group(*rows)


_STYLE = {"completed": "bold green", "failed": "bold red", "cancelled": "bold yellow", "running": "cyan"}


def watch(client: Client, execution_id: str, *, quiet: bool = False) -> int:
    """Follow an execution until it ends; its exit code (0 completed, 1 failed, 3 cancelled; 130 Ctrl-C).
    `quiet`: print nothing on stdout (`--json` prints the end state as its one document instead)."""
    state = WatchState.from_view(client.get(execution_id))
    started = time.monotonic()
    lock = threading.Lock()
    shown = is_tty() and not quiet
    live = Live(_View(state, started, lock), console=out, refresh_per_second=8, transient=False) if shown else None
    last_line = ""

    def plain() -> None:
        nonlocal last_line
        if quiet:
            return
        line = f"{state.status} {summary(state)}"
        if line != last_line:
            last_line = line
            sys.stdout.write(f"{time.monotonic() - started:7.1f}s  {line}\n")
            sys.stdout.flush()

    try:
        if live is not None:
            live.start()
        last: int | None = None
        while True:
            # The stream ends after the execution's last final event (a final event a retry followed does not
            # end it); the events describe, the record decides (an event can be missing, never wrong).
            for event in client.events(execution_id, last_event_id=last):
                last = event.id
                with lock:
                    state.apply(event)
                if live is None:
                    plain()
            final = client.get(execution_id)
            if final.status in FINAL_EXECUTION_STATES:
                break
        with lock:
            state.status, state.total, state.error = final.status, final.progress.total, final.error
            state.snapshot = {
                k: int(getattr(final.progress, k)) for k in ("completed", "failed", "skipped", "cancelled")
            } | {"running": 0, "queued": 0, "delayed": 0, "pending": 0}
            state.jobs = {j: s for j, s in state.jobs.items() if s in ("completed", "failed", "skipped", "cancelled")}
            state.running.clear()
        if live is None:
            plain()
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        err.print(f"stopped watching; {execution_id} goes on (jetdag watch {execution_id})")
        return 130
    finally:
        if live is not None:
            live.stop()
    if quiet:
        return exit_code(state.status)
    elapsed = time.monotonic() - started
    message = f"execution {execution_id} {state.status} after {_elapsed(elapsed)}: {summary(state)}"
    if state.error and state.status != "completed":
        message += f"\nerror: {state.error}"
    if is_tty():
        out.print(Text(message, style=_STYLE.get(state.status, "")))
    else:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    return exit_code(state.status)
