"""The raw JetStream floor of `just bench`: the same message counts as a workload, with no jetdag in the way.

What one "job" costs on bare JetStream from Python: the publisher `publish_async`es N job messages (bounded
window) to a work-queue stream; 2 consumer processes fetch them in batches of 100 from one shared durable pull
consumer, publish one result per job to a second stream and ack the job; a collector in the bench process
consumes the N results. Floor msgs/s = N / (first publish → last result received). jetdag does at least this
much work per job (plus state, events and dependency tracking), so workload jobs/s ÷ floor msgs/s is how close
it gets to what the transport allows.

Run as `python -m jetdag.bench_floor URL STREAM DURABLE RESULT_SUBJECT` it is one consumer process: it prints
`ready` once bound and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

__all__ = ["FloorRun", "die_with_parent", "measure_floor"]

FETCH_BATCH = 100
CONSUMERS = 2
# In-flight publishes without a PubAck: enough to keep the server busy, bounded so memory stays flat.
PUBLISH_WINDOW = 256
# A stalled floor (no result for this long) is an error, not a slow measurement.
STALL_S = 30.0
READY_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: a child gets SIGTERM when the bench dies, however it dies, so no process outlives it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class FloorRun:
    messages: int
    elapsed_s: float

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.elapsed_s


def job_payload(i: int) -> bytes:
    """About the size of a jetdag job message, so the floor moves comparable bytes."""
    body = {
        "executionId": "floor-0000000000000000",
        "jobId": f"j{i}",
        "type": "noop",
        "attempt": 1,
        "config": {},
        "dependencies": {},
    }
    return json.dumps(body).encode()


# --- consumer process --------------------------------------------------------------------------------------


async def consume(url: str, stream: str, durable: str, result_subject: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=PUBLISH_WINDOW)
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=0.5)
        except TimeoutError:
            continue
        # The result is persisted before its job is acked (what a real worker must do), but the whole batch's
        # results are in flight at once, so the round trips overlap.
        futures = [await js.publish_async(result_subject, m.data) for m in msgs]
        await asyncio.gather(*futures)
        for m in msgs:
            await m.ack()
    # flush + close, not drain: nats-py's drain waits out the lingering pull request of the last fetch.
    await nc.flush()
    await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print("usage: python -m jetdag.bench_floor URL STREAM DURABLE RESULT_SUBJECT", file=sys.stderr)
        return 2
    asyncio.run(consume(*args))
    return 0


# --- the measurement (bench process) -----------------------------------------------------------------------


async def _start_consumers(
    url: str, stream: str, durable: str, result_subject: str
) -> list[asyncio.subprocess.Process]:
    procs = []
    for _ in range(CONSUMERS):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jetdag.bench_floor",
            url,
            stream,
            durable,
            result_subject,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"floor consumer did not start (exit {proc.returncode}, said {line!r})")
    return procs


async def _stop_consumers(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _collect(sub: nats.js.JetStreamContext.PullSubscription, n: int) -> float:
    """Consume n results; the perf_counter time the last one arrived."""
    got = 0
    last_progress = time.perf_counter()
    while got < n:
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
        except TimeoutError:
            if time.perf_counter() - last_progress > STALL_S:
                raise RuntimeError(f"floor stalled: {got} of {n} results after {STALL_S:g} s") from None
            continue
        got += len(msgs)
        last_progress = time.perf_counter()
    return last_progress


async def measure_floor(url: str, n: int, tag: str, *, replicas: int = 1) -> FloorRun:
    """One floor measurement of n messages on fresh streams named after `tag` (with `replicas`, as jetdag's own
    streams have on a cluster); the streams are deleted after."""
    jobs_stream, results_stream = f"FLOOR_JOBS_{tag}", f"FLOOR_RESULTS_{tag}"
    jobs_subject, result_subject = f"floor.{tag}.jobs", f"floor.{tag}.results"
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=PUBLISH_WINDOW)
    procs: list[asyncio.subprocess.Process] = []
    collecting: asyncio.Task[float] | None = None
    try:
        # File storage, as jetdag's own streams.
        await js.add_stream(
            StreamConfig(
                name=jobs_stream,
                subjects=[jobs_subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=replicas,
            )
        )
        await js.add_stream(
            StreamConfig(
                name=results_stream, subjects=[result_subject], storage=StorageType.FILE, num_replicas=replicas
            )
        )
        await js.add_consumer(
            jobs_stream,
            ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=10_000),
        )
        collector = await js.pull_subscribe(
            result_subject,
            durable="collector",
            stream=results_stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE),
        )
        # Consumers are up and polling before the clock starts: process start-up is not part of the floor.
        procs = await _start_consumers(url, jobs_stream, "workers", result_subject)
        started = time.perf_counter()
        collecting = asyncio.create_task(_collect(collector, n))
        futures = [await js.publish_async(jobs_subject, job_payload(i)) for i in range(n)]
        await js.publish_async_completed()
        for future in futures:
            future.result()  # raises if the server refused one
        finished = await collecting
        return FloorRun(messages=n, elapsed_s=finished - started)
    finally:
        if collecting is not None and not collecting.done():
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
        await _stop_consumers(procs)
        for stream in (jobs_stream, results_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()


if __name__ == "__main__":
    raise SystemExit(main())
