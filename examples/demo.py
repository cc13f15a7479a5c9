"""`just demo`: run the example pipeline on the running stack and show its progress until it ends.

Starts one extra worker with the pipeline's handlers (a team's own worker, next to the stack's), submits
examples/pipeline.yaml (generate → preprocess → {train-slow, train-fast} → evaluate) with jetdag.client, prints
every job's status change as its events arrive, then the evaluation, and stops its worker.

Environment: JETDAG_URL (default http://127.0.0.1:8000) and JETDAG_TOKEN for the client, and NATS_URL /
JETDAG_NAMESPACE for the worker (defaults as everywhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jetdag.client import Client, JetdagError, Unavailable
from shared.messages import JobsEvent

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "examples" / "pipeline.yaml"


def main() -> int:
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.worker", "examples.pipeline.handlers", "--id", f"demo-worker-{os.getpid()}"],
        cwd=ROOT,
        env={**os.environ, "JETDAG_LOG_LEVEL": "warning"},
    )
    try:
        return run()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def run() -> int:
    with Client() as jd:
        try:
            submitted = jd.submit(PIPELINE)
        except Unavailable as exc:
            print(f"demo: {exc}; start the stack first (just up)", file=sys.stderr)
            return 2
        except JetdagError as exc:
            print(f"demo: submit failed ({exc.status}): {exc}", file=sys.stderr)
            return 1
        eid = submitted.execution_id
        print(f"submitted {eid}")
        started = time.monotonic()
        for event in jd.events(eid):  # every event of the execution, until its end
            if not isinstance(event.payload, JobsEvent):
                continue
            for change in event.payload.jobs:  # what one step of the scheduler changed
                where = f" on {change.worker_id}" if change.worker_id else ""
                print(f"{time.monotonic() - started:6.2f}s  {change.job_id:<11} {change.status}{where}")
        execution = jd.get(eid)
        p = execution.progress
        print(f"execution {execution.status}: {p.completed}/{p.total} jobs completed")
        if execution.status != "completed":
            print(f"error: {execution.error}")
            return 1
        jobs = {j.id: j for j in jd.jobs(eid)}
        print("evaluation:", json.dumps(jobs["evaluate"].result))
        return 0


if __name__ == "__main__":
    sys.exit(main())
