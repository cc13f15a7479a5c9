"""Construction and loop decisions shared by Client and AsyncClient. Pure."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from jetdag.client.calls import api_url, retry_delay
from jetdag.client.errors import JetdagError, Unavailable, WaitTimeout
from shared.settings import ClientSettings, load

__all__ = ["Settings", "describe", "end_of_wait", "stream_failure", "wait_interval"]

USER_AGENT = "jetdag-client/0.1"


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    headers: dict[str, str]
    timeout: httpx.Timeout
    stream: httpx.Timeout
    retries: int

    @classmethod
    def make(cls, url: str | None, token: str | None, timeout: float, retries: int, stream_timeout: float) -> Settings:
        env = load(ClientSettings)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        token = env.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return cls(
            url=api_url(url or env.url),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            # The gateway sends a heartbeat every 15 s: a stream silent this long is dead and is reconnected.
            stream=httpx.Timeout(timeout, read=stream_timeout),
            retries=retries,
        )


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def wait_interval(polls: int) -> float:
    """Polling `wait`: quick at first (short executions end fast), then every 2 s."""
    return float(min(2.0, 0.1 * 1.5**polls))


def end_of_wait(execution_id: str, deadline: float | None, pause: float) -> float:
    """How long to sleep before the next poll; WaitTimeout once the deadline has passed."""
    if deadline is None:
        return pause
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout(f"execution {execution_id} did not end in time")
    return min(pause, left)


def stream_failure(failure: JetdagError | None, failures: int, retries: int) -> float:
    """Delay before reconnecting an event stream; raise once `retries` reconnects in a row brought nothing."""
    if failures > retries:
        raise failure or Unavailable("the event stream keeps closing without sending anything")
    if failures == 0:
        return 0.0
    return retry_delay(failures - 1)
