"""Priority bands on the worker side: which band's jobs may start, and which consumers may be pulled.

Priorities are JetStream's, not the worker's: each (capability, type) has one consumer per band, and the
worker asks a band's consumers for messages only while every higher band's consumers are known to hold none.
What it knows comes from JetStream too: every delivered message says how many more its consumer holds
(`backlog`), and a `no_wait` request answered "no messages" says it holds none (shared.consume.PullConsumer).
So a saturated worker whose slot frees takes the next job from the highest band that has one, and after a
pause the bands are drained in order; it never sorts a backlog itself. The few jobs it holds that were
delivered together (one pull per consumer) wait in band order, and a held lower-band job does not start while
a higher band may still have jobs for this worker to fetch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from shared.messages import PRIORITIES

__all__ = ["Waiting", "first_unclear", "may_take"]

T = TypeVar("T")


def first_unclear(consumers: Iterable[tuple[int, bool]]) -> int | None:
    """The highest band (the smallest number) of the (band, clear) pairs whose consumer is not known to be
    empty: it may hold jobs that must start first."""
    return min((band for band, clear in consumers if not clear), default=None)


def may_take(band: int, top: int | None) -> bool:
    """Whether jobs of `band` may be fetched or started while `top` is the highest band that may hold jobs."""
    return top is None or band <= top


class Waiting(Generic[T]):
    """Jobs in the worker's hands that have not started, by band; first-come within a band."""

    def __init__(self) -> None:
        self._bands: dict[int, deque[T]] = {band: deque() for band in PRIORITIES}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[T]:
        for band in PRIORITIES:
            yield from self._bands[band]

    def add(self, band: int, entries: Iterable[T]) -> None:
        queue = self._bands[band]
        before = len(queue)
        queue.extend(entries)
        self._count += len(queue) - before

    def up_to(self, band: int) -> int:
        """Waiting jobs of `band` and the bands above it (what competes with a new job of `band`)."""
        return sum(len(self._bands[b]) for b in PRIORITIES if b <= band)

    def first_band(self) -> int | None:
        return next((band for band in PRIORITIES if self._bands[band]), None)

    def popleft(self, band: int) -> T:
        self._count -= 1
        return self._bands[band].popleft()

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out (and return) every waiting entry `predicate` holds for."""
        removed: list[T] = []
        for band, queue in self._bands.items():
            kept: deque[T] = deque()
            for entry in queue:
                (removed if predicate(entry) else kept).append(entry)
            self._bands[band] = kept
        self._count -= len(removed)
        return removed

    def clear(self) -> None:
        for queue in self._bands.values():
            queue.clear()
        self._count = 0
