"""Schedules: executions created on a cron expression or every N seconds (`POST /schedules`).

A schedule lives in the schedules bucket: `<id>` holds its definition (written once), `<id>.state` whether it is
paused, the last tick it handled and its recent runs. Every replica follows the bucket; the replica that owns
the shard a schedule's id hashes to (the same shards and leases as executions) keeps a timer for its next tick.

The ticks are fired by that timer, not by the server's own message schedules (`Nats-Schedule`): those take
6-field cron only, always fire a missed tick once after a restart (`catchUp: false` could not be had), carry no
tick time in the fired message and need nats-server 2.14 for cron and time zones. Here croniter computes both
the next runs GET /schedules/{id} shows and the ticks that fire, with the schedule's own catch-up and overlap
rules (shared/schedules.py).

A tick fires exactly once: its execution is submitted with an Idempotency-Key made of the schedule and the tick's
time (shared.keys.schedule_run_key), then recorded in the state by compare-and-set. Two replicas that both fire
a tick (a shard changing hands) create one execution, and only one of them records it; an owner that dies
between the two steps leaves the tick unrecorded, and the next owner fires it again under the same key, which
returns the execution already created.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.commands import Conflict, Endpoint, Invalid, NotFound, Unavailable
from shared.ids import check_id
from shared.jetstream import MAX_MESSAGE_BYTES, kv_entries
from shared.keys import execution_key, kv_subject, schedule_key, schedule_run_key, schedule_state_key
from shared.kvfollow import watch_bucket
from shared.logging import get_logger
from shared.messages import (
    FINAL_EXECUTION_STATES,
    MAX_SCHEDULE_RUNS,
    ExecuteCommand,
    ExecuteReply,
    ExecutionRecord,
    ExecutionRef,
    ExecutionStatus,
    RunTrigger,
    ScheduleList,
    ScheduleRecord,
    ScheduleRef,
    ScheduleReply,
    ScheduleRequest,
    ScheduleRun,
    ScheduleRuns,
    ScheduleRunView,
    ScheduleState,
    ScheduleView,
)
from shared.pipeline import JetStreamError, Pipeline
from shared.schedules import Cadence, cadence_of, check_workflow, plan
from shared.subjects import Names
from shared.timeutil import iso_from_ms, ms_from_iso, now_ms

from .commands import Commands
from .dag import validate
from .recovery import shard_of
from .shards import ShardManager

__all__ = ["Schedules"]

log = get_logger(__name__)

_encode = msgspec.json.Encoder().encode
_record_decoder = msgspec.json.Decoder(ScheduleRecord)
_state_decoder = msgspec.json.Decoder(ScheduleState)
_execution_decoder = msgspec.json.Decoder(ExecutionRecord)
MAX_DEFINITION_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
"""A definition is one KV value: its workflow may be at most about this large as JSON."""
LOOK_AGAIN_S = 60.0
"""A timer waits at most this long before the next tick is computed again (the wall clock may have moved)."""
RESYNC_S = 30.0
"""How often the whole bucket is read again, in case the watch missed an update."""
UPCOMING = 5
FIRE_ATTEMPTS = (1.0, 2.0, 4.0)
"""Waits between attempts to submit a tick's execution while the scheduler answers 503 (at capacity)."""


@dataclass
class _Known:
    record: ScheduleRecord
    cadence: Cadence
    state: ScheduleState | None = None
    state_revision: int = 0
    timer: asyncio.TimerHandle | None = None
    firing: bool = False
    task: asyncio.Task[None] | None = None
    mine: bool = False
    """Whether this replica owned the schedule's shard when it last looked."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _state_default(record: ScheduleRecord) -> ScheduleState:
    return ScheduleState(paused=record.spec.paused, since=record.created_at)


def _fingerprint(spec: ScheduleRequest) -> str:
    return hashlib.sha256(_encode(msgspec.structs.replace(spec, paused=False))).hexdigest()


@dataclass
class Schedules:
    js: JetStreamContext
    pipeline: Pipeline
    names: Names
    commands: Commands
    manager: ShardManager
    grace_s: float
    max_jobs: int
    known: dict[str, _Known] = field(default_factory=dict)
    stopping: bool = False

    @property
    def bucket(self) -> str:
        return self.names.schedules_bucket

    def endpoints(self) -> dict[str, Endpoint]:
        return {
            "schedules.create": Endpoint(ScheduleRequest, self.create),
            "schedules.list": Endpoint(ScheduleRef, self.list),
            "schedules.get": Endpoint(ScheduleRef, self.get),
            "schedules.delete": Endpoint(ScheduleRef, self.delete),
            "schedules.pause": Endpoint(ScheduleRef, self.pause),
            "schedules.resume": Endpoint(ScheduleRef, self.resume),
            "schedules.trigger": Endpoint(ScheduleRef, self.trigger),
            "schedules.runs": Endpoint(ScheduleRef, self.runs),
        }

    # --- reading and writing the bucket ----------------------------------------------------------------------

    async def _read(self, schedule_id: str) -> tuple[ScheduleRecord, ScheduleState, int]:
        """The definition, the state and the state's revision (0: not written yet); NotFound if none."""
        check_id("scheduleId", schedule_id)
        found, state = await asyncio.gather(
            self.pipeline.kv_get(self.bucket, schedule_key(schedule_id)),
            self.pipeline.kv_get(self.bucket, schedule_state_key(schedule_id)),
        )
        if found is None:
            raise NotFound(f"schedule {schedule_id} does not exist")
        record = _record_decoder.decode(found[0])
        if state is None:
            return record, _state_default(record), 0
        return record, _state_decoder.decode(state[0]), state[1]

    async def _write_state(self, schedule_id: str, state: ScheduleState, revision: int) -> int:
        revision = await self.pipeline.kv_write(
            self.bucket, schedule_state_key(schedule_id), _encode(state), last=revision
        )
        known = self.known.get(schedule_id)
        if known is not None and revision > known.state_revision:  # read-your-writes, before the watch says so
            known.state, known.state_revision = state, revision
        return revision

    async def _change_state(
        self, schedule_id: str, change: type[_Change] | _Change
    ) -> tuple[ScheduleRecord, ScheduleState]:
        """Read the state, change it, write it back by compare-and-set; again from the read when another writer
        came first."""
        for _ in range(10):
            record, state, revision = await self._read(schedule_id)
            new = change.apply(state) if isinstance(change, _Change) else change().apply(state)
            if new is None:
                return record, state
            try:
                await self._write_state(schedule_id, new, revision)
                return record, new
            except JetStreamError as exc:
                if not exc.wrong_last_sequence:
                    raise
        raise Unavailable(f"schedule {schedule_id} is being changed by others right now; try again")

    def _view(self, record: ScheduleRecord, state: ScheduleState, *, with_workflow: bool) -> ScheduleView:
        spec = record.spec
        cadence = cadence_of(spec, ms_from_iso(record.created_at))
        now = now_ms()
        upcoming = [] if state.paused else cadence.upcoming(now, UPCOMING)
        return ScheduleView(
            schedule_id=spec.schedule_id,
            cron=spec.cron,
            every_s=spec.every_s,
            timezone=spec.timezone,
            overlap=spec.overlap,
            catch_up=spec.catch_up,
            paused=state.paused,
            created_at=record.created_at,
            workflow_id=spec.workflow.workflow_id,
            job_count=len(spec.workflow.jobs),
            next_runs=[iso_from_ms(t) for t in upcoming],
            last_tick=state.last_tick,
            last_run=state.runs[-1] if state.runs else None,
            fired=state.fired,
            skipped=state.skipped,
            workflow=spec.workflow if with_workflow else None,
        )

    # --- commands ---------------------------------------------------------------------------------------------

    async def create(self, spec: ScheduleRequest) -> ScheduleReply:
        check_id("scheduleId", spec.schedule_id)
        now = now_ms()
        cadence_of(spec, now)
        check_workflow(spec)
        try:
            validate(spec.workflow, self.max_jobs, self.commands.max_types)
        except Invalid as exc:
            raise Invalid(f"workflow: {exc.message}") from None
        record = ScheduleRecord(spec=spec, created_at=iso_from_ms(now), fingerprint=_fingerprint(spec))
        data = _encode(record)
        if len(data) > MAX_DEFINITION_BYTES:
            raise Invalid(f"workflow: a schedule's workflow must encode to at most {MAX_DEFINITION_BYTES} bytes")
        try:
            await self.pipeline.kv_write(self.bucket, schedule_key(spec.schedule_id), data, last=0)
        except JetStreamError as exc:
            if not exc.wrong_last_sequence:
                raise
            existing, state, _ = await self._read(spec.schedule_id)
            if existing.fingerprint != record.fingerprint:
                raise Conflict(
                    f"schedule {spec.schedule_id} already exists with another definition; delete it first"
                ) from None
            return ScheduleReply(schedule=self._view(existing, state, with_workflow=True), created=False)
        state = _state_default(record)
        # A state left by a schedule of the same id deleted midway is replaced: this one starts afresh.
        await self.pipeline.kv_write(self.bucket, schedule_state_key(spec.schedule_id), _encode(state), last=None)
        self._learn(spec.schedule_id, record, None, 0)
        log.info("schedule created", scheduleId=spec.schedule_id, cron=spec.cron, everyS=spec.every_s)
        return ScheduleReply(schedule=self._view(record, state, with_workflow=True))

    async def list(self, _: ScheduleRef) -> ScheduleList:
        entries = await kv_entries(self.js, self.bucket)
        records = {e.key: _record_decoder.decode(e.value) for e in entries if "." not in e.key}
        states = {e.key[: -len(".state")]: _state_decoder.decode(e.value) for e in entries if e.key.endswith(".state")}
        views = [
            self._view(record, states.get(key) or _state_default(record), with_workflow=False)
            for key, record in sorted(records.items())
        ]
        return ScheduleList(schedules=views)

    async def get(self, ref: ScheduleRef) -> ScheduleReply:
        record, state, _ = await self._read(ref.schedule_id)
        return ScheduleReply(schedule=self._view(record, state, with_workflow=True), created=False)

    async def delete(self, ref: ScheduleRef) -> ScheduleReply:
        record, state, _ = await self._read(ref.schedule_id)
        for key in (schedule_state_key(ref.schedule_id), schedule_key(ref.schedule_id)):
            headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
            await self.pipeline.publish(kv_subject(self.bucket, key), b"", headers)
        self._forget(ref.schedule_id)
        log.info("schedule deleted", scheduleId=ref.schedule_id)
        return ScheduleReply(schedule=self._view(record, state, with_workflow=False), created=False)

    async def pause(self, ref: ScheduleRef) -> ScheduleReply:
        record, state = await self._change_state(ref.schedule_id, _Pause)
        return ScheduleReply(schedule=self._view(record, state, with_workflow=False), created=False)

    async def resume(self, ref: ScheduleRef) -> ScheduleReply:
        record, state = await self._change_state(ref.schedule_id, _Resume)
        return ScheduleReply(schedule=self._view(record, state, with_workflow=False), created=False)

    async def trigger(self, ref: ScheduleRef) -> ExecuteReply:
        """A run now, whatever the cadence (also while paused); the overlap rule holds as for a tick."""
        record, _, _ = await self._read(ref.schedule_id)
        now = now_ms()
        run, reply = await self._run(record, now, "manual")
        await self._change_state(ref.schedule_id, _Record(run, tick_ms=None))
        if reply is None:
            raise Conflict(f"schedule {ref.schedule_id}: {run.skipped}")
        return reply

    async def runs(self, ref: ScheduleRef) -> ScheduleRuns:
        _, state, _ = await self._read(ref.schedule_id)
        limit = max(1, min(ref.limit, MAX_SCHEDULE_RUNS))
        recent = list(reversed(state.runs))[:limit]
        statuses = await asyncio.gather(*(self._status(run.execution_id) for run in recent))
        views = [
            ScheduleRunView(**msgspec.structs.asdict(run), status=status)
            for run, status in zip(recent, statuses, strict=True)
        ]
        return ScheduleRuns(schedule_id=ref.schedule_id, runs=views)

    async def _status(self, execution_id: str | None) -> ExecutionStatus | None:
        if execution_id is None:
            return None
        found = self.commands.index.get(execution_id)
        if found is not None:
            return found[0].status
        entry = await self.pipeline.kv_get(self.names.executions_bucket, execution_key(execution_id))
        return None if entry is None else _execution_decoder.decode(entry[0]).status

    # --- running a tick ---------------------------------------------------------------------------------------

    async def _run(
        self, record: ScheduleRecord, tick_ms: int, trigger: RunTrigger
    ) -> tuple[ScheduleRun, ExecuteReply | None]:
        """Submit the run of one tick, as the overlap rule allows; what happened, and the execution if one."""
        spec = record.spec
        schedule_id = spec.schedule_id
        at = iso_from_ms(now_ms())
        tick = iso_from_ms(tick_ms)
        manual = trigger == "manual"
        if trigger == "missed":
            why = "missed: no scheduler ran at its time (catchUp is false)"
            return ScheduleRun(tick=tick, at=at, trigger="missed", skipped=why), None
        _, state, _ = await self._read(schedule_id)
        previous = next((r.execution_id for r in reversed(state.runs) if r.execution_id), None)
        status = await self._status(previous)
        if previous is not None and status is not None and status not in FINAL_EXECUTION_STATES:
            if spec.overlap == "skip":
                why = f"the previous run {previous} is still {status} (overlap: skip)"
                return ScheduleRun(tick=tick, at=at, trigger=trigger, skipped=why), None
            if spec.overlap == "cancel-previous":
                with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile
                    await self.commands.cancel(ExecutionRef(execution_id=previous))
        key = None if manual else schedule_run_key(schedule_id, ms_from_iso(record.created_at), tick_ms)
        command = ExecuteCommand(request=spec.workflow, idempotency_key=key)
        for wait in (*FIRE_ATTEMPTS, None):
            try:
                reply = await self.commands.execute(command)
                break
            except Unavailable as exc:
                if wait is None or manual:
                    raise
                log.warning("schedule run not submitted; retrying", scheduleId=schedule_id, error=exc.message)
                await asyncio.sleep(wait)
            except (Invalid, Conflict) as exc:
                why = f"not submitted: {exc.message}"
                if manual:
                    raise
                return ScheduleRun(tick=tick, at=at, trigger=trigger, skipped=why), None
        execution_id = reply.execution.execution_id
        log.info("schedule fired", scheduleId=schedule_id, tick=tick, trigger=trigger, executionId=execution_id)
        return ScheduleRun(tick=tick, at=at, trigger=trigger, execution_id=execution_id), reply

    async def _fire(self, schedule_id: str, tick_ms: int, trigger: RunTrigger) -> None:
        known = self.known.get(schedule_id)
        if known is None:
            return
        async with known.lock:
            try:
                record, state, revision = await self._read(schedule_id)
            except NotFound:
                return
            if revision > known.state_revision:
                known.state, known.state_revision = state, revision
            handled = ms_from_iso(state.last_tick) if state.last_tick else 0
            if state.paused or handled >= tick_ms or record.created_at != known.record.created_at:
                return  # paused, deleted and made again, or fired already (another replica, a moment ago)
            try:
                run, _ = await self._run(record, tick_ms, trigger)
            except Exception as exc:
                log.warning("schedule run failed", scheduleId=schedule_id, error=repr(exc))
                why = f"not submitted: {exc}"
                run = ScheduleRun(tick=iso_from_ms(tick_ms), at=iso_from_ms(now_ms()), trigger="tick", skipped=why)
            with contextlib.suppress(NotFound):
                await self._change_state(schedule_id, _Record(run, tick_ms=tick_ms))

    # --- following the bucket, arming the timers --------------------------------------------------------------

    def _learn(
        self, schedule_id: str, record: ScheduleRecord | None, state: ScheduleState | None, revision: int
    ) -> None:
        known = self.known.get(schedule_id)
        if record is not None and (known is None or known.record.created_at != record.created_at):
            if known is not None:
                self._disarm(known)
            try:
                cadence = cadence_of(record.spec, ms_from_iso(record.created_at))
            except Invalid as exc:
                log.error("stored schedule unreadable", scheduleId=schedule_id, error=exc.message)
                return
            known = self.known[schedule_id] = _Known(record, cadence)
        if known is None:
            return
        if state is not None and revision > known.state_revision:
            known.state, known.state_revision = state, revision
        self._arm(schedule_id, known)

    def _forget(self, schedule_id: str) -> None:
        known = self.known.pop(schedule_id, None)
        if known is not None:
            self._disarm(known)

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject[len(f"$KV.{self.bucket}.") :]
        deleted = (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")
        schedule_id, _, part = key.partition(".")
        try:
            if part == "":
                if deleted:
                    self._forget(schedule_id)
                else:
                    self._learn(schedule_id, _record_decoder.decode(msg.data), None, 0)
            elif part == "state" and not deleted:
                self._learn(schedule_id, None, _state_decoder.decode(msg.data), msg.metadata.sequence.stream)
        except msgspec.DecodeError as exc:
            log.warning("unreadable schedule entry ignored", key=key, error=str(exc))

    async def _resync(self) -> None:
        entries = await kv_entries(self.js, self.bucket)
        ids = set()
        for e in sorted(entries, key=lambda e: "." in e.key):  # definitions first, then states
            schedule_id, _, part = e.key.partition(".")
            if part == "":
                ids.add(schedule_id)
                self._learn(schedule_id, _record_decoder.decode(e.value), None, 0)
            elif part == "state":
                self._learn(schedule_id, None, _state_decoder.decode(e.value), e.revision)
        for schedule_id in set(self.known) - ids:
            self._forget(schedule_id)

    async def run(self) -> None:
        """Follow the bucket and keep the timers of the schedules of the shards this replica owns."""
        sub, _ = await watch_bucket(self.js, self.bucket, self._on_msg)
        last_resync = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping:
                if loop.time() - last_resync >= RESYNC_S:
                    try:
                        await self._resync()
                        last_resync = loop.time()
                    except Exception as exc:
                        log.warning("reading the schedules failed; retrying", error=repr(exc))
                # Shards come and go (a takeover, a rebalance): timers follow within a second.
                for schedule_id, known in list(self.known.items()):
                    if self._mine(schedule_id) != known.mine:
                        self._arm(schedule_id, known)
                await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def stop(self) -> None:
        self.stopping = True
        for known in self.known.values():
            self._disarm(known)

    def _mine(self, schedule_id: str) -> bool:
        return not self.stopping and shard_of(schedule_id, self.manager.shards) in self.manager.held

    def _disarm(self, known: _Known) -> None:
        if known.timer is not None:
            known.timer.cancel()
            known.timer = None

    def _arm(self, schedule_id: str, known: _Known) -> None:
        """(Re)compute what the schedule does now: fire its latest tick, or wait for the next one."""
        self._disarm(known)
        state = known.state or _state_default(known.record)
        known.mine = self._mine(schedule_id)
        if known.firing or state.paused or not known.mine:
            return
        handled = max(ms_from_iso(state.since), ms_from_iso(state.last_tick) if state.last_tick else 0)
        now = now_ms()
        decision = plan(
            known.cadence,
            handled_ms=handled,
            now_ms=now,
            grace_ms=int(self.grace_s * 1000),
            catch_up=known.record.spec.catch_up,
        )
        loop = asyncio.get_running_loop()
        if decision.fire is not None:
            known.firing = True
            tick_ms, trigger = decision.fire
            known.task = loop.create_task(
                self._fire_then_arm(schedule_id, known, tick_ms, trigger), name=f"schedule {schedule_id}"
            )
            return
        wait = min(max(0.0, (decision.next_ms - now) / 1000), LOOK_AGAIN_S)
        known.timer = loop.call_later(wait, self._arm, schedule_id, known)

    async def _fire_then_arm(self, schedule_id: str, known: _Known, tick_ms: int, trigger: RunTrigger) -> None:
        try:
            await self._fire(schedule_id, tick_ms, trigger)
        except Exception as exc:
            log.warning("schedule tick failed", scheduleId=schedule_id, error=repr(exc))
        finally:
            known.firing = False
            if self.known.get(schedule_id) is known:
                self._arm(schedule_id, known)


class _Change:
    def apply(self, state: ScheduleState) -> ScheduleState | None:
        """The new state (None: nothing to change)."""
        raise NotImplementedError


class _Pause(_Change):
    def apply(self, state: ScheduleState) -> ScheduleState | None:
        return None if state.paused else msgspec.structs.replace(state, paused=True)


class _Resume(_Change):
    def apply(self, state: ScheduleState) -> ScheduleState | None:
        # Ticks that fell while it was paused are not caught up: resuming starts from now.
        return msgspec.structs.replace(state, paused=False, since=iso_from_ms(now_ms())) if state.paused else None


@dataclass
class _Record(_Change):
    run: ScheduleRun
    tick_ms: int | None
    """The tick this run handled (None: a manual trigger, which handles no tick)."""

    def apply(self, state: ScheduleState) -> ScheduleState | None:
        if self.tick_ms is not None and state.last_tick and ms_from_iso(state.last_tick) >= self.tick_ms:
            return None  # recorded by another replica already
        runs = [*state.runs, self.run][-MAX_SCHEDULE_RUNS:]
        last_tick = state.last_tick if self.tick_ms is None else iso_from_ms(self.tick_ms)
        created = self.run.execution_id is not None
        return msgspec.structs.replace(
            state,
            runs=runs,
            last_tick=last_tick,
            fired=state.fired + created,
            skipped=state.skipped + (not created),
        )
