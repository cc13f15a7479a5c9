"""Which replica owns which executions: executions are spread over a fixed number of shards (by a hash of their
id), and each shard is owned by one replica at a time through a lease in the schedulers bucket.

A lease is a key with a TTL that its owner renews every round; its revision when taken is the owner's epoch,
written into the journal of every execution it adopts. Replicas keep a presence key too, and balance: each aims
at ceil(shards / live replicas), gives away what it holds beyond that, and takes free shards — or the shards of a
replica that is gone (nothing answers on its ping subject: its connection closed), without waiting for the
lease to expire. Correctness never rests on the lease: two replicas that both believe they own a shard cannot
both append to an execution's journal (see journal.py), and the loser lets go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext

from shared.jetstream import kv_entries
from shared.keys import LAYOUT_KEY, lease_key, replica_key
from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES, ReplicaPresence, SchedulerLayout, ShardLease
from shared.pipeline import JetStreamError, Pipeline
from shared.subjects import Names
from shared.timeutil import now_iso

from .index import ExecutionIndex
from .intake import LATER, Intake
from .lifecycle import Owned
from .recovery import adopt, resume, shard_of

__all__ = ["ShardManager", "read_layout"]

log = get_logger(__name__)

ADOPT_CONCURRENCY = 16
RELEASE_PER_ROUND = 2
_encode = msgspec.json.Encoder().encode


async def read_layout(pipeline: Pipeline, bucket: str, wanted: int) -> int:
    """The namespace's shard count: fixed by the first replica ever to start (a different setting later is
    ignored with a warning — executions are already placed by it)."""
    layout = _encode(SchedulerLayout(shards=wanted))
    try:
        await pipeline.kv_write(bucket, LAYOUT_KEY, layout, last=0)
        return wanted
    except JetStreamError as exc:
        if not exc.wrong_last_sequence:
            raise
    found = await pipeline.kv_get(bucket, LAYOUT_KEY)
    assert found is not None
    shards = msgspec.json.decode(found[0], type=SchedulerLayout).shards
    if shards != wanted:
        log.warning("shard count fixed by the namespace's first scheduler", shards=shards, setting=wanted)
    return shards


@dataclass
class Shard:
    n: int
    revision: int
    intake: Intake
    task: asyncio.Task[None] | None = None
    commands: Any = None
    adopting: bool = True


@dataclass
class ShardManager:
    nc: Client
    js: JetStreamContext
    pipeline: Pipeline
    names: Names
    index: ExecutionIndex
    shards: int
    lease_ttl_s: float
    ack_wait_s: float
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    round_s: float = 1.0
    owned: dict[str, Owned] = field(default_factory=dict)
    held: dict[int, Shard] = field(default_factory=dict)
    reloading: set[str] = field(default_factory=set)
    context: Any = None
    """The lifecycle.Context of this replica (set once built: it refers back to this manager)."""
    serve_commands: Callable[[int], Awaitable[Any]] | None = None
    """Subscribes the command subject of one shard; returns the subscription."""
    reports_done: int = 0
    """Reports handled by shards this replica has since given away."""
    stopping: bool = False
    owns_some: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def bucket(self) -> str:
        return self.names.schedulers_bucket

    def shard_of(self, execution_id: str) -> int:
        return shard_of(execution_id, self.shards)

    # --- routing --------------------------------------------------------------------------------------------

    def route(self, execution_id: str) -> Owned | Literal["later"] | None:
        """Where a report about `execution_id` goes in this replica."""
        owned = self.owned.get(execution_id)
        if owned is not None:
            return owned
        if execution_id in self.reloading:
            return LATER
        if self.index.open_record(execution_id) is not None:
            # Open but not in memory: being adopted, just ended (the index lags the record by milliseconds), or
            # its adoption failed and is being retried. Its reports wait.
            return LATER
        return None

    def on_gone(self, owned: Owned) -> None:
        if self.owned.get(owned.execution_id) is owned:
            del self.owned[owned.execution_id]

    async def on_reload(self, owned: Owned) -> None:
        """A step of unknown outcome: read the execution back from its journal (after a breath)."""
        execution_id = owned.execution_id
        self.reloading.add(execution_id)
        try:
            for delay in (0.2, 0.5, 1, 2, 4, 4, 4):
                await asyncio.sleep(delay)
                shard = self.held.get(owned.state.shard)
                if shard is None or self.stopping:
                    return
                try:
                    await self._adopt_one(execution_id, shard)
                    return
                except Exception as exc:
                    log.warning("reading an execution back failed; retrying", executionId=execution_id, error=repr(exc))
        finally:
            self.reloading.discard(execution_id)

    # --- the balance loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        sub = await self.nc.subscribe(self.names.scheduler_replica(self.replica_id), cb=self._on_ping)
        try:
            while not self.stopping:
                try:
                    await self._round()
                except Exception as exc:
                    log.warning("shard round failed", error=repr(exc))
                await asyncio.sleep(self.round_s)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_ping(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.respond(b"alive")

    async def _round(self) -> None:
        await self._announce()
        await self._renew()
        live = await self._live_replicas()
        target = math.ceil(self.shards / max(1, len(live)))
        leases = await self._leases()
        mine = sorted(self.held)
        if len(mine) > target:
            # Give away the ones another replica would prefer first (a stable spread: shard n prefers replica
            # n mod R in the sorted list of live replicas).
            rank = {r: i for i, r in enumerate(sorted(live))}
            me = rank.get(self.replica_id, 0)
            extra = sorted(mine, key=lambda n: (n % len(live) == me, n))[: len(mine) - target]
            for n in extra[:RELEASE_PER_ROUND]:
                await self.release(n)
            return
        if len(mine) >= target:
            return
        candidates = []
        for n in range(self.shards):
            if n in self.held:
                continue
            lease = leases.get(n)
            if lease is None or lease[0] is None:
                candidates.append((n, lease[1] if lease else 0))
            elif lease[0].owner not in live:
                candidates.append((n, lease[1]))
        rank = {r: i for i, r in enumerate(sorted(live))}
        me = rank.get(self.replica_id, 0)
        candidates.sort(key=lambda c: (c[0] % max(1, len(live)) != me, c[0]))
        for n, revision in candidates[: target - len(mine)]:
            await self.acquire(n, revision)

    async def _announce(self) -> None:
        presence = ReplicaPresence(
            replica_id=self.replica_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=now_iso(),
            shards=sorted(self.held),
        )
        headers = {"Nats-TTL": f"{int(self.lease_ttl_s)}s"}
        await self.pipeline.publish(f"$KV.{self.bucket}.{replica_key(self.replica_id)}", _encode(presence), headers)

    async def _live_replicas(self) -> set[str]:
        """Replicas with a presence key whose process is still connected (a killed one's key outlives it by a
        TTL; its closed connection shows at once)."""
        entries = await kv_entries(self.js, self.bucket, "replica.*")
        others = {msgspec.json.decode(e.value, type=ReplicaPresence).replica_id for e in entries} - {self.replica_id}
        gone = await asyncio.gather(*(self._gone(r) for r in others))
        return {r for r, dead in zip(others, gone, strict=True) if not dead} | {self.replica_id}

    async def _leases(self) -> dict[int, tuple[ShardLease | None, int]]:
        found = await asyncio.gather(*(self.pipeline.kv_entry(self.bucket, lease_key(n)) for n in range(self.shards)))
        out: dict[int, tuple[ShardLease | None, int]] = {}
        for n, entry in enumerate(found):
            if entry is not None:
                value, revision, _ = entry
                out[n] = (msgspec.json.decode(value, type=ShardLease) if value else None, revision)
        return out

    async def _gone(self, replica_id: str) -> bool:
        """True when nothing answers on the replica's ping subject: its connection to NATS is closed."""
        try:
            await self.nc.request(self.names.scheduler_replica(replica_id), b"", timeout=1.0)
        except NoRespondersError:
            return True
        except Exception:
            return False  # slow or frozen: its lease decides
        return False

    async def _write_lease(self, n: int, last: int) -> int:
        lease = ShardLease(owner=self.replica_id, since=now_iso())
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last), "Nats-TTL": f"{int(self.lease_ttl_s)}s"}
        return await self.pipeline.publish(f"$KV.{self.bucket}.{lease_key(n)}", _encode(lease), headers)

    async def _renew(self) -> None:
        for n, shard in list(self.held.items()):
            try:
                shard.revision = await self._write_lease(n, shard.revision)
            except JetStreamError as exc:
                if exc.wrong_last_sequence:
                    log.warning("shard lease lost", shard=n)
                    await self._drop(n)
                else:
                    raise

    # --- taking and giving shards -----------------------------------------------------------------------------

    async def acquire(self, n: int, last: int) -> bool:
        try:
            revision = await self._write_lease(n, last)
        except JetStreamError as exc:
            if exc.wrong_last_sequence:
                return False  # another replica was faster
            raise
        intake = Intake(self.nc, self.names, n, self.route, ack_wait_s=self.ack_wait_s)
        shard = Shard(n, revision, intake)
        self.held[n] = shard
        log.info("shard acquired", shard=n, epoch=revision)
        try:
            await self.index.current.wait()
            todo = [r.execution_id for r in self.index.open_executions() if r.shard == n]
            sem = asyncio.Semaphore(ADOPT_CONCURRENCY)

            async def one(execution_id: str) -> None:
                async with sem:
                    try:
                        await self._adopt_one(execution_id, shard)
                    except Exception as exc:
                        log.warning("adoption failed; retried", executionId=execution_id, error=repr(exc))
                        self.reloading.add(execution_id)
                        asyncio.get_running_loop().create_task(self._retry_adopt(execution_id, shard))

            await asyncio.gather(*(one(e) for e in todo))
            assert self.serve_commands is not None
            shard.commands = await self.serve_commands(n)
        finally:
            shard.adopting = False
        shard.task = asyncio.create_task(intake.consumer.run(), name=f"intake shard {n}")
        self.owns_some.set()
        if todo:
            log.info("shard adopted", shard=n, executions=len(todo))
        return True

    async def _retry_adopt(self, execution_id: str, shard: Shard) -> None:
        try:
            for delay in (1, 2, 4, 8, 8, 8):
                await asyncio.sleep(delay)
                if self.held.get(shard.n) is not shard:
                    return
                try:
                    await self._adopt_one(execution_id, shard)
                    return
                except Exception as exc:
                    log.warning("adoption failed; retried", executionId=execution_id, error=repr(exc))
        finally:
            self.reloading.discard(execution_id)

    async def adopt_straggler(self, execution_id: str, shard: Shard) -> None:
        self.reloading.add(execution_id)
        try:
            await self._adopt_one(execution_id, shard)
        finally:
            self.reloading.discard(execution_id)

    def on_reconnect(self) -> None:
        """After a reconnect the server may have dropped our pull requests: ask again."""
        for shard in self.held.values():
            shard.intake.consumer.reset()

    async def _adopt_one(self, execution_id: str, shard: Shard) -> None:
        if execution_id in self.owned:
            return
        owned = await adopt(self.context, execution_id, shard.n, shard.revision)
        if owned is None:
            return
        self.owned[execution_id] = owned
        try:
            if owned.state.status in FINAL_EXECUTION_STATES:
                await owned.finish_again()
            else:
                await resume(owned)
        except BaseException:
            # Not carried on: out of memory again, or the retry would find it "owned" and stop there, and the
            # execution would stay half ended (its reads waiting for an end nobody writes).
            await owned.give_up("adopted, but carrying it on failed")
            raise

    async def _drop(self, n: int) -> None:
        """Stop serving shard n here (its lease is gone or given away): its executions leave memory; what was in
        flight comes back to the next owner (reports unacked are redelivered)."""
        shard = self.held.pop(n, None)
        if shard is None:
            return
        shard.intake.consumer.stop()
        self.reports_done += shard.intake.reports
        for msg in shard.intake.consumer.take_buffered():
            with contextlib.suppress(Exception):
                await msg.nak()
        if shard.commands is not None:
            with contextlib.suppress(Exception):
                await shard.commands.unsubscribe()
        mine = [o for o in self.owned.values() if o.state.shard == n]
        await asyncio.gather(*(o.let_go() for o in mine), return_exceptions=True)
        if shard.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shard.task, 5)
        if not self.held:
            self.owns_some.clear()

    async def release(self, n: int) -> None:
        """Give shard n away: drain it, then delete its lease so another replica takes it at once."""
        shard = self.held.get(n)
        if shard is None:
            return
        revision = shard.revision
        await self._drop(n)
        headers = {
            "KV-Operation": "DEL",
            "Nats-Expected-Last-Subject-Sequence": str(revision),
            "Nats-TTL": f"{int(self.lease_ttl_s)}s",
        }
        with contextlib.suppress(Exception):
            await self.pipeline.publish(f"$KV.{self.bucket}.{lease_key(n)}", b"", headers)
        log.info("shard released", shard=n)

    async def stop(self) -> None:
        """SIGTERM: give every shard away, so the other replicas take over now rather than after the lease."""
        self.stopping = True
        for n in list(self.held):
            await self.release(n)
        with contextlib.suppress(Exception):
            headers = {"KV-Operation": "DEL"}
            await self.pipeline.publish(f"$KV.{self.bucket}.{replica_key(self.replica_id)}", b"", headers)

    def owned_shard_for_new(self) -> Shard | None:
        """A shard to place a new execution in: the one holding the fewest open executions here."""
        ready = [s for s in self.held.values() if not s.adopting]
        if not ready:
            return None
        load: dict[int, int] = {s.n: 0 for s in ready}
        for owned in self.owned.values():
            if owned.state.shard in load:
                load[owned.state.shard] += 1
        return min(ready, key=lambda s: (load[s.n], s.n))
