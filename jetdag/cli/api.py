"""The commands that drive a running gateway: submit, watch, status, jobs, ls, cancel, retry, events, workers,
queue, health. Each takes --url, --token and --json.

Exit codes: 0 success (an execution that completed), 1 an execution that failed (or an unhealthy health
check), 2 a usage or validation error, 3 an execution that was cancelled, 4 a request that failed (not found,
conflict, unauthorized, unreachable), 130 Ctrl-C.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import msgspec

from jetdag.cli.output import err, out, print_json, print_table
from jetdag.cli.watchview import watch as watch_execution
from jetdag.cli.workflows import EXIT_USAGE
from jetdag.client import Client, Invalid, JetdagError, WorkflowError
from jetdag.watch import exit_code
from shared.messages import (
    ExecutionStatus,
    ExecutionView,
    JobView,
    Overlap,
    QueuePause,
    RateLimitView,
    ScheduleRunView,
    ScheduleView,
)
from shared.pauses import describe

__all__ = ["COMMANDS"]

EXIT_REQUEST = 4
F = TypeVar("F", bound=Callable[..., Any])
STATUSES = click.Choice(["pending", "running", "completed", "failed", "cancelled"])


def api_command(func: F) -> F:
    """--url, --token and --json, a Client for the command, and API errors as one line and an exit code."""

    # Unset, the Client takes JETDAG_URL / JETDAG_TOKEN (shared.settings.ClientSettings).
    @click.option("--url", help="Gateway URL (default: JETDAG_URL, else http://127.0.0.1:8000).")
    @click.option("--token", help="Bearer token (default: JETDAG_TOKEN).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one JSON document.")
    @functools.wraps(func)
    def wrapper(url: str | None, token: str | None, as_json: bool, **kwargs: Any) -> None:
        try:
            with Client(url, token=token) as client:
                code = func(client, as_json, **kwargs)
        except WorkflowError as exc:
            for problem in exc.problems:
                err.print(problem, markup=False)
            raise SystemExit(EXIT_USAGE) from None
        except Invalid as exc:
            err.print(f"jetdag: {exc}", markup=False)
            raise SystemExit(EXIT_USAGE) from None
        except JetdagError as exc:
            err.print(f"jetdag: {exc}", markup=False)
            raise SystemExit(EXIT_REQUEST) from None
        raise SystemExit(code or 0)

    return wrapper  # type: ignore[return-value]


def _time(iso: str | None) -> str:
    return iso.replace("T", " ").removesuffix("Z")[:19] if iso else "-"


def _duration(start: str | None, end: str | None) -> str:
    if not start:
        return "-"
    begin = datetime.fromisoformat(start)
    finish = datetime.fromisoformat(end) if end else datetime.now(begin.tzinfo)
    seconds = max(0.0, (finish - begin).total_seconds())
    text = f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return text if end else f"{text}…"


def _progress(view: ExecutionView) -> str:
    p = view.progress
    return f"{p.completed}/{p.total}" + (f" ({p.failed} failed)" if p.failed else "")


def _jobs_table(jobs: list[JobView]) -> None:
    rows = [
        [
            j.id,
            j.type,
            j.status,
            str(j.attempts),
            j.worker_id or "-",
            _duration(j.started_at, j.completed_at) if j.started_at else "-",
            (j.error or "").splitlines()[0][:80] if j.error else "",
        ]
        for j in jobs
    ]
    print_table(["job", "type", "status", "attempts", "worker", "duration", "error"], rows)


def _aware_time(_: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time with a UTC offset (`2026-12-24T18:00:00+01:00`, `…Z`)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param=param) from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no UTC offset (add Z or +01:00)", param=param)
    return parsed


# --- executions --------------------------------------------------------------------------------------------


@click.command(short_help="Submit a workflow file; prints the execution id (--watch: follow it live).")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--watch", "follow", is_flag=True, help="Show live progress until it ends; exit 0/1/3 by outcome.")
@click.option("--parallelism", type=click.IntRange(min=1), help="Override the file's parallelism.")
@click.option("--workflow-id", help="Override the file's workflowId.")
@click.option("--idempotency-key", help="Send Idempotency-Key: a retried submit never creates a second execution.")
@click.option("--at", "run_at", callback=_aware_time, help="Start it at this ISO time (with a UTC offset or Z).")
@click.option("--delay", "delay_s", type=click.FloatRange(min=0), help="Start it this many seconds from now.")
@click.option("--priority", type=click.IntRange(1, 5), help="The execution's priority, 1 (highest) to 5.")
@api_command
def submit(
    client: Client,
    as_json: bool,
    *,
    file: Path,
    follow: bool,
    parallelism: int | None,
    workflow_id: str | None,
    idempotency_key: str | None,
    run_at: datetime | None,
    delay_s: float | None,
    priority: int | None,
) -> int:
    """Check FILE locally (YAML or JSON workflow), submit it and print the execution id. With --at or
    --delay it is persisted now and starts later (pending until then)."""
    run = client.submit(
        file,
        parallelism=parallelism,
        workflow_id=workflow_id,
        idempotency_key=idempotency_key,
        run_at=run_at,
        delay_s=delay_s,
        priority=priority,
    )
    if as_json and not follow:
        print_json(run)
        return 0
    if follow:
        if as_json:
            # One JSON document: the execution as it ended, without the id and progress lines before it.
            code = watch_execution(client, run.execution_id, quiet=True)
            print_json(client.get(run.execution_id))
            return code
        print(run.execution_id, flush=True)
        return watch_execution(client, run.execution_id)
    print(run.execution_id)
    return 0


@click.command(short_help="Follow an execution live until it ends (exit 0 completed, 1 failed, 3 cancelled).")
@click.argument("execution_id")
@api_command
def watch(client: Client, as_json: bool, execution_id: str) -> int:
    """Show the live progress of EXECUTION_ID; Ctrl-C stops the watching, not the execution."""
    code = watch_execution(client, execution_id, quiet=as_json)
    if as_json:
        print_json(client.get(execution_id))
    return code


@click.command(short_help="An execution's state, progress and jobs.")
@click.argument("execution_id")
@api_command
def status(client: Client, as_json: bool, execution_id: str) -> int:
    """Status, progress, timing and error of EXECUTION_ID, then a table of its jobs."""
    view = client.get(execution_id)
    jobs = client.jobs(execution_id)
    if as_json:
        print_json({"execution": view, "jobs": jobs})
        return 0
    p = view.progress
    facts = [
        ("execution", view.execution_id),
        ("workflow", view.workflow_id),
        ("status", view.status),
        ("round", str(view.round)),
        ("started", _time(view.started_at)),
        ("duration", _duration(view.started_at, view.completed_at)),
        ("progress", f"{p.completed}/{p.total} completed, {p.failed} failed, {p.running} running, {p.queued} queued"),
    ]
    if view.paused:
        facts.append(("paused", f"since {_time(view.paused_at)} (jetdag resume {view.execution_id})"))
    if view.error:
        facts.append(("error", view.error))
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        out.print(f"{key:<{width}}  {value}", markup=False, highlight=False)
    out.print()
    _jobs_table(jobs)
    return exit_code(view.status) if view.status in ("failed", "cancelled") else 0


@click.command(short_help="The jobs of an execution: status, attempts, worker, duration, error.")
@click.argument("execution_id")
@api_command
def jobs(client: Client, as_json: bool, execution_id: str) -> int:
    """Every job of EXECUTION_ID in submission order."""
    found = client.jobs(execution_id)
    if as_json:
        print_json(found)
    else:
        _jobs_table(found)
    return 0


@click.command(name="ls", short_help="Executions, newest first.")
@click.option("--status", "status_", type=STATUSES, help="Only executions in this status.")
@click.option("--workflow", help="Only executions of this workflowId.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many.")
@api_command
def ls(client: Client, as_json: bool, status_: str | None, workflow: str | None, limit: int) -> int:
    """List executions, newest first (following the API's cursor as far as --limit needs)."""
    listing = client.list(status=cast(ExecutionStatus | None, status_), workflow_id=workflow, page_size=min(limit, 500))
    found = list(islice(listing, limit))
    if as_json:
        print_json(found)
        return 0
    rows = [
        [
            e.execution_id,
            e.workflow_id,
            e.status,
            _progress(e),
            _time(e.started_at),
            _duration(e.started_at, e.completed_at),
        ]
        for e in found
    ]
    print_table(["execution", "workflow", "status", "completed", "started", "duration"], rows)
    return 0


@click.command(short_help="Cancel a running execution.")
@click.argument("execution_id")
@api_command
def cancel(client: Client, as_json: bool, execution_id: str) -> int:
    """Cancel EXECUTION_ID: queued jobs are withdrawn, running handlers stopped."""
    done = client.cancel(execution_id)
    print_json(done) if as_json else out.print(f"{done.execution_id} {done.status}")
    return 0


@click.command(short_help="Hold an execution's jobs that have not started (running ones finish).")
@click.argument("execution_id")
@api_command
def pause(client: Client, as_json: bool, execution_id: str) -> int:
    """Pause EXECUTION_ID: queued jobs no worker started are withdrawn, nothing new is dispatched until
    `jetdag resume`. Idempotent. (`jetdag queue pause` pauses every execution's delivery instead.)"""
    held = client.pause_execution(execution_id)
    print_json(held) if as_json else out.print(f"{held.execution_id} {held.status} (paused)", markup=False)
    return 0


@click.command(short_help="Release a paused execution.")
@click.argument("execution_id")
@api_command
def resume(client: Client, as_json: bool, execution_id: str) -> int:
    """Resume EXECUTION_ID: what the pause held is dispatched again. Idempotent."""
    released = client.resume_execution(execution_id)
    print_json(released) if as_json else out.print(f"{released.execution_id} {released.status}", markup=False)
    return 0


@click.command(short_help="Re-run what did not complete of a failed or cancelled execution.")
@click.argument("execution_id")
@click.option("--watch", "follow", is_flag=True, help="Then follow it live (exit code by its outcome).")
@api_command
def retry(client: Client, as_json: bool, execution_id: str, follow: bool) -> int:
    """Start a new round of EXECUTION_ID from its latest checkpoint."""
    again = client.retry(execution_id)
    if follow:
        return watch_execution(client, execution_id)
    print_json(again) if as_json else out.print(f"{again.execution_id} {again.status} (retried)")
    return 0


@click.command(short_help="Print live events over HTTP (SSE), like `nats sub` on the event stream.")
@click.argument("execution_id", required=False)
@click.option("--kinds", help="Comma-separated kinds (completed,failed,jobs,queue,…); only without EXECUTION_ID.")
@click.option("--since", "since", type=click.IntRange(min=0), help="Start after this event id (Last-Event-ID).")
@api_command
def events(client: Client, as_json: bool, execution_id: str | None, kinds: str | None, since: int | None) -> int:
    """Every event of EXECUTION_ID from its first until it ends, or of every execution from now on.
    --json prints one JSON document per line: {"id", "kind", "data"}."""
    if kinds and execution_id:
        raise click.UsageError("--kinds filters the stream of every execution; leave out EXECUTION_ID")
    wanted = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    try:
        for event in client.events(execution_id, kinds=wanted, last_event_id=since):
            data = msgspec.json.encode(event.payload)
            if as_json:
                line = b'{"id":%d,"kind":%s,"data":%s}' % (event.id, msgspec.json.encode(event.kind), data)
                sys.stdout.write(line.decode() + "\n")
            else:
                sys.stdout.write(f"[#{event.id}] {event.kind:<10} {data.decode()}\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    return 0


# --- workers, queue, health --------------------------------------------------------------------------------


@click.command(short_help="Registered workers: status, load, capabilities.")
@api_command
def workers(client: Client, as_json: bool) -> int:
    """Every registered worker with its derived status."""
    found = client.workers()
    if as_json:
        print_json(found)
        return 0
    rows = [
        [
            w.worker_id,
            w.hostname,
            w.status,
            f"{w.current_load}/{w.max_concurrency}",
            ",".join(w.capabilities),
            _time(w.last_heartbeat),
        ]
        for w in found
    ]
    print_table(["worker", "host", "status", "load", "capabilities", "last heartbeat"], rows)
    for w in found:
        if w.problem:
            click.echo(f"{w.worker_id}: {w.problem}")
    return 0


@click.group(short_help="Job queue: stats, pause, resume.")
def queue() -> None:
    """The job queue: counts, and pausing delivery to workers (running jobs finish)."""


def _pause_rows(pauses: list[QueuePause]) -> None:
    rows = [
        [describe(p), _time(p.until) if p.until else "on resume", p.reason or "", _time(p.paused_at)] for p in pauses
    ]
    print_table(["paused", "ends", "reason", "since"], rows)


@queue.command(name="stats", short_help="Waiting, active, completed, failed, delayed, paused jobs; the pauses.")
@api_command
def queue_stats(client: Client, as_json: bool) -> int:
    """Job counts of the queue, and the pauses in effect."""
    reply = client.queue_stats()
    if as_json:
        print_json(reply)
        return 0
    stats = msgspec.structs.asdict(reply.stats)
    print_table(["counter", "jobs"], [[k, str(v)] for k, v in stats.items()])
    if reply.pauses:
        _pause_rows(reply.pauses)
    out.print("paused" if reply.is_paused else "delivering", markup=False)
    return 0


@queue.command(name="pause", short_help="Stop delivering jobs: all, or one capability's or type's (idempotent).")
@click.option("--until", "until", callback=_aware_time, help="End the pause by itself at this ISO time (with Z).")
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    help="End the pause by itself after this many seconds.",
)
@click.option("--capability", help="Pause only the jobs needing this capability.")
@click.option("--type", "job_type", help="Pause only the jobs of this type.")
@click.option("--reason", help="Why (shown by queue stats, /health and the queue events).")
@api_command
def queue_pause(
    client: Client,
    as_json: bool,
    *,
    until: datetime | None,
    duration_s: float | None,
    capability: str | None,
    job_type: str | None,
    reason: str | None,
) -> int:
    """Pause delivery to workers (running jobs finish); it survives restarts. Without options: everything, until
    `jetdag queue resume`."""
    reply = client.pause(until=until, duration_s=duration_s, capability=capability, job_type=job_type, reason=reason)
    print_json(reply) if as_json else out.print(reply.message, markup=False)
    return 0


@queue.command(name="resume", short_help="Deliver jobs again: end every pause, or one scope's (idempotent).")
@click.option("--capability", help="End only the pause of this capability (with --type: of that pair).")
@click.option("--type", "job_type", help="End only the pause of this job type.")
@api_command
def queue_resume(client: Client, as_json: bool, *, capability: str | None, job_type: str | None) -> int:
    """Resume delivery: every pause ends, or only the one of exactly that capability and/or type."""
    reply = client.resume(capability=capability, job_type=job_type)
    print_json(reply) if as_json else out.print(reply.message, markup=False)
    return 0


# --- schedules ---------------------------------------------------------------------------------------------


@click.group(short_help="Schedules: executions on a cron expression or every N seconds.")
def schedules() -> None:
    """Schedules run a workflow file on a cron expression (5 fields, in a time zone) or every N seconds."""


def _schedule_rows(found: list[ScheduleView]) -> None:
    rows = [
        [
            s.schedule_id,
            s.cron or f"every {s.every_s:g}s",
            s.timezone or ("UTC" if s.cron else "-"),
            "paused" if s.paused else "active",
            _time(s.next_runs[0]) if s.next_runs else "-",
            (s.last_run.execution_id or f"skipped: {s.last_run.skipped}") if s.last_run else "-",
            str(s.fired),
        ]
        for s in found
    ]
    print_table(["schedule", "cadence", "zone", "state", "next run (UTC)", "last run", "runs"], rows)


@schedules.command(name="create", short_help="Create a schedule that runs FILE.")
@click.argument("schedule_id")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--cron", help="5-field cron expression, e.g. '0 3 * * *' (or @hourly, @daily, …).")
@click.option("--every", "every_s", type=click.FloatRange(min=1), help="Instead of --cron: every N seconds.")
@click.option("--timezone", help="IANA time zone the cron expression is read in (default UTC).")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "allow", "cancel-previous"]),
    default="skip",
    show_default=True,
    help="A tick while the previous run is open: skip it, run anyway, or cancel the previous run.",
)
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--no-catch-up", "no_catch_up", is_flag=True, help="Skip a tick missed while no scheduler ran.")
@api_command
def schedules_create(
    client: Client,
    as_json: bool,
    *,
    schedule_id: str,
    file: Path,
    cron: str | None,
    every_s: float | None,
    timezone: str | None,
    overlap: str,
    paused: bool,
    no_catch_up: bool,
) -> int:
    """Create SCHEDULE_ID, running the workflow FILE on --cron or --every (checked locally first)."""
    made = client.create_schedule(
        schedule_id,
        file,
        cron=cron,
        every_s=every_s,
        timezone=timezone,
        overlap=cast(Overlap, overlap),
        paused=paused,
        catch_up=not no_catch_up,
    )
    if as_json:
        print_json(made)
    else:
        nxt = _time(made.next_runs[0]) if made.next_runs else "- (paused)"
        out.print(f"{made.schedule_id} created; next run {nxt} UTC", markup=False)
    return 0


@schedules.command(name="ls", short_help="Every schedule: cadence, state, next and last run.")
@api_command
def schedules_ls(client: Client, as_json: bool) -> int:
    """Every schedule, by id."""
    found = client.schedules()
    print_json(found) if as_json else _schedule_rows(found)
    return 0


@schedules.command(name="show", short_help="One schedule, its next runs and its recent runs.")
@click.argument("schedule_id")
@api_command
def schedules_show(client: Client, as_json: bool, schedule_id: str) -> int:
    """SCHEDULE_ID's definition, its next 5 ticks and its last runs."""
    found = client.schedule(schedule_id)
    recent = client.schedule_runs(schedule_id, limit=10)
    if as_json:
        print_json({"schedule": found, "runs": recent})
        return 0
    _schedule_rows([found])
    out.print(f"next runs (UTC): {', '.join(_time(t) for t in found.next_runs) or '- (paused)'}", markup=False)
    out.print()
    _run_rows(recent)
    return 0


def _run_rows(found: list[ScheduleRunView]) -> None:
    rows = [[_time(r.tick), r.trigger, r.execution_id or "-", r.status or "-", r.skipped or ""] for r in found]
    print_table(["tick (UTC)", "trigger", "execution", "status", "skipped"], rows)


@schedules.command(name="runs", short_help="The executions a schedule created, newest first.")
@click.argument("schedule_id")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@api_command
def schedules_runs(client: Client, as_json: bool, schedule_id: str, limit: int) -> int:
    """The last runs of SCHEDULE_ID with their executions' status now."""
    found = client.schedule_runs(schedule_id, limit=limit)
    print_json(found) if as_json else _run_rows(found)
    return 0


@schedules.command(name="pause", short_help="Stop a schedule's ticks until resumed.")
@click.argument("schedule_id")
@api_command
def schedules_pause(client: Client, as_json: bool, schedule_id: str) -> int:
    """Pause SCHEDULE_ID (ticks while paused are never caught up)."""
    found = client.pause_schedule(schedule_id)
    print_json(found) if as_json else out.print(f"{found.schedule_id} paused", markup=False)
    return 0


@schedules.command(name="resume", short_help="Resume a paused schedule from its next tick.")
@click.argument("schedule_id")
@api_command
def schedules_resume(client: Client, as_json: bool, schedule_id: str) -> int:
    """Resume SCHEDULE_ID."""
    found = client.resume_schedule(schedule_id)
    nxt = _time(found.next_runs[0]) if found.next_runs else "-"
    print_json(found) if as_json else out.print(f"{found.schedule_id} resumed; next run {nxt} UTC", markup=False)
    return 0


@schedules.command(name="trigger", short_help="Run a schedule's workflow now.")
@click.argument("schedule_id")
@api_command
def schedules_trigger(client: Client, as_json: bool, schedule_id: str) -> int:
    """Run SCHEDULE_ID now; prints the execution id."""
    run = client.trigger_schedule(schedule_id)
    print_json(run) if as_json else print(run.execution_id)
    return 0


@schedules.command(name="delete", short_help="Delete a schedule (its executions stay).")
@click.argument("schedule_id")
@api_command
def schedules_delete(client: Client, as_json: bool, schedule_id: str) -> int:
    """Delete SCHEDULE_ID."""
    done = client.delete_schedule(schedule_id)
    print_json(done) if as_json else out.print(done.message, markup=False)
    return 0


# --- rate limits -------------------------------------------------------------------------------------------


@click.group(name="rate-limits", short_help="Rate limits on job starts, per key or per job type.")
def rate_limits() -> None:
    """Configured rate limits: at most LIMIT job starts per PERIOD seconds under a key, cluster-wide. The key
    type:<jobType> limits every job of that type."""


def _limit_rows(found: list[RateLimitView]) -> None:
    rows = [[r.key, str(r.limit), f"{r.period_s:g} s", str(r.recent_starts)] for r in found]
    print_table(["key", "limit", "per", "recent starts"], rows)


@rate_limits.command(name="ls", short_help="Every configured rate limit.")
@api_command
def rate_limits_ls(client: Client, as_json: bool) -> int:
    found = client.rate_limits()
    print_json(found) if as_json else _limit_rows(found)
    return 0


@rate_limits.command(name="set", short_help="Configure a rate limit (admin).")
@click.argument("key")
@click.option("--limit", type=click.IntRange(min=1), required=True, help="Starts allowed per period.")
@click.option("--period", "period_s", type=click.FloatRange(min=0, min_open=True), required=True, help="Seconds.")
@api_command
def rate_limits_set(client: Client, as_json: bool, key: str, limit: int, period_s: float) -> int:
    """At most --limit starts per --period seconds under KEY (type:<jobType> for a job type)."""
    done = client.set_rate_limit(key, limit, period_s)
    print_json(done) if as_json else _limit_rows([done])
    return 0


@rate_limits.command(name="delete", short_help="Remove a configured rate limit (admin).")
@click.argument("key")
@api_command
def rate_limits_delete(client: Client, as_json: bool, key: str) -> int:
    done = client.delete_rate_limit(key)
    print_json(done) if as_json else out.print(f"rate limit {done.key} removed", markup=False)
    return 0


@click.command(short_help="Health of every component (exit 1 when unhealthy).")
@api_command
def health(client: Client, as_json: bool) -> int:
    """The gateway's checks of the job stream, the registry, the KV buckets and the scheduler."""
    report = client.health()
    if as_json:
        print_json(report)
    else:
        # The API's names (workerManager, stateStore), as GET /health spells them.
        components: dict[str, dict[str, Any]] = msgspec.to_builtins(report.components)
        rows = [
            [name, "ok" if c["healthy"] else "FAILED", f"{c['latencyMs']:.1f} ms", c.get("error") or ""]
            for name, c in components.items()
        ]
        print_table(["component", "health", "latency", "error"], rows)
        w = report.workers
        out.print(
            f"workers: {w.total} ({w.idle} idle, {w.busy} busy, {w.unhealthy} unhealthy), "
            f"{w.utilization_percent:.0f}% utilised",
            markup=False,
        )
    return 0 if report.healthy else 1


COMMANDS = [
    submit,
    watch,
    status,
    jobs,
    ls,
    cancel,
    pause,
    resume,
    retry,
    events,
    workers,
    queue,
    schedules,
    rate_limits,
    health,
]
