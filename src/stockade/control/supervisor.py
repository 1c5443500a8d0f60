"""Keeps deployments running: a container that died is restarted with exponential backoff.

The bridge inside each container restarts its own server process; this covers what the bridge
cannot: the container itself exiting (an OOM kill, the bridge crashing, the engine restarting).
Each death is recorded (restart count, why it died); a server that keeps dying is left stopped in
state `crash-loop` with the reason, instead of being restarted forever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio

from stockade.control.deployments import Deployments
from stockade.errors import StockadeError

log = logging.getLogger(__name__)


@dataclass
class _History:
    deaths: list[float] = field(default_factory=list)
    next_attempt: float = 0.0


class Supervisor:
    def __init__(
        self,
        deployments: Deployments,
        *,
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
        self._history: dict[str, _History] = {}

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            try:
                await anyio.to_thread.run_sync(self.check_once)
            except Exception:  # one bad pass must not end supervision
                log.exception("supervision pass failed")

    def check_once(self) -> None:
        now = time.monotonic()
        for slug, exit_reason in self._deployments.dead_instances():
            history = self._history.setdefault(slug, _History())
            if exit_reason is not None:
                history.deaths = [t for t in history.deaths if now - t < self._window] + [now]
                backoff = min(self._max_backoff, self._base_backoff * 2 ** (len(history.deaths) - 1))
                history.next_attempt = now + backoff
                if len(history.deaths) > self._limit:
                    self._deployments.mark_crash_loop(slug, exit_reason, len(history.deaths), self._window)
                    continue
                self._deployments.record_exit(slug, exit_reason)
                log.warning("server %s %s; restarting in %.0f s", slug, exit_reason, backoff)
            if now < history.next_attempt:
                continue
            try:
                self._deployments.start(slug)
                log.info("server %s restarted", slug)
            except StockadeError as exc:
                log.error("restarting %s failed: %s", slug, exc)
                history.deaths.append(now)
                history.next_attempt = now + min(self._max_backoff, self._base_backoff * 2 ** len(history.deaths))
