"""The Python client of jetdag's REST API: `Client` (synchronous) and `AsyncClient` (asyncio).

    from jetdag.client import Client

    with Client() as jd:                        # JETDAG_URL / JETDAG_TOKEN, or Client(url, token=...)
        run = jd.submit("examples/hello.yaml")  # checked locally first
        final = jd.wait(run.execution_id, timeout=600)
        print(final.status, final.progress.completed)

Answers are the msgspec Structs of `shared` (ExecutionView, JobView, ...); errors are typed (NotFound, Invalid,
Conflict, Unavailable, Unauthorized, Forbidden). See docs/client.md.
"""

from jetdag.client.aio import AsyncClient
from jetdag.client.errors import (
    AuthError,
    Conflict,
    Forbidden,
    Invalid,
    JetdagError,
    NotFound,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from jetdag.client.events import Event
from jetdag.client.sync import Client
from jetdag.workflow import WorkflowError, load_workflow

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "Conflict",
    "Event",
    "Forbidden",
    "Invalid",
    "JetdagError",
    "NotFound",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WorkflowError",
    "load_workflow",
]
