"""NATS locked down: every role does its work with its own credential, and the server refuses the rest.

Each test runs its own nats-server with jetdag's authorization for the test's namespace (`secure_nats`), and
the services connect as `jetdag up` connects them: one credential per role. The refusals are the server's
own (a permissions violation reported to the client and logged by the server), not checks of ours.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from jetdag.natsserver import find_nats_server, free_port
from shared.permissions import Role, permissions
from shared.subjects import Names
from tests.api import job, jobs, status, submit, wait_final
from tests.conftest import SecureNats, Stack
from tests.helpers import wait_for


class Refusals:
    """Collects the permission errors the server sends a connection (they arrive asynchronously)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def wait(self, what: str, subject: str) -> None:
        # nats-py lower-cases the server's error line.
        expected = f'permissions violation for {what} to "{subject}"'.lower()
        await wait_for(lambda: any(expected in e for e in self.errors), timeout=5, message=expected)


async def test_anonymous_and_unknown_connections_are_refused(secure_nats: SecureNats) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(secure_nats.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    # A user/password the server does not know fares no better.
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(
            secure_nats.url, user="jetdag", password="jetdag", allow_reconnect=False, max_reconnect_attempts=0
        )


async def test_the_whole_flow_runs_with_least_privilege(
    secure_nats: SecureNats, secure_stack: Stack, http: httpx.AsyncClient
) -> None:
    """Register over REST and NATS, a DAG whose results flow through the KV bucket, a staged submission, pause
    and resume, cancel, health: all of it with each role's credential, and not one refusal in the server log."""
    await secure_stack.up()
    await secure_stack.worker("w1", "tests.handlers")
    url = secure_stack.url
    reg = {"workerId": "rest-1", "hostname": "far", "capabilities": ["cpu"], "maxConcurrency": 1}
    assert (await http.post(f"{url}/workers/register", json=reg)).status_code == 201
    assert (await http.post(f"{url}/workers/rest-1/heartbeat", json={"currentLoad": 0})).status_code == 200
    # A result too large for the job message of its dependent is fetched by the worker from the KV bucket.
    dag = [
        job("big", "big", config={"bytes": 200_000}),
        job("big2", "big", config={"bytes": 200_000}),
        job("big3", "big", config={"bytes": 200_000}),
        job("sum", "noop", ["big", "big2", "big3"]),
    ]
    eid = await submit(http, url, dag)
    assert (await wait_final(http, url, eid))["status"] == "completed"
    # A submission over 768 KiB is staged in the object store by the gateway.
    filler = "x" * 200_000
    large = [job(f"j{i}", "noop", config={"pad": filler}) for i in range(5)]
    eid = await submit(http, url, large)
    assert (await wait_final(http, url, eid))["status"] == "completed"
    for action in ("pause", "resume"):
        r = await http.post(f"{url}/queue/{action}")
        assert r.status_code == 200, r.text
    eid = await submit(http, url, [job("long", "sleep", config={"seconds": 60})])

    async def running() -> bool:
        return bool((await status(http, url, eid))["progress"]["running"] == 1)

    await wait_for(running, timeout=20, message="the long job running")
    assert (await http.post(f"{url}/execute/{eid}/cancel")).status_code == 200
    await wait_for(
        lambda: secure_stack.procs[-1].has_logged("job failed", error="cancelled"), message="the handler cancelled"
    )
    assert {j["status"] for j in (await jobs(http, url, eid)).values()} == {"cancelled"}
    health = await http.get(f"{url}/health")
    assert health.status_code == 200, health.text
    assert (await http.get(f"{url}/queue/stats")).status_code == 200
    assert (await http.get(f"{url}/executions")).json()["count"] == 3
    assert (await http.delete(f"{url}/workers/rest-1")).status_code == 200
    assert secure_nats.violations() == []


async def test_a_worker_credential_cannot_steer_the_system(
    secure_nats: SecureNats, secure_stack: Stack, http: httpx.AsyncClient
) -> None:
    """The hostile test of issue 11, with a worker's credential instead of none: each attempt is refused by the
    server, and nothing changes."""
    await secure_stack.up()
    names = secure_stack.names
    eid = await submit(http, secure_stack.url, [job("train", "sleep", config={"seconds": 30})])
    refused = Refusals()
    worker = await secure_nats.connect(Role.WORKER, error_cb=refused.record)
    operator = await secure_nats.connect(Role.OPERATOR)
    try:
        # Publishes a worker may not make: job messages, events other than its reports, KV writes, commands
        # it has no business sending, and JetStream calls that would delete, purge or re-shape streams.
        forbidden = [
            names.jobs("any", "sleep", 3, eid),
            names.execution_event(eid, "cancelled"),
            names.execution_event(eid, "jobs"),
            names.journal(eid),
            names.workers_cancel,
            names.worker_event("w1", "deregistered"),
            f"$KV.{names.workers_bucket}.w1",
            f"$KV.{names.executions_bucket}.{eid}",
            f"$KV.{names.checkpoints_bucket}.{eid}",
            names.scheduler("queue.pause"),
            names.scheduler("cancel"),
            names.registry("takeover"),
            f"$JS.API.STREAM.DELETE.{names.jobs_stream}",
            f"$JS.API.STREAM.PURGE.{names.events_stream}",
            f"$JS.API.STREAM.UPDATE.{names.jobs_stream}",
            f"$JS.API.STREAM.MSG.DELETE.{names.jobs_stream}",
            f"$JS.API.CONSUMER.CREATE.{names.jobs_stream}",
            f"$JS.API.CONSUMER.DELETE.{names.jobs_stream}.any__sleep__p3",
        ]
        for subject in forbidden:
            await worker.publish(subject, b"{}")
        await worker.flush()
        for subject in forbidden:
            await refused.wait("publish", subject)
        # Subscriptions that would let it answer as the scheduler or the registry, or read others' replies.
        for subject in (
            names.scheduler("execute"),
            f"{names.scheduler_prefix}.>",
            names.registry("register"),
            names.service_ping(names.scheduler_service),
            f"{names.inbox_prefix(Role.GATEWAY)}.>",
            "_INBOX.>",
            f"{names.jobs_prefix}.>",
        ):
            await worker.subscribe(subject, queue="q")
            await worker.flush()
            await refused.wait("subscription", subject)

        # Nothing changed: the job still runs, the queue is not paused, no key was written, streams are whole.
        execution = await status(http, secure_stack.url, eid)
        assert execution["status"] in ("pending", "running"), execution
        assert (await http.get(f"{secure_stack.url}/queue/stats")).json()["isPaused"] is False
        js = operator.jetstream()
        for bucket, key in ((names.workers_bucket, "w1"), (names.checkpoints_bucket, eid)):
            with pytest.raises(KeyNotFoundError):
                await (await js.key_value(bucket)).get(key)
        # The job stream holds the one real job (no worker runs here), not the forged one; nothing was purged.
        assert (await js.stream_info(names.jobs_stream)).state.messages == 1
        assert (await js.stream_info(names.events_stream)).state.messages > 0
        # Every POST /execute reached the real scheduler (no impostor joined its queue group).
        for _ in range(5):
            other = await submit(http, secure_stack.url, [job("a")])
            assert (await http.get(f"{secure_stack.url}/execute/{other}")).status_code == 200
    finally:
        await worker.close()
        await operator.close()
    # The server logged each refusal with the connection's nkey (docs/security.md: telling roles apart).
    logged = secure_nats.violations()
    assert len(logged) >= 16 and all(secure_nats.keys[Role.WORKER].public_key in line for line in logged), logged


async def test_the_gateway_credential_cannot_run_jobs_or_write_state(secure_nats: SecureNats) -> None:
    names = secure_nats.names
    refused = Refusals()
    gateway = await secure_nats.connect(Role.GATEWAY, error_cb=refused.record)
    try:
        forbidden = [
            names.jobs("any", "noop", 3, "e"),
            names.reports(0),
            f"$KV.{names.executions_bucket}.e",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{names.events_stream}.mine",
            f"$JS.API.STREAM.DELETE.{names.events_stream}",
        ]
        for subject in forbidden:
            await gateway.publish(subject, b"{}")
        await gateway.flush()
        for subject in forbidden:
            await refused.wait("publish", subject)
        await gateway.subscribe(names.registry("register"))
        await refused.wait("subscription", names.registry("register"))
    finally:
        await gateway.close()


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_the_table_keeps_roles_to_their_namespace_and_never_deletes_streams() -> None:
    table, other = permissions(Names("jetdag")), Names("jetdag-b")
    foreign = [
        other.jobs("any", "noop", 3, "e"),
        other.reports(0),
        other.journal("e"),
        other.registry("register"),
        f"$KV.{other.workers_bucket}.w",
        f"$JS.API.STREAM.INFO.{other.jobs_stream}",
        f"$JS.API.CONSUMER.MSG.NEXT.{other.jobs_stream}.any__noop__p3",
        f"{other.inbox_prefix(Role.WORKER)}.x",
    ]
    for role, perms in table.items():
        if role is Role.OPERATOR:
            assert perms.publish == (">",) and perms.subscribe == (">",)
            continue
        for subject in foreign:
            assert not any(matches(p, subject) for p in (*perms.publish, *perms.subscribe)), (role, subject)
        for verb in ("STREAM.DELETE.JETDAG_JOBS", "STREAM.DELETE.JETDAG_EVENTS", "STREAM.DELETE.KV_jetdag_workers"):
            assert not any(matches(p, f"$JS.API.{verb}") for p in perms.publish), (role, verb)
        # Replies only to its own inboxes; answering requests goes through allow_responses.
        inboxes = [p for p in perms.subscribe if p.startswith("_INBOX")]
        assert inboxes == [f"_INBOX.jetdag.{role}.>"], (role, inboxes)
        assert not any(p.startswith("_INBOX") for p in perms.publish), role
        assert len(set(perms.publish)) == len(perms.publish), role


def test_nats_config_prints_what_a_nats_server_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
    env["JETDAG_NAMESPACE"] = "prod"
    argv = [sys.executable, "-m", "jetdag", "nats-config", "--dir", str(tmp_path / "creds")]
    first = subprocess.run(argv, check=True, capture_output=True, text=True, env=env, timeout=60)
    assert first.stdout.startswith("# jetdag roles of namespace 'prod'")
    assert "prod.registry.*" in first.stdout and "jetdag." not in first.stdout
    as_json = json.loads(subprocess.run([*argv, "--json"], check=True, capture_output=True, env=env, timeout=60).stdout)
    # The seeds are made once and reused: the same public keys in both outputs.
    for role, entry in as_json["roles"].items():
        assert f"nkey: {entry['nkey']}" in first.stdout, role
        assert stat.S_IMODE((tmp_path / "creds" / f"{role}.nk").stat().st_mode) == 0o600
    assert as_json["roles"]["worker"]["publish"] == list(permissions(Names("prod"))[Role.WORKER].publish)
    # nats-server accepts the block as it is (-t: check the configuration and exit).
    conf = tmp_path / "server.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{free_port()}"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n' + first.stdout
    )
    check = subprocess.run(
        [find_nats_server(), "-c", str(conf), "-t"], check=False, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr


async def test_reports_forged_with_a_worker_credential_change_nothing(
    secure_nats: SecureNats, secure_stack: Stack, http: httpx.AsyncClient
) -> None:
    """A worker credential may publish reports (its job), but a report counts only with the token of the job's
    current dispatch: a forged completion, failure or start of a job it was not given changes nothing, and the
    scheduler says so in its log, naming the worker id the report claims."""
    await secure_stack.up()
    names = secure_stack.names
    eid = await submit(
        http, secure_stack.url, [job("train", "sleep", config={"seconds": 30}), job("eval", "noop", ["train"])]
    )

    async def queued() -> bool:
        return bool((await jobs(http, secure_stack.url, eid))["train"]["status"] == "queued")

    await wait_for(queued, timeout=10, message="the job queued (no worker runs it here)")
    forger = await secure_nats.connect(Role.WORKER)
    try:
        now = "2026-12-02T00:00:00.000Z"
        common = {"executionId": eid, "jobId": "train", "token": "0123456789abcdef", "at": now}
        reports = [
            {"kind": "finished", **common, "attempt": 1, "ok": True, "startedAt": now, "durationMs": 1,
             "result": {"model": "backdoored"}},
            {"kind": "finished", **common, "attempt": 1, "ok": False, "startedAt": now, "durationMs": 1,
             "error": {"type": "E", "message": "forged"}, "retryable": False},
            {"kind": "started", **common, "attempt": 1},
        ]  # fmt: skip
        for n in range(8):  # whatever shard the execution is in
            batch = {"workerId": "impostor", "reports": reports}
            await forger.jetstream().publish(names.reports(n), json.dumps(batch).encode())
        scheduler = next(p for p in secure_stack.procs if p.name == "scheduler")
        await wait_for(
            lambda: len([x for x in scheduler.log_lines() if x.get("event") == "report ignored"]) >= 3,
            timeout=10,
            message="the scheduler to log the forged reports",
        )
        ignored = [x for x in scheduler.log_lines() if x.get("event") == "report ignored"]
        assert {x["claimedWorker"] for x in ignored} == {"impostor"} and {x["jobId"] for x in ignored} == {"train"}
        listing = await jobs(http, secure_stack.url, eid)
        assert listing["train"]["status"] == "queued" and listing["train"]["result"] is None
        assert listing["eval"]["status"] == "pending" and listing["train"]["deliveries"] == []
    finally:
        await forger.close()
    assert (await status(http, secure_stack.url, eid))["status"] == "pending"


async def test_consumers_follow_the_worker_pools_not_the_types_clients_send(
    secure_stack: Stack, http: httpx.AsyncClient, secure_nats: SecureNats
) -> None:
    """One request with 1,000 distinct job types creates no consumer (consumers exist for the pools workers
    serve), and new workers still start and run jobs afterwards. By default such a request is refused."""
    await secure_stack.up()
    r = await http.post(
        f"{secure_stack.url}/execute", json={"workflowId": "many", "jobs": [job(f"j{i}", f"t{i}") for i in range(300)]}
    )
    assert r.status_code == 400 and "JETDAG_MAX_TYPES_PER_EXECUTION" in r.json()["error"], r.text
    secure_stack.env_overrides["JETDAG_MAX_TYPES_PER_EXECUTION"] = "0"
    scheduler = next(p for p in secure_stack.procs if p.name == "scheduler")
    await scheduler.aterminate()
    await secure_stack.scheduler("scheduler-2")
    operator = await secure_nats.connect(Role.OPERATOR)
    try:
        js = operator.jetstream()
        before = (await js.stream_info(secure_stack.names.jobs_stream)).state.consumer_count
        eid = await submit(http, secure_stack.url, [job(f"j{i}", f"type{i}") for i in range(1000)])

        async def all_queued() -> bool:
            return bool((await status(http, secure_stack.url, eid))["progress"]["queued"] == 1000)

        await wait_for(all_queued, timeout=30, message="the 1,000 jobs queued")
        assert (await js.stream_info(secure_stack.names.jobs_stream)).state.consumer_count == before
        await secure_stack.worker("w1")
        other = await submit(http, secure_stack.url, [job("a")])
        assert (await wait_final(http, secure_stack.url, other))["status"] == "completed"
        # The worker's pools: its capability plus `any`, times its handler types, times the 5 priority bands.
        assert (await js.stream_info(secure_stack.names.jobs_stream)).state.consumer_count <= before + 2 * 3 * 5
        assert (await http.post(f"{secure_stack.url}/execute/{eid}/cancel")).status_code == 200
    finally:
        await operator.close()
