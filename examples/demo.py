"""`just demo`: run the example pipeline on the running stack and show its progress until it ends.

Starts one extra worker with the pipeline's handlers (a team's own worker, next to the stack's), submits
generate → preprocess → {train-slow, train-fast} → evaluate over REST, prints every job's status change, then
the evaluation, and stops its worker.

Environment: JETDAG_URL (default http://127.0.0.1:8000/api/distributed), and NATS_URL / JETDAG_NAMESPACE for
the worker (defaults as everywhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("JETDAG_URL", "http://127.0.0.1:8000/api/distributed")

PIPELINE = {
    "workflowId": "demo.train-eval",
    "jobs": [
        {"id": "generate", "name": "Generate synthetic data", "type": "generate", "config": {"samples": 600}},
        {"id": "preprocess", "name": "Standardise and split", "type": "preprocess", "dependsOn": ["generate"]},
        {
            "id": "train-slow",
            "name": "Train (lr 0.05)",
            "type": "train",
            "dependsOn": ["preprocess"],
            "config": {"learningRate": 0.05, "epochs": 150},
        },
        {
            "id": "train-fast",
            "name": "Train (lr 0.5)",
            "type": "train",
            "dependsOn": ["preprocess"],
            "config": {"learningRate": 0.5, "epochs": 150},
            "retries": 1,
        },
        {
            "id": "evaluate",
            "name": "Evaluate models",
            "type": "evaluate",
            "dependsOn": ["preprocess", "train-slow", "train-fast"],
        },
    ],
}


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
    with httpx.Client(base_url=URL, timeout=15) as http:
        try:
            r = http.post("/execute", json=PIPELINE)
        except httpx.ConnectError:
            print(f"demo: nothing answers at {URL}; start the stack first (just up)", file=sys.stderr)
            return 2
        if r.status_code != 201:
            print(f"demo: submit failed ({r.status_code}): {r.json().get('error')}", file=sys.stderr)
            return 1
        eid = r.json()["executionId"]
        print(f"submitted {eid}")
        seen: dict[str, str] = {}
        started = time.monotonic()
        while True:
            execution = http.get(f"/execute/{eid}").json()["execution"]
            for job in http.get(f"/execute/{eid}/jobs").json()["jobs"]:
                if seen.get(job["id"]) != job["status"]:
                    seen[job["id"]] = job["status"]
                    where = f" on {job['workerId']}" if job["workerId"] else ""
                    print(f"{time.monotonic() - started:6.2f}s  {job['id']:<11} {job['status']}{where}")
            if execution["status"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - started > 120:
                print("demo: gave up after 120 s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        p = execution["progress"]
        print(f"execution {execution['status']}: {p['completed']}/{p['total']} jobs completed")
        if execution["status"] != "completed":
            print(f"error: {execution['error']}")
            return 1
        jobs = {j["id"]: j for j in http.get(f"/execute/{eid}/jobs").json()["jobs"]}
        print("evaluation:", json.dumps(jobs["evaluate"]["result"]))
        return 0


if __name__ == "__main__":
    sys.exit(main())
