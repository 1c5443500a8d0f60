"""Keeps deployments running: a container that died is restarted with exponential backoff.

Each instance (replica) of a deployment is watched and restarted on its own; the others keep
serving meanwhile. The bridge inside each container restarts its own server process; this covers
what the bridge cannot: the container itself exiting (an OOM kill, the bridge crashing, the engine
restarting). Each death is recorded (restart count, why it died); a server that keeps dying is left stopped in
state `crash-loop` with the reason, instead of being restarted forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from stockade.control.deployments import Deployments
from stockade.errors import NotFoundError, StockadeError

log = logging.getLogger(__name__)


BRIDGE_EVERY = 3  # passes between asking the bridges about their server processes
RETENTION_EVERY = 3600  # passes between audit retention runs (hourly, and at start)


@dataclass
class _History:
    deaths: list[float] = field(default_factory=list)
    next_attempt: float = 0.0


class Supervisor:
    def __init__(
        self,
        deployments: Deployments,
        *,
        retention: Callable[[], None] | None = None,
        interval: float = 1.0,
        base_backoff: float = 1.0,
        max_backoff: float = 60.0,
        crash_loop_limit: int = 5,
        crash_loop_window: float = 600.0,
    ) -> None:
        self._deployments = deployments
        self._interval = interval
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._limit = crash_loop_limit
        self._window = crash_loop_window
        self._history: dict[tuple[str, int], _History] = {}  # per instance (slug, number)
        # (container id, restarts the bridge reported) per instance, to count only new restarts.
        self._bridge_restarts: dict[tuple[str, int], tuple[str, int]] = {}
        self._passes = 0
        self._retention = retention

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            try:
                await anyio.to_thread.run_sync(self.check_once)
            except Exception:  # one bad pass must not end supervision
                log.exception("supervision pass failed")

    def check_once(self) -> None:
        self._passes += 1
        if self._passes % BRIDGE_EVERY == 0:
            self.observe_bridges()
            for unit in self._deployments.orchestrator.revive_egress_proxies():
                log.warning("the egress proxy of %s had stopped; started it again", unit)
            self._deployments.orchestrator.record_egress_denials()
        if self._retention is not None and self._passes % RETENTION_EVERY == 1:
            self._retention()
        running = self._deployments.orchestrator.running_units()
        for slug in self._deployments.supervised():
            with self._deployments.exclusive(slug, wait=False) as ours:
                if not ours:
                    continue  # a start, scale, rotation or stop is under way: look again next pass
                try:
                    self._check(slug, running)
                except NotFoundError:
                    continue  # removed meanwhile

    def _check(self, slug: str, running: set[tuple[str, int]]) -> None:
        now = time.monotonic()
        for number, exit_reason in self._deployments.dead_instances(slug, running):
            name = slug if number == 0 else f"{slug} (instance {number})"
            history = self._history.setdefault((slug, number), _History())
            if exit_reason is not None:
                history.deaths = [t for t in history.deaths if now - t < self._window] + [now]
                backoff = min(self._max_backoff, self._base_backoff * 2 ** (len(history.deaths) - 1))
                history.next_attempt = now + backoff
                if len(history.deaths) > self._limit:
                    self._deployments.mark_crash_loop(slug, number, exit_reason, len(history.deaths), self._window)
                    continue
                self._deployments.record_exit(slug, number, exit_reason)
                log.warning("server %s %s; restarting in %.0f s", name, exit_reason, backoff)
            if now < history.next_attempt:
                continue
            try:
                self._deployments.restart_instance(slug, number)
                log.info("server %s restarted", name)
            except StockadeError as exc:
                log.error("restarting %s failed: %s", name, exc)
                history.deaths.append(now)
                history.next_attempt = now + min(self._max_backoff, self._base_backoff * 2 ** len(history.deaths))

    def observe_bridges(self) -> None:
        """Record restarts of server processes inside containers (e.g. one the OOM killer ended)."""
        for slug, number, container_id, restarts, last_exit in self._deployments.bridge_reports():
            seen_container, seen = self._bridge_restarts.get((slug, number), (container_id, 0))
            if seen_container != container_id:
                seen = 0  # a new container's bridge counts from zero
            if restarts > seen:
                try:
                    self._deployments.record_process_restarts(slug, number, restarts - seen, last_exit)
                except NotFoundError:
                    continue  # retired or removed meanwhile
                log.warning("server %s restarted its process %d time(s): %s", slug, restarts - seen, last_exit)
            self._bridge_restarts[(slug, number)] = (container_id, restarts)
