"""Newline-delimited JSON framing of a stdio server's stdout.

Pure and synchronous, so it can be property-tested: `LineFramer.feed` takes whatever chunk the pipe
gave (partial lines, many lines, a line split anywhere, even inside a UTF-8 sequence) and returns the
complete lines; a line longer than `max_line` is dropped whole (counted in `dropped`) without ever
buffering more than `max_line` bytes of it. `decode_line` turns one line into JSON-RPC messages,
tolerating invalid UTF-8 (replaced, logged) and skipping non-JSON output (logged by the caller).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_LINE = 16 * 1024 * 1024


@dataclass
class LineFramer:
    max_line: int = DEFAULT_MAX_LINE
    dropped: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines in `data` (with what was buffered before), without their line ending."""
        lines: list[bytes] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            piece = data[start:newline]
            start = newline + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(self._buffer) + len(piece) > self.max_line:
                self._buffer.clear()
                self.dropped += 1
                continue
            if self._buffer:
                self._buffer += piece
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = piece
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.strip():
                lines.append(line)
        rest = data[start:]
        if rest and not self._discarding:
            if len(self._buffer) + len(rest) > self.max_line:
                self._buffer.clear()
                self._discarding = True
                self.dropped += 1
            else:
                self._buffer += rest
        return lines

    def finish(self) -> list[bytes]:
        """At end of stream: the unterminated last line, if any (and not oversized)."""
        line = bytes(self._buffer).rstrip(b"\r")
        self._buffer.clear()
        self._discarding = False
        return [line] if line.strip() else []


@dataclass(frozen=True)
class Decoded:
    messages: list[dict[str, Any]]
    invalid_utf8: bool = False
    not_json: bool = False


def decode_line(line: bytes) -> Decoded:
    """JSON-RPC messages on one line: an object, or a (2025-03-26) batch of objects.

    Invalid UTF-8 is replaced with U+FFFD rather than dropping the message (a dropped response would
    leave its caller waiting); anything that is not JSON, or JSON that is not an object or a list of
    objects, is reported as `not_json` so the caller can log and skip it.
    """
    invalid = False
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = line.decode("utf-8", errors="replace")
        invalid = True
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return Decoded([], invalid, True)
    if isinstance(value, dict):
        return Decoded([value], invalid)
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return Decoded(list(value), invalid)
    return Decoded([], invalid, True)
