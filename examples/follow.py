"""Follow one execution's progress live from the event stream, until it ends.

    python examples/follow.py <executionId> [--server nats://127.0.0.1:4222] [--namespace jetdag]

It connects as every jetdag service does (NATS_URL, NATS_NKEY, NATS_CREDS, NATS_CA, … from the environment); on
the stack of `jetdag up`, with the operator credential: `NATS_NKEY=.jetdag/credentials/operator.nk`.

Replays the execution's events from the stream (nothing is missed even if it started before us), then follows
new ones; exits 0 when the execution completed, 1 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from shared.nats_conn import connect_options
from shared.settings import NatsSettings, load

FINAL = {"completed": 0, "failed": 1, "cancelled": 1}


async def follow(server: str, namespace: str, execution_id: str) -> int:
    options = connect_options(load(NatsSettings), "follow")
    options.update(servers=[server], max_reconnect_attempts=3)
    nc = await nats.connect(**options)
    js = nc.jetstream()
    prefix = f"{namespace}.events"
    stream = f"{namespace.upper().replace('-', '_')}_EVENTS"
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        event = json.loads(msg.data)
        what = msg.subject.rsplit(".", 1)[1]
        if what == "jobs":
            # One scheduler step's job changes, batched: each job's new status, in the order they happened.
            for change in event["jobs"]:
                extra = change.get("error") or change.get("workerId") or ""
                print(f"{change['at']}  job {change['jobId']:<20} {change['status']:<10} {extra}", flush=True)
            return
        progress = event.get("progress") or event.get("counts") or {}
        done_jobs = progress.get("completed", 0)
        total = progress.get("total", "?")
        print(f"{event['at']}  execution {what:<10} {done_jobs}/{total} completed", flush=True)
        if what in FINAL and not done.done():
            done.set_result(FINAL[what])

    # Every event of one execution: its own (`created`, `running`, `completed`, …) and its jobs' (`jobs`).
    sub = await js.subscribe(
        f"{prefix}.execution.{execution_id}.*",
        stream=stream,
        cb=on_event,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        return await done
    finally:
        await sub.unsubscribe()
        await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("execution_id")
    parser.add_argument("--server", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--namespace", default=os.environ.get("JETDAG_NAMESPACE", "jetdag"))
    args = parser.parse_args()
    sys.exit(asyncio.run(follow(args.server, args.namespace, args.execution_id)))


if __name__ == "__main__":
    main()
