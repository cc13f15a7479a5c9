"""Settings: read once from the environment into frozen objects, one per concern.

Every field names its environment variable, default and meaning in one place (`env(...)`), so the README
table (`jetdag settings --markdown`) and the parser cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

__all__ = [
    "ClientSettings",
    "ExecutionSettings",
    "GatewaySettings",
    "LoggingSettings",
    "NatsSettings",
    "RegistrySettings",
    "SettingRow",
    "SettingsError",
    "StackSettings",
    "StorageSettings",
    "WorkerSettings",
    "all_settings_classes",
    "effective_settings",
    "load",
]

NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class SettingsError(ValueError):
    """A variable holds a value that cannot be used; the message names the variable."""


def env(var: str, default: Any, doc: str, *, secret: bool = False) -> Any:
    """Declare a settings field read from environment variable `var` (`secret`: never printed)."""
    return field(default=default, metadata={"env": var, "doc": doc, "secret": secret})


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How every service reaches NATS."""

    url: str = env(
        "NATS_URL",
        "nats://127.0.0.1:4222",
        "NATS server(s), comma-separated, as the `nats` CLI reads it. Unset: `jetdag up` starts an "
        "embedded nats-server and points every service at it.",
    )
    user: str = env("NATS_USER", "", "User name for NATS user/password auth.")
    password: str = env("NATS_PASSWORD", "", "Password for NATS user/password auth.", secret=True)
    token: str = env("NATS_TOKEN", "", "Token for NATS token auth.", secret=True)
    creds: str = env("NATS_CREDS", "", "Path of a NATS `.creds` file (JWT + nkey seed).")
    nkey: str = env(
        "NATS_NKEY",
        "",
        "Path of an nkey seed file: the credential of this service's role (`jetdag up` sets it for each child; "
        "see docs/security.md).",
    )
    ca: str = env("NATS_CA", "", "CA certificate(s) (PEM) that sign the NATS server's certificate; for `tls://` URLs.")
    cert: str = env("NATS_CERT", "", "Client certificate (PEM) for NATS servers that verify clients (mutual TLS).")
    key: str = env("NATS_KEY", "", "Private key (PEM) of `NATS_CERT`.")
    namespace: str = env(
        "JETDAG_NAMESPACE",
        "jetdag",
        "Prefix of every subject, stream, KV bucket and service name (`[a-z][a-z0-9_-]*`, ≤ 32).",
    )
    request_timeout_s: float = env(
        "JETDAG_REQUEST_TIMEOUT_S", 3.0, "How long a service command may take before the caller gives up."
    )

    def __post_init__(self) -> None:
        if not NAMESPACE_RE.match(self.namespace):
            raise SettingsError(f"JETDAG_NAMESPACE must match {NAMESPACE_RE.pattern}, got {self.namespace!r}")
        if bool(self.cert) != bool(self.key):
            raise SettingsError("NATS_CERT and NATS_KEY must be set together (a client certificate and its key)")


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """Log output of every service."""

    level: str = env("JETDAG_LOG_LEVEL", "info", "debug, info, warning or error.")
    format: str = env("JETDAG_LOG_FORMAT", "", "`json` or `console`; empty: console on a terminal, JSON otherwise.")
    uvloop: bool = env("JETDAG_UVLOOP", True, "Run every service on uvloop (faster event loop) when it is installed.")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Durability of streams and KV buckets (see docs for the production setting)."""

    replicas: int = env("JETDAG_REPLICAS", 1, "Replicas of every stream and KV bucket (3 on a 3-node cluster).")
    memory: bool = env(
        "JETDAG_MEMORY_STORAGE", False, "Keep streams in memory instead of files (tests only: loses data)."
    )
    events_max_age_s: float = env("JETDAG_EVENTS_MAX_AGE_S", 7 * 24 * 3600.0, "How long the event stream keeps events.")


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Worker liveness as the registry judges it."""

    heartbeat_interval_s: float = env(
        "JETDAG_HEARTBEAT_INTERVAL_S",
        10.0,
        "Heartbeat interval of jetdag's own workers; a worker is `unhealthy` after 3 missed intervals.",
    )
    rest_heartbeat_interval_s: float = env(
        "JETDAG_REST_HEARTBEAT_INTERVAL_S",
        30.0,
        "Heartbeat interval assumed for workers registered over REST (the reference client beats every 30 s).",
    )
    reap_after_s: float = env(
        "JETDAG_WORKER_REAP_AFTER_S",
        600.0,
        "A worker silent this long is removed from the registry (event `worker.<id>.reaped`).",
    )
    reap_check_s: float = env(
        "JETDAG_WORKER_REAP_CHECK_S", 5.0, "How often the registry looks for unhealthy and dead workers."
    )


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The REST gateway."""

    host: str = env("JETDAG_HOST", "127.0.0.1", "Address the gateway listens on.")
    port: int = env("JETDAG_PORT", 8000, "Port the gateway listens on.")
    max_body_bytes: int = env(
        "JETDAG_MAX_BODY_BYTES", 4 * 1024 * 1024, "Largest request body accepted; larger ones get 413."
    )
    health_timeout_s: float = env(
        "JETDAG_HEALTH_TIMEOUT_S", 2.0, "How long each `/health` check may take before it counts as failed."
    )
    metrics_window_s: float = env(
        "JETDAG_METRICS_WINDOW_S",
        0.5,
        "How long GET /metrics waits for the service processes (registry, scheduler, workers) to answer with "
        "their metrics.",
    )
    cors_origins: str = env(
        "JETDAG_CORS_ORIGINS",
        "",
        "Comma-separated origins a browser page may call the API from (`*`: any, only with API tokens); empty: "
        "CORS off. Requests carrying another `Origin` get 403.",
    )
    api_tokens: str = env(
        "JETDAG_API_TOKENS",
        "",
        "REST API tokens: comma-separated `name:scope:secret` entries, scope `read`, `write` or `admin`, secret "
        "the token itself or `sha256:<hex>` of it (`jetdag api-token` makes one). None: no auth on a loopback "
        "address; any other address refuses to start. See docs/security.md.",
        secret=True,
    )
    api_tokens_file: str = env(
        "JETDAG_API_TOKENS_FILE",
        "",
        "A file of API tokens, one `name:scope:secret` entry a line (`#` comments), read at start; adds to "
        "JETDAG_API_TOKENS.",
    )
    api_auth: str = env(
        "JETDAG_API_AUTH",
        "auto",
        "`auto`: tokens required when any are configured, and a non-loopback address refuses to start without "
        "them; `off`: no tokens on any address (only behind a proxy that authenticates, or a container published "
        "on loopback as in compose.yaml).",
    )
    sse_heartbeat_s: float = env(
        "JETDAG_SSE_HEARTBEAT_S", 15.0, "Interval of the comment heartbeat on an idle event stream (SSE)."
    )
    sse_buffer_bytes: int = env(
        "JETDAG_SSE_BUFFER_BYTES", 1024 * 1024, "Events buffered for one SSE client before its stream waits for it."
    )
    sse_slow_client_s: float = env(
        "JETDAG_SSE_SLOW_CLIENT_S",
        10.0,
        "An SSE client whose buffer stays full this long is dropped with a `dropped` event (it resumes with "
        "Last-Event-ID).",
    )
    sse_max_streams: int = env("JETDAG_SSE_MAX_STREAMS", 500, "Event streams (SSE) open at once; one more gets 503.")
    dashboard_interval_s: float = env(
        "JETDAG_DASHBOARD_INTERVAL_S",
        1.0,
        "How often the gateway recomputes the dashboard's overview while someone watches it (one computation "
        "per gateway, shared by every open dashboard).",
    )
    command_timeout_s: float = env(
        "JETDAG_COMMAND_TIMEOUT_S",
        60.0,
        "How long the gateway waits for a submit, cancel or retry (they may take long for a large DAG; a 503 "
        "must mean not done, so they are not cut off at the request timeout).",
    )


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    """Executions: limits, job delivery and recovery (the scheduler)."""

    max_jobs: int = env("JETDAG_MAX_JOBS", 20_000, "Most jobs one execution may have.")
    job_ack_wait_s: float = env(
        "JETDAG_JOB_ACK_WAIT_S",
        5.0,
        "Lease of a running job: its worker renews it every quarter of this; a job whose worker died (no "
        "renewal) is delivered again after at most this long.",
    )
    job_max_deliver: int = env(
        "JETDAG_JOB_MAX_DELIVER",
        5,
        "Deliveries of one attempt without a result (its worker died each time) before it fails as a poison job.",
    )
    max_open_jobs: int = env(
        "JETDAG_MAX_OPEN_JOBS",
        200_000,
        "Backpressure: POST /execute answers 503 while the open (not finished) jobs of all executions would "
        "exceed this.",
    )
    stall_after_s: float = env(
        "JETDAG_STALL_AFTER_S",
        15.0,
        "A queued job no worker has started this long is audited: why it waits (`waitingReason`), and whether "
        "its job message is still in the job stream (it is dispatched again if not).",
    )
    sweep_interval_s: float = env("JETDAG_SWEEP_INTERVAL_S", 1.0, "How often the scheduler runs that audit.")
    stale_consumer_s: float = env(
        "JETDAG_STALE_CONSUMER_S",
        3600.0,
        "A job consumer whose pool no live worker serves, holding no message, is removed after this long (a "
        "worker that comes back asks for it again); 0 keeps them.",
    )
    schedule_timeout_s: float = env(
        "JETDAG_SCHEDULE_TIMEOUT_S",
        0.0,
        "Default of a job's `scheduleTimeoutS`: a job no worker started this long after it was queued fails; 0: "
        "it waits as long as it takes.",
    )
    max_types_per_execution: int = env(
        "JETDAG_MAX_TYPES_PER_EXECUTION",
        256,
        "Most distinct (capability, job type) pairs one execution may use; 0: no limit.",
    )
    max_open_per_token: int = env(
        "JETDAG_MAX_OPEN_EXECUTIONS_PER_TOKEN",
        1000,
        "Most open (not finished) executions one API token may have; one more is a 429. 0: no limit. Without "
        "tokens (a loopback dev stack) there is no per-token count.",
    )
    schedule_misfire_grace_s: float = env(
        "JETDAG_SCHEDULE_MISFIRE_GRACE_S",
        60.0,
        "A schedule's tick is on time if it fires within this of its time (a restart or a takeover makes it "
        "late, and it runs); one later than that was missed while no scheduler ran, and the schedule's "
        "`catchUp` decides whether it runs once or is skipped.",
    )
    idempotency_ttl_s: float = env(
        "JETDAG_IDEMPOTENCY_TTL_S",
        24 * 3600.0,
        "How long an `Idempotency-Key` of POST /execute names the execution it created (a retry within it "
        "gets that execution back, never a second one).",
    )
    shards: int = env(
        "JETDAG_SCHEDULER_SHARDS",
        8,
        "Shards executions are spread over; each is owned by one scheduler replica at a time. Fixed by the "
        "first scheduler that starts in a namespace.",
    )
    lease_s: float = env(
        "JETDAG_SCHEDULER_LEASE_S",
        10.0,
        "A shard's lease: a replica that stops renewing it (frozen, cut off) loses its shards after this long; "
        "one whose connection closed loses them within a second.",
    )
    replica_id: str = env(
        "JETDAG_SCHEDULER_ID", "", "Id of this scheduler replica (`[A-Za-z0-9_-]`); empty: `<hostname>-<pid>`."
    )
    checkpoint_every: int = env(
        "JETDAG_CHECKPOINT_EVERY", 50, "A checkpoint is written every this many completed jobs (and at the end)."
    )
    execution_retention_s: float = env(
        "JETDAG_EXECUTION_RETENTION_S",
        7 * 24 * 3600.0,
        "A finished execution (record, jobs, checkpoints) is removed this long after it ended; 0 keeps them "
        "forever. The cumulative counters of GET /queue/stats keep counting removed executions.",
    )


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """A worker process (flags of `jetdag worker` override these)."""

    worker_id: str = env("JETDAG_WORKER_ID", "", "Worker id (`[A-Za-z0-9_-]`, ≤ 128); empty: `<hostname>-<pid>`.")
    capabilities: str = env("JETDAG_WORKER_CAPABILITIES", "cpu", "Comma-separated capabilities this worker offers.")
    concurrency: int = env("JETDAG_WORKER_CONCURRENCY", 4, "Jobs one worker runs at once.")
    shutdown_grace_s: float = env(
        "JETDAG_WORKER_GRACE_S", 30.0, "After SIGTERM, running jobs get this long to finish before being handed back."
    )


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """`jetdag.client` and the `jetdag` commands that talk to a gateway (flags override these)."""

    url: str = env("JETDAG_URL", "http://127.0.0.1:8000", "Base URL of the gateway the client and CLI talk to.")
    token: str = env(
        "JETDAG_TOKEN",
        "",
        "Bearer token the client and CLI send (`Authorization: Bearer …`); empty: none.",
        secret=True,
    )


@dataclass(frozen=True, slots=True)
class StackSettings:
    """`jetdag up`: the embedded stack."""

    data_dir: str = env("JETDAG_DATA_DIR", "./.jetdag", "Where the embedded nats-server keeps its store.")
    nats_host: str = env("JETDAG_NATS_HOST", "127.0.0.1", "Address of the embedded nats-server.")
    nats_port: int = env("JETDAG_NATS_PORT", 4222, "Client port of the embedded nats-server.")
    nats_monitor_port: int = env(
        "JETDAG_NATS_MONITOR_PORT", 8222, "Monitoring (HTTP) port of the embedded nats-server."
    )
    workers: int = env("JETDAG_WORKERS", 2, "Worker processes `jetdag up` starts.")
    nats_sync_interval: str = env(
        "JETDAG_NATS_SYNC_INTERVAL",
        "",
        "fsync interval of the embedded nats-server's JetStream store (`always` for production; empty: the "
        "server's 2-minute default). See docs/reliability.md.",
    )
    shutdown_grace_s: float = env(
        "JETDAG_SHUTDOWN_GRACE_S", 10.0, "How long `jetdag up` waits for each process after SIGTERM."
    )


T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(var: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if math.isnan(value) or math.isinf(value):
                raise ValueError(raw)
            return value
    except ValueError:
        name = {bool: "a boolean (true/false)", int: "an integer", float: "a number"}[kind]
        raise SettingsError(f"{var} must be {name}, got {raw!r}") from None
    return raw


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build settings object `cls` from `environ` (default: the process environment)."""
    source = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = f.metadata["env"]
        if var in source:
            values[f.name] = _convert(var, source[var], hints[f.name])
    obj = cls(**values)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise SettingsError(f"{f.metadata['env']} must not be negative, got {value}")
    return obj


def all_settings_classes() -> tuple[type[Any], ...]:
    """Every settings class, in the order the README documents them."""
    return (
        NatsSettings,
        LoggingSettings,
        StorageSettings,
        StackSettings,
        GatewaySettings,
        RegistrySettings,
        ExecutionSettings,
        WorkerSettings,
        ClientSettings,
    )


@dataclass(frozen=True, slots=True)
class SettingRow:
    """One variable as `jetdag settings` shows it: the value in effect beside its default."""

    var: str
    value: str
    default: str
    doc: str
    from_env: bool
    error: str | None = None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def effective_settings(environ: Mapping[str, str] | None = None) -> list[SettingRow]:
    """Every variable with the value a service started now would use (secrets masked) and its default.

    A value that does not parse is shown as given, with the sentence `load` would fail with."""
    source = os.environ if environ is None else environ
    rows = []
    for cls in all_settings_classes():
        hints = get_type_hints(cls)
        # Checks across a whole class (e.g. the namespace pattern) only `load` knows; its sentence names the var.
        try:
            load(cls, source)
            class_error = None
        except SettingsError as exc:
            class_error = str(exc)
        for f in dataclasses.fields(cls):
            var = f.metadata["env"]
            from_env = var in source
            value: Any = f.default
            error = None
            if from_env:
                try:
                    value = _convert(var, source[var], hints[f.name])
                    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                        raise SettingsError(f"{var} must not be negative, got {value}")
                except SettingsError as exc:
                    value, error = source[var], str(exc)
                if error is None and class_error is not None and class_error.startswith(f"{var} "):
                    value, error = source[var], class_error
            shown = _show(value)
            if f.metadata.get("secret") and shown:
                shown = "(set)"
            rows.append(SettingRow(var, shown, _show(f.default), f.metadata["doc"], from_env, error))
    return rows


def markdown_table() -> str:
    """The README's table of every variable with its default."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for cls in all_settings_classes():
        for f in dataclasses.fields(cls):
            default = f.default
            shown = f"`{default}`" if default not in ("", None) else "(empty)"
            if isinstance(default, bool):
                shown = f"`{str(default).lower()}`"
            lines.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(lines)
