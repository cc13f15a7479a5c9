"""jetdag.client (issue 9 part 2): Client and AsyncClient against real services, and the retry policy against
a real HTTP server that answers what the test needs (503, 401, 403)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetdag.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    WorkflowError,
)
from jetdag.client.calls import api_url
from jetdag.natsserver import free_port
from shared.messages import ExecuteRequest, JobConfig
from tests.conftest import Stack
from tests.helpers import ROOT

WORKFLOW = """
workflowId: client-test
jobs:
  - id: a
    type: noop
    config: {x: 1}
  - id: b
    type: sleep
    dependsOn: [a]
    config: {seconds: 0.2}
  - id: c
    type: noop
    dependsOn: [a]
"""


def test_api_url_takes_the_root_or_the_api_base() -> None:
    assert api_url("http://h:8000") == "http://h:8000/api/distributed"
    assert api_url("http://h:8000/api/distributed/") == "http://h:8000/api/distributed"


async def test_sync_client_runs_and_inspects_executions(stack: Stack, tmp_path: Path) -> None:
    await stack.up(workers=1)
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    with Client(stack.url) as jd:
        run = jd.submit(path)
        assert run.status == "pending" and run.job_count == 3
        final = jd.wait(run.execution_id, timeout=60)
        assert final.status == "completed" and final.progress.completed == 3
        assert jd.get(run.execution_id).completed_at == final.completed_at
        jobs = {j.id: j for j in jd.jobs(run.execution_id)}
        assert jobs["a"].result == {"x": 1} and jobs["b"].depends_on == ["a"]
        assert all(j.status == "completed" and j.worker_id == "w1" for j in jobs.values())

        # Data in the file's shape, a request, a list of jobs: the same checks, name defaulted.
        second = jd.submit({"workflowId": "client-test", "jobs": [{"id": "x", "type": "noop"}]}, parallelism=2)
        third = jd.submit(ExecuteRequest(workflow_id="other", jobs=[JobConfig(id="y", name="y", type="noop")]))
        fourth = jd.submit([{"id": "z", "type": "noop"}], workflow_id="client-test")
        for eid in (second.execution_id, third.execution_id, fourth.execution_id):
            assert jd.wait(eid, timeout=60).status == "completed"
        assert jd.get(second.execution_id).parallelism == 2

        # The listing follows its cursor across pages (page size 1 here).
        listed = [e.execution_id for e in jd.list(workflow_id="client-test", page_size=1)]
        assert listed == [fourth.execution_id, second.execution_id, run.execution_id]
        assert third.execution_id in [e.execution_id for e in jd.list(status="completed")]

        with pytest.raises(NotFound, match="exec-doesnotexist") as missing:
            jd.get("exec-doesnotexist")
        assert missing.value.status == 404
        with pytest.raises(Conflict) as conflict:
            jd.cancel(run.execution_id)
        assert conflict.value.status == 409
        with pytest.raises(WorkflowError, match="depends on"):
            jd.submit([{"id": "a", "type": "noop", "dependsOn": ["nope"]}])


async def test_cancel_retry_and_wait_timeout(stack: Stack) -> None:
    await stack.up(workers=1)
    with Client(stack.url) as jd:
        run = jd.submit([{"id": "long", "type": "sleep", "config": {"seconds": 30}}], workflow_id="cancel-me")
        with pytest.raises(WaitTimeout):
            jd.wait(run.execution_id, timeout=0.5)
        assert jd.cancel(run.execution_id).status == "cancelled"
        assert jd.wait(run.execution_id, timeout=30).status == "cancelled"
        again = jd.retry(run.execution_id)
        assert again.execution_id == run.execution_id and again.status in ("pending", "running")
        assert jd.get(run.execution_id).round == 2
        jd.cancel(run.execution_id)


async def test_server_side_validation_is_invalid(stack: Stack) -> None:
    await stack.up(JETDAG_MAX_JOBS="2")
    with Client(stack.url) as jd, pytest.raises(Invalid, match="too many jobs") as info:
        jd.submit([{"id": f"j{i}", "type": "noop"} for i in range(3)])
    assert info.value.status == 400


async def test_workers_queue_and_health(stack: Stack) -> None:
    await stack.up(workers=1)
    with Client(stack.url) as jd:
        assert [w.worker_id for w in jd.workers()] == ["w1"]
        assert jd.pause().is_paused is True
        assert jd.queue_stats().is_paused is True
        assert jd.resume().is_paused is False
        report = jd.health()
        assert report.healthy and report.components.scheduler.healthy and report.workers.total == 1


async def test_async_client(stack: Stack) -> None:
    await stack.up(workers=1)
    async with AsyncClient(stack.url) as jd:
        run = await jd.submit(
            {"workflowId": "async", "jobs": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "priority": 1}]},
            priority=2,
        )
        final = await jd.wait(run.execution_id, timeout=60)
        assert final.status == "completed" and final.priority == 2
        assert [(j.id, j.priority) for j in await jd.jobs(run.execution_id)] == [("a", 2), ("b", 1)]
        assert [e.execution_id async for e in jd.list(workflow_id="async")] == [run.execution_id]
        with pytest.raises(WorkflowError, match="priority"):
            await jd.submit([{"id": "a", "type": "noop"}], priority=6)
        assert [w.worker_id for w in await jd.workers()] == ["w1"]
        assert (await jd.health()).healthy
        with pytest.raises(NotFound):
            await jd.get("exec-nope")


async def test_health_reports_unhealthy_instead_of_raising(stack: Stack) -> None:
    await stack.registry()
    await stack.gateway()  # no scheduler: health answers 503 with its body
    with Client(stack.url, retries=0) as jd:
        report = jd.health()
    assert report.healthy is False and report.components.scheduler.healthy is False


# --- the retry policy, against a real HTTP server that answers as told -----------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, dict[str, Any]]]
    seen: list[tuple[str, str, dict[str, str]]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.command, self.path, dict(self.headers)))
        status, body = self.answers[min(len(self.seen), len(self.answers)) - 1]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[type[Recorder]]:
    handler = type("Handler", (Recorder,), {"answers": [], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


BUSY = (503, {"success": False, "error": "the scheduler did not answer within 3 s"})
CREATED = (
    201,
    {
        "success": True,
        "executionId": "exec-1",
        "status": "pending",
        "startedAt": "t",
        "completedAt": None,
        "jobCount": 1,
    },
)
JOB = [{"id": "a", "type": "noop"}]


def test_reads_are_retried_on_503_then_succeed(fake: type[Recorder]) -> None:
    view = {
        "executionId": "exec-1",
        "workflowId": "w",
        "status": "running",
        "startedAt": "t",
        "completedAt": None,
        "progress": {"total": 1, "completed": 0, "failed": 0, "running": 1},
        "checkpointId": None,
        "jobCount": 1,
        "parallelism": None,
        "round": 1,
    }
    fake.answers = [BUSY, BUSY, (200, {"success": True, "execution": view})]
    with Client(fake.url, retries=3) as jd:  # type: ignore[attr-defined]
        assert jd.get("exec-1").status == "running"
    assert [s[0] for s in fake.seen] == ["GET", "GET", "GET"]


def test_a_submit_without_key_is_sent_once(fake: type[Recorder]) -> None:
    fake.answers = [BUSY, CREATED]
    with Client(fake.url, retries=3) as jd, pytest.raises(Unavailable, match="did not answer") as info:  # type: ignore[attr-defined]
        jd.submit(JOB)
    assert info.value.status == 503 and len(fake.seen) == 1


def test_a_submit_with_a_key_is_retried_with_the_same_key(fake: type[Recorder]) -> None:
    fake.answers = [BUSY, BUSY, CREATED]
    with Client(fake.url, retries=3) as jd:  # type: ignore[attr-defined]
        assert jd.submit(JOB, idempotency_key="nightly-2026-12-02").execution_id == "exec-1"
    assert [s[2].get("Idempotency-Key") for s in fake.seen] == ["nightly-2026-12-02"] * 3


def test_retries_are_bounded(fake: type[Recorder]) -> None:
    fake.answers = [BUSY]
    with Client(fake.url, retries=2) as jd, pytest.raises(Unavailable):  # type: ignore[attr-defined]
        jd.workers()
    assert len(fake.seen) == 3


def test_token_from_argument_or_environment(fake: type[Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    fake.answers = [(401, {"success": False, "error": "a bearer token is required"})]
    with Client(fake.url, token="s3cret") as jd, pytest.raises(Unauthorized, match="bearer token is required"):  # type: ignore[attr-defined]
        jd.workers()
    assert fake.seen[-1][2]["Authorization"] == "Bearer s3cret"
    fake.answers = [(403, {"success": False, "error": "the token lacks the write scope"})]
    monkeypatch.setenv("JETDAG_TOKEN", "from-env")
    monkeypatch.setenv("JETDAG_URL", fake.url)  # type: ignore[attr-defined]
    with Client() as jd, pytest.raises(Forbidden, match="write scope") as info:
        jd.pause()
    assert info.value.status == 403 and fake.seen[-1][2]["Authorization"] == "Bearer from-env"


def test_nothing_listening_is_unavailable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=1) as jd, pytest.raises(Unavailable, match="cannot reach"):
        jd.queue_stats()


@pytest.mark.parametrize("doc", ["README.md", "docs/client.md"])
async def test_the_documented_client_example_runs(
    doc: str, stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await stack.up(workers=1)
    text = (ROOT / doc).read_text()
    block = next(b for b in text.split("```python\n")[1:] if b.startswith("from jetdag.client import"))
    monkeypatch.setenv("JETDAG_URL", stack.url)
    monkeypatch.chdir(ROOT)
    exec(compile(block.split("```", 1)[0], doc, "exec"), {})  # the reader's copy-paste, as is
    assert "completed" in capsys.readouterr().out
