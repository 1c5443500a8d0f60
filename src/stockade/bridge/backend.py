"""The backend: one stdio server process, initialized once, supervised, restarted.

`Backend.run()` owns the process for the bridge's lifetime:

1. refuse to start while a `--required-env` variable is missing (the reason names them);
2. start the command with the clean environment; initialize it ONCE in its own revision: the
   newest handshake (`initialize` at 2025-11-25, which nearly every stdio server speaks), and only
   if that is refused, `server/discover` (2026-07-28). Messages the server sends before its
   initialize answer (server-everything sends `notifications/tools/list_changed`) are routed as usual;
3. while it runs, read stdout into the `Multiplexer`, drain the outbox to stdin;
4. when it exits, every call in flight is answered with an error naming the exit code and the last
   stderr lines, and it is restarted with exponential backoff; more than `max_restarts` exits within
   `restart_window` seconds is a crash loop: the backend stays down and /ready says why.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from stockade import __version__

from .jsonrpc import (
    CLIENT_CAPABILITIES_META,
    CLIENT_INFO_META,
    INTERNAL_ERROR,
    JSON,
    LATEST_HANDSHAKE,
    LATEST_MODERN,
    MODERN_VERSIONS,
    PROTOCOL_VERSION_META,
    dumps,
    error_object,
)
from .multiplexer import AnswerOnlyPeer, Call, Multiplexer
from .options import Options
from .process import ServerProcess

log = logging.getLogger("stockade.bridge.backend")

BRIDGE_CLIENT_INFO = {"name": "stockade-bridge", "version": __version__}
BRIDGE_CAPABILITIES: JSON = {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {"form": {}, "url": {}}}
STDERR_TAIL = 20
MAX_BACKOFF = 30.0
SETTLE_TIMEOUT = 5.0


class State(str, enum.Enum):
    starting = "starting"
    ready = "ready"
    restarting = "restarting"
    failed = "failed"
    stopped = "stopped"


class NotReady(Exception):
    def __init__(self, detail: JSON) -> None:
        super().__init__(detail.get("reason", "the server is not ready"))
        self.detail = detail


# Where the kernel counts OOM kills of this container's cgroup (v2, then v1). Read before a server
# starts and after it exits: a higher count means the memory limit, not a bug, ended it.
_OOM_COUNTERS = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"))


def oom_kill_count() -> int | None:
    for path in _OOM_COUNTERS:
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
        except OSError:
            continue
    return None


@dataclass
class ExitInfo:
    code: int | None
    stderr: list[str]
    reason: str = ""
    when: float = field(default_factory=time.monotonic)


class Backend:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.mux = Multiplexer(self._enqueue)
        self.internal = AnswerOnlyPeer()  # the bridge's own requests (initialize)
        self.state = State.starting
        self.reason: str | None = "starting the server"
        self.era: str = "legacy"
        self.protocol_version: str | None = None
        self.init_result: JSON | None = None
        self.last_exit: ExitInfo | None = None
        self.restarts = 0
        self._ready = anyio.Event()
        self._changed = anyio.Event()
        self._outbox: deque[bytes] = deque()
        self._outbox_event = anyio.Event()
        self._process: ServerProcess | None = None
        self._stopping = False
        self._give_up = False
        self._timed_out = False
        self._wake = anyio.Event()
        self.on_ready: list[Callable[[], None]] = []

    # -- public --------------------------------------------------------------------------------

    @property
    def server_info(self) -> JSON:
        result = self.init_result or {}
        info = result.get("serverInfo")
        if not isinstance(info, dict):
            meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
            info = meta.get("io.modelcontextprotocol/serverInfo") if meta else None
        return info if isinstance(info, dict) else {"name": self.options.name, "version": "unknown"}

    @property
    def capabilities(self) -> JSON:
        caps = (self.init_result or {}).get("capabilities")
        return caps if isinstance(caps, dict) else {}

    @property
    def ready(self) -> bool:
        return self.state is State.ready

    def status(self) -> JSON:
        history: JSON = {"restarts": self.restarts, "last_exit": self.last_exit.reason if self.last_exit else None}
        if self.ready:
            return {"status": "ready", "protocol": self.protocol_version, "server": self.server_info, **history}
        detail: JSON = {"status": self.state.value, "reason": self.reason or self.state.value, **history}
        if self.last_exit is not None:
            detail["exit_code"] = self.last_exit.code
            detail["stderr"] = self.last_exit.stderr
        if self.options.missing_env:
            detail["missing_env"] = self.options.missing_env
        return detail

    async def wait_ready(self, timeout: float) -> None:
        """Return once ready; raise `NotReady` (with the /ready detail) on failure or timeout."""
        with anyio.move_on_after(timeout):
            while not self.ready:
                if self.state is not State.starting:  # failed, stopped, or between restarts
                    break
                changed = self._changed
                await changed.wait()
        if not self.ready:
            raise NotReady(self.status())

    def open(self, peer: Any, message: JSON, *, streaming: bool = True) -> Call:
        if not self.ready:
            raise NotReady(self.status())
        return self.mux.open(peer, message, streaming=streaming)

    async def request(self, method: str, params: JSON | None, timeout: float, *,
                      internal_ok: bool = False) -> JSON | None:
        """A request of the bridge's own; the raw answer (result or error), None after `timeout`."""
        if not (self.ready or internal_ok):
            raise NotReady(self.status())
        message: JSON = {"jsonrpc": "2.0", "id": 0, "method": method}
        if params is not None:
            message["params"] = params
        call = self.mux.open(self.internal, message, streaming=False)
        with anyio.move_on_after(timeout):
            return await call.inbox.get()
        self.mux.cancel(call, f"no answer within {timeout:g} s", answer=False)
        return None

    async def settle(self) -> None:
        """Return once a legacy backend has written everything it sent before now: a `ping` round
        trip (stdio is ordered). Bounded by `SETTLE_TIMEOUT` for a server that ignores pings."""
        if self.era == "legacy" and self.ready:
            await self.request("ping", None, SETTLE_TIMEOUT)

    def adopt(self, process: ServerProcess) -> None:
        """Make `process` (started with `ServerProcess.launch` before the HTTP side existed) the
        first run; from now on it is the backend's: `shutdown` stops it."""
        self._process = process

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- internals -----------------------------------------------------------------------------

    def _set_state(self, state: State, reason: str | None) -> None:
        self.state, self.reason = state, reason
        if state is State.ready:
            self._ready.set()
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _enqueue(self, message: JSON) -> None:
        self._outbox.append(dumps(message))
        self._outbox_event.set()

    async def _write_loop(self, process: ServerProcess) -> None:
        while True:
            if self._outbox:
                # Everything queued since the last write goes out in one write (one syscall under load).
                lines = list(self._outbox)
                self._outbox.clear()
                try:
                    await process.send(b"\n".join(lines))
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    log.debug("server stdin closed; dropping %d queued message(s)", len(lines) + len(self._outbox))
                    self._outbox.clear()
                    return
                continue
            self._outbox_event = anyio.Event()
            await self._outbox_event.wait()

    async def run(self) -> None:
        missing = self.options.missing_env
        if missing:
            self._set_state(State.failed, f"missing required environment variable(s): {', '.join(missing)} "
                                          "(set them in the deployment's secrets)")
            log.error("%s", self.reason)
            return
        exits: deque[float] = deque()
        backoff = 0.5
        while not self._stopping:
            started = time.monotonic()
            try:
                process = self._process or await ServerProcess.launch(self.options)
            except OSError as exc:
                self._set_state(State.failed, f"cannot start {self.options.command[0]!r}: "
                                              f"{exc.strerror or exc}")
                log.error("%s", self.reason)
                return
            log.info("started %s (pid %d)", self.options.command[0], process.pid)
            await self._run_process(process)
            if self._give_up:
                return
            if self._stopping:
                break
            now = time.monotonic()
            if now - started > self.options.restart_window:
                backoff = 0.5
            exits.append(now)
            while exits and now - exits[0] > self.options.restart_window:
                exits.popleft()
            if len(exits) > self.options.max_restarts:
                self._set_state(State.failed, f"crash loop: the server exited {len(exits)} times within "
                                              f"{self.options.restart_window:g} s; last: {self.reason}")
                log.error("%s", self.reason)
                return
            self._set_state(State.restarting, self.reason)
            log.warning("restarting the server in %.1f s", backoff)
            self._wake = anyio.Event()
            with anyio.move_on_after(backoff):
                await self._wake.wait()
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.restarts += 1
        if self.state is not State.failed:
            self._set_state(State.stopped, "the bridge is shutting down")

    async def shutdown(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait for `run` to notice."""
        self.stop()
        process = self._process
        if process is not None:
            await process.stop(self.options.stop_timeout)

    async def _run_process(self, process: ServerProcess) -> None:
        oom_kills_before = oom_kill_count()
        self._process = process
        self._outbox.clear()
        self._set_state(State.starting, "initializing the server")
        async with anyio.create_task_group() as tg:
            tg.start_soon(process.pump_stderr)
            with anyio.CancelScope() as helpers:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(self._write_loop, process)
                    inner.start_soon(self._handshake, process)
                    async for message in process.messages():
                        self.mux.from_backend(message)
                    helpers.cancel()
            with anyio.move_on_after(self.options.stop_timeout):
                await process.wait()
            if process.returncode is None:
                log.warning("the server closed stdout but did not exit; stopping it")
            code = await process.stop(self.options.stop_timeout)
        tail = process.stderr.tail(STDERR_TAIL)
        before = "before answering initialize " if self.init_result is None or self.state is not State.ready else ""
        reason = f"the server exited with code {code} {before}".rstrip()
        oom_kills_after = oom_kill_count()
        if oom_kills_before is not None and oom_kills_after is not None and oom_kills_after > oom_kills_before:
            reason = f"the server ran out of memory (killed by the kernel's OOM killer, code {code})"
        if self._give_up and self.reason:
            reason = self.reason
        elif self._stopping:
            reason = "the bridge is shutting down"
        elif self._timed_out and self.reason:
            reason = self.reason
        elif tail:
            reason += "; last stderr: " + " | ".join(tail[-5:])
        if not self._stopping:
            log.error("%s", reason)
        self.reason = reason
        self.last_exit = ExitInfo(code, tail, reason)
        self.mux.fail_all(error_object(INTERNAL_ERROR, reason, {"exit_code": code, "stderr": tail}))
        self._process = None

    async def _handshake(self, process: ServerProcess) -> None:
        timeout = self.options.ready_timeout
        self._timed_out = False
        answer = await self.request("initialize", {
            "protocolVersion": LATEST_HANDSHAKE,
            "capabilities": BRIDGE_CAPABILITIES,
            "clientInfo": BRIDGE_CLIENT_INFO,
        }, timeout, internal_ok=True)
        if answer is None:
            await self._no_answer(process, "initialize", timeout)
            return
        result = answer.get("result")
        if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
            self.era = "legacy"
            self.protocol_version = result["protocolVersion"]
            self.init_result = result
            self._enqueue({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self._became_ready()
            return
        if process.returncode is not None:
            return
        first_error = answer.get("error") if isinstance(answer.get("error"), dict) else {"message": "no result"}
        answer = await self.request("server/discover", {"_meta": {
            PROTOCOL_VERSION_META: LATEST_MODERN,
            CLIENT_INFO_META: BRIDGE_CLIENT_INFO,
            CLIENT_CAPABILITIES_META: BRIDGE_CAPABILITIES,
        }}, timeout, internal_ok=True)
        if answer is None:
            await self._no_answer(process, "server/discover", timeout)
            return
        result = answer.get("result")
        versions = result.get("supportedVersions") if isinstance(result, dict) else None
        if isinstance(result, dict) and isinstance(versions, list) and LATEST_MODERN in versions:
            self.era = "modern"
            self.protocol_version = next(v for v in reversed(MODERN_VERSIONS) if v in versions)
            self.init_result = result
            self._became_ready()
            return
        if process.returncode is not None:
            return
        reason = (f"the server refused initialize ({first_error.get('message', first_error)}) and "
                  f"server/discover; it does not speak a revision the bridge knows")
        self._give_up = True
        self._set_state(State.failed, reason)
        await process.stop(self.options.stop_timeout)

    async def _no_answer(self, process: ServerProcess, method: str, timeout: float) -> None:
        """No answer to the handshake in time: stop this run (it counts towards the crash loop)."""
        if process.returncode is not None:
            return
        self._timed_out = True
        self.reason = f"the server did not answer {method} within {timeout:g} s (--ready-timeout)"
        tail = process.stderr.tail(5)
        if tail:
            self.reason += "; last stderr: " + " | ".join(tail)
        await process.stop(self.options.stop_timeout)

    def _became_ready(self) -> None:
        log.info("server ready: %s %s, protocol %s", self.server_info.get("name"), self.server_info.get("version"),
                 self.protocol_version)
        self._set_state(State.ready, None)
        for callback in list(self.on_ready):
            callback()
