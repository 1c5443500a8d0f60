"""Single-flight loading: while one caller loads a key, the others asking for it wait for that load.

The gateway keeps short caches on every call's path (a server's replicas, its tool pins). Such a
cache goes stale for every caller at once; without this, each call in flight at that moment starts
its own identical load in a worker thread (measured: 20 concurrent calls made a deployment's
replicas be read from the database dozens of times a second instead of once, 5% of the gateway's
CPU), and those loads hold the GIL while the event loop has calls to forward.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.loaded = False
        self.value: V | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[K, V]):
    def __init__(self, load: Callable[[K], V]) -> None:
        self._load = load
        self._flights: dict[K, _Flight[V]] = {}

    async def __call__(self, key: K) -> V:
        """`load(key)` in a worker thread; if a load of `key` is already under way, its result (or
        its exception) instead. No wait of its own: a load is bounded by its own timeouts."""
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.loaded:
                return flight.value  # type: ignore[return-value]
            # Its caller was cancelled before the load ran: this caller loads instead.
        flight = self._flights[key] = _Flight()
        try:
            flight.value = await anyio.to_thread.run_sync(self._load, key)
            flight.loaded = True
            return flight.value
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
