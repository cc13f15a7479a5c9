"""Every subject, stream, consumer, KV bucket and service name — the only place they are spelled.

All names live under one namespace (default `jetdag`) so several deployments, or parallel tests, can share a
NATS server without seeing each other. Tokens that come from users (worker, execution and job ids) are
validated by `shared.ids` before they reach any function here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Names"]


@dataclass(frozen=True, slots=True)
class Names:
    """Names derived from one namespace."""

    namespace: str = "jetdag"

    # --- streams and buckets -------------------------------------------------------------------------

    @property
    def _upper(self) -> str:
        return self.namespace.upper().replace("-", "_")

    @property
    def jobs_stream(self) -> str:
        """Work-queue stream of job messages."""
        return f"{self._upper}_JOBS"

    @property
    def events_stream(self) -> str:
        """Limits-retention stream of every execution, job and worker event."""
        return f"{self._upper}_EVENTS"

    @property
    def workers_bucket(self) -> str:
        """KV bucket of worker records, written only by the registry."""
        return f"{self.namespace.replace('-', '_')}_workers"

    @property
    def executions_bucket(self) -> str:
        """KV bucket of execution and job state, written only by the scheduler."""
        return f"{self.namespace.replace('-', '_')}_executions"

    @property
    def checkpoints_bucket(self) -> str:
        """KV bucket of execution checkpoints, written only by the scheduler."""
        return f"{self.namespace.replace('-', '_')}_checkpoints"

    @property
    def journal_stream(self) -> str:
        """Limits-retention stream of the executions' journals: each owner's log of its decisions."""
        return f"{self._upper}_JOURNAL"

    @property
    def reports_stream(self) -> str:
        """Work-queue stream of worker reports (job started / finished / progress / returned), per shard."""
        return f"{self._upper}_REPORTS"

    @property
    def schedulers_bucket(self) -> str:
        """KV bucket of scheduler replicas, the shard layout, the shard leases, and the records of concurrency
        keys and rate limits (services/scheduler/gates.py)."""
        return f"{self.namespace.replace('-', '_')}_schedulers"

    @property
    def submissions_bucket(self) -> str:
        """Object store where the gateway stages DAGs too large for one NATS message."""
        return f"{self.namespace.replace('-', '_')}_submissions"

    @property
    def schedules_bucket(self) -> str:
        """KV bucket of schedules (`<scheduleId>`: the definition, `<scheduleId>.state`: its ticks and runs),
        written only by the scheduler."""
        return f"{self.namespace.replace('-', '_')}_schedules"

    # --- service commands (request/reply, nats.micro) --------------------------------------------------

    @property
    def registry_service(self) -> str:
        """`nats micro ls` name of the registry."""
        return f"{self.namespace}-registry"

    @property
    def scheduler_service(self) -> str:
        """`nats micro ls` name of the scheduler."""
        return f"{self.namespace}-scheduler"

    @property
    def registry_prefix(self) -> str:
        return f"{self.namespace}.registry"

    @property
    def scheduler_prefix(self) -> str:
        return f"{self.namespace}.scheduler"

    def registry(self, command: str) -> str:
        """Subject of a registry command, e.g. `jetdag.registry.register`."""
        return f"{self.registry_prefix}.{command}"

    def scheduler(self, command: str) -> str:
        """Subject of a scheduler command, e.g. `jetdag.scheduler.execute`."""
        return f"{self.scheduler_prefix}.{command}"

    def scheduler_shard(self, shard: int, command: str) -> str:
        """A command for the owner of one shard of executions, e.g. `jetdag.scheduler.shard.3.cancel`; any
        replica forwards `scheduler.<command>` here when it does not own the execution."""
        return f"{self.scheduler_prefix}.shard.{shard}.{command}"

    def scheduler_shard_all(self, shard: int) -> str:
        return f"{self.scheduler_prefix}.shard.{shard}.*"

    def scheduler_replica(self, replica_id: str) -> str:
        """Each scheduler replica answers here while it lives (no responders: it is gone)."""
        return f"{self.scheduler_prefix}.replica.{replica_id}"

    def service_ping(self, service: str) -> str:
        """nats.micro PING subject of every instance of `service`."""
        return f"$SRV.PING.{service}"

    # --- jobs ------------------------------------------------------------------------------------------

    @property
    def jobs_prefix(self) -> str:
        return f"{self.namespace}.jobs"

    @property
    def jobs_all(self) -> str:
        return f"{self.jobs_prefix}.>"

    def jobs(self, capability: str, job_type: str, priority: int, execution_id: str) -> str:
        """Subject of a bundle of `job_type` jobs of one execution needing `capability`, in a priority band:
        `jetdag.jobs.gpu.train.p1.<executionId>`."""
        return f"{self.jobs_prefix}.{capability}.{job_type}.p{priority}.{execution_id}"

    def jobs_filter(self, capability: str, job_type: str, priority: int) -> str:
        """What the (capability, type, band) consumer takes: that pool's jobs of every execution."""
        return f"{self.jobs_prefix}.{capability}.{job_type}.p{priority}.*"

    def jobs_of_execution(self, execution_id: str) -> str:
        """Every queued job message of one execution (withdrawn with one purge when it is cancelled)."""
        return f"{self.jobs_prefix}.*.*.*.{execution_id}"

    # --- the journal and worker reports ---------------------------------------------------------------

    @property
    def journal_prefix(self) -> str:
        return f"{self.namespace}.journal"

    @property
    def journal_all(self) -> str:
        return f"{self.journal_prefix}.>"

    def journal(self, execution_id: str) -> str:
        """The journal of one execution."""
        return f"{self.journal_prefix}.{execution_id}"

    @property
    def reports_prefix(self) -> str:
        return f"{self.namespace}.reports"

    @property
    def reports_all(self) -> str:
        return f"{self.reports_prefix}.>"

    def reports(self, shard: int) -> str:
        """Where workers report on jobs of executions of `shard`."""
        return f"{self.reports_prefix}.{shard}"

    def reports_consumer(self, shard: int) -> str:
        """Durable consumer of one shard's reports, pulled by the shard's owner."""
        return f"shard-{shard}"

    @property
    def workers_cancel(self) -> str:
        """Core NATS: the scheduler tells workers to stop handlers of a cancelled execution (CancelNotice)."""
        return f"{self.namespace}.workers.cancel"

    def jobs_consumer(self, capability: str, job_type: str, priority: int) -> str:
        """Durable consumer shared by every worker able to run (capability, type), one per priority band:
        `gpu__train__p1`."""
        return f"{capability}__{job_type}__p{priority}"

    @property
    def jobs_pause_advisories(self) -> str:
        """JetStream's own advisories (ConsumerPauseAdvisory) when a job consumer is paused or resumed, by a
        command or when its pause runs out: workers probe a resumed band's consumers again (services/worker/
        bands.py)."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.PAUSE.{self.jobs_stream}.*"

    @staticmethod
    def jobs_consumer_priority(consumer: str) -> int | None:
        """The band of a `jobs_consumer` name (None: not one of them)."""
        _, _, band = consumer.rpartition("__p")
        return int(band) if band.isdigit() else None

    def jobs_consumer_pair(self, consumer: str) -> tuple[str, str] | None:
        """The (capability, type) a job consumer serves (neither has `__`); None: not a job consumer's name."""
        parts = consumer.split("__")
        return (parts[0], parts[1]) if len(parts) >= 2 else None

    # --- events ----------------------------------------------------------------------------------------

    @property
    def events_prefix(self) -> str:
        return f"{self.namespace}.events"

    @property
    def events_all(self) -> str:
        return f"{self.events_prefix}.>"

    def execution_event(self, execution_id: str, what: str) -> str:
        return f"{self.events_prefix}.execution.{execution_id}.{what}"

    def execution_events(self, execution_id: str) -> str:
        """Every event of one execution: its own changes and its batched job changes (`.jobs`)."""
        return f"{self.events_prefix}.execution.{execution_id}.*"

    def worker_event(self, worker_id: str, what: str) -> str:
        return f"{self.events_prefix}.worker.{worker_id}.{what}"

    @property
    def worker_events(self) -> str:
        return f"{self.events_prefix}.worker.*.*"

    def queue_event(self, what: str) -> str:
        """`paused` or `resumed`: the job queue (or a part of it) was paused or resumed."""
        return f"{self.events_prefix}.queue.{what}"

    # --- observability ---------------------------------------------------------------------------------

    @property
    def metrics_scrape(self) -> str:
        """Every service process answers a request here with its Prometheus exposition (the gateway's
        GET /metrics gathers them all)."""
        return f"{self.namespace}.metrics.scrape"

    # --- server-sent events (the gateway reads the event stream for HTTP clients) ----------------------------

    def execution_stream(self, execution_id: str) -> str:
        """Every event of one execution (`execution.<exec>.<kind>`, its jobs' changes on `.jobs`)."""
        return f"{self.events_prefix}.execution.{execution_id}.*"

    def events_of_kinds(self, kinds: Iterable[str]) -> list[str]:
        """Filter subjects of the events whose kind (see `event_kind`) is one of `kinds`; they never overlap."""
        subjects = []
        for kind in sorted(set(kinds)):
            if kind in ("worker", "queue"):
                subjects.append(f"{self.events_prefix}.{kind}.>")
            else:
                subjects.append(f"{self.events_prefix}.execution.*.{kind}")
        return subjects

    def event_kind(self, subject: str) -> str:
        """The kind of an event subject: `<kind>` of `execution.<exec>.<kind>` (`jobs` for the batched job
        changes), `worker` for `worker.<id>.<what>`, `queue` for `queue.<what>`."""
        tokens = subject[len(self.events_prefix) + 1 :].split(".")
        if tokens[0] == "execution" and len(tokens) == 3:
            return tokens[2]
        return tokens[0]

    # --- replies -----------------------------------------------------------------------------------------

    def inbox_prefix(self, role: str) -> str:
        """Where the connections of one role (gateway, registry, …) receive their replies: a role may subscribe
        only to its own inboxes (shared.permissions), so no role reads another's replies."""
        return f"_INBOX.{self.namespace}.{role}"
