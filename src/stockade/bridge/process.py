"""The stdio server as a subprocess: start, framed stdout, redacted stderr, stop.

One `ServerProcess` is one run of the server command. It owns three pipes:

- stdin: `send()` writes framed messages (serialised by a lock, so lines never interleave);
- stdout: `messages()` yields decoded JSON-RPC messages (see `framing`); oversized lines, invalid
  UTF-8 and non-JSON output are logged and skipped, never fatal;
- stderr: kept in a bounded ring (`StderrRing`) with the bootstrap secret values redacted, and
  echoed to the bridge's log at debug level.

The process runs in its own session (process group) so `stop()` reaches the children an npx or
shell wrapper may have started: SIGTERM to the group, then SIGKILL after a timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import Process

from .framing import DEFAULT_MAX_LINE, LineFramer, decode_line
from .jsonrpc import JSON
from .options import Options

log = logging.getLogger("stockade.bridge.process")

READ_CHUNK = 256 * 1024
STDERR_LINES = 200
STDERR_LINE_MAX = 2000
REDACTED = "[redacted]"


@dataclass
class StderrRing:
    """The last `capacity` stderr lines, each cut to `line_max` chars, secrets replaced."""

    secrets: tuple[str, ...] = ()
    capacity: int = STDERR_LINES
    line_max: int = STDERR_LINE_MAX
    _lines: deque[str] = field(default_factory=deque)
    _framer: LineFramer = field(default_factory=lambda: LineFramer(max_line=64 * 1024))

    def redact(self, text: str) -> str:
        for secret in self.secrets:  # longest first, so a secret containing another is replaced whole
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def add_line(self, raw: bytes) -> str:
        text = self.redact(raw.decode("utf-8", errors="replace"))
        if len(text) > self.line_max:
            text = text[: self.line_max] + "…"
        self._lines.append(text)
        while len(self._lines) > self.capacity:
            self._lines.popleft()
        return text

    def feed(self, data: bytes) -> list[str]:
        return [self.add_line(line) for line in self._framer.feed(data)]

    def finish(self) -> list[str]:
        return [self.add_line(line) for line in self._framer.finish()]

    def tail(self, count: int = 20) -> list[str]:
        return list(self._lines)[-count:]


class ServerProcess:
    def __init__(self, process: Process, *, max_line: int = DEFAULT_MAX_LINE, secrets: tuple[str, ...] = ()) -> None:
        self._process = process
        self._write_lock = anyio.Lock()
        self.max_line = max_line
        self.stderr = StderrRing(secrets=secrets)
        self.dropped_lines = 0
        self.skipped_lines = 0

    @classmethod
    async def start(
        cls, command: Sequence[str], env: Mapping[str, str], *, cwd: str | None = None,
        secrets: tuple[str, ...] = (), max_line: int = DEFAULT_MAX_LINE,
    ) -> ServerProcess:
        process = await anyio.open_process(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        return cls(process, max_line=max_line, secrets=secrets)

    @classmethod
    async def launch(cls, options: Options) -> ServerProcess:
        """The bridge's server command, in its clean environment, its secret values redacted from stderr."""
        return await cls.start(options.command, options.server_env, secrets=options.secret_values)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def send(self, data: bytes) -> None:
        """Write serialised messages (newline-separated, without the final newline)."""
        stdin = self._process.stdin
        assert stdin is not None
        async with self._write_lock:
            await stdin.send(data + b"\n")

    async def close_stdin(self) -> None:
        if self._process.stdin is not None:
            try:
                await self._process.stdin.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def messages(self) -> AsyncIterator[JSON]:
        """Decoded messages from stdout until it closes."""
        stdout = self._process.stdout
        assert stdout is not None
        framer = LineFramer(max_line=self.max_line)
        while True:
            try:
                chunk = await stdout.receive(READ_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                lines = framer.finish()
                done = True
            else:
                lines = framer.feed(chunk)
                done = False
            if framer.dropped != self.dropped_lines:
                log.warning("dropped %d stdout line(s) longer than %d bytes", framer.dropped - self.dropped_lines,
                            self.max_line)
                self.dropped_lines = framer.dropped
            for line in lines:
                decoded = decode_line(line)
                if decoded.invalid_utf8:
                    log.warning("server wrote invalid UTF-8 on stdout; replaced with U+FFFD")
                if decoded.not_json:
                    self.skipped_lines += 1
                    log.warning("skipped non-JSON-RPC output on stdout: %s",
                                self.stderr.redact(line[:200].decode("utf-8", errors="replace")))
                    continue
                for message in decoded.messages:
                    yield message
            if done:
                return

    async def pump_stderr(self) -> None:
        stream = self._process.stderr
        assert stream is not None
        while True:
            try:
                chunk = await stream.receive(READ_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                for line in self.stderr.finish():
                    log.debug("server stderr: %s", line)
                return
            for line in self.stderr.feed(chunk):
                log.debug("server stderr: %s", line)

    async def wait(self) -> int:
        return await self._process.wait()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                self._process.send_signal(signum)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = 5.0) -> int | None:
        """Close stdin, SIGTERM the process group, SIGKILL it after `timeout`. Returns the exit code."""
        with anyio.CancelScope(shield=True):
            await self.close_stdin()
            if self._process.returncode is None:
                self._signal_group(signal.SIGTERM)
                with anyio.move_on_after(timeout):
                    await self._process.wait()
            if self._process.returncode is None:
                self._signal_group(signal.SIGKILL)
                with anyio.move_on_after(timeout):
                    await self._process.wait()
            else:
                # The leader is gone; make sure no child it left behind keeps the group alive.
                self._signal_group(signal.SIGKILL)
            return self._process.returncode
