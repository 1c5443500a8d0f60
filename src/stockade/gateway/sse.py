"""Split an SSE byte stream into whole events without altering them.

Hand-written because the gateway must forward every event byte for byte (ids for resumption,
`retry:` fields, priming events with empty data) while reading the JSON in each; parsers such as
httpx2's EventSource re-create events and drop the empty ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


async def split_events(chunks: AsyncIterator[bytes], *, max_event: int = 16 * 1024 * 1024) -> AsyncIterator[bytes]:
    """Yield each complete event including its terminating blank line; a trailing fragment last."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while (match := _BOUNDARY.search(buffer)) is not None:
            yield buffer[: match.end()]
            buffer = buffer[match.end() :]
        if len(buffer) > max_event:
            raise ValueError(f"an SSE event exceeds {max_event} bytes")
    if buffer:
        yield buffer


def event_json(event: bytes) -> Any | None:
    """The JSON payload of one event's `data:` lines, or None if it has none or it is not JSON."""
    lines = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        return json.loads(b"\n".join(lines))
    except ValueError:
        return None


def replace_event_data(event: bytes, data: str) -> bytes:
    """The same event (id, event type, retry kept) carrying `data` instead."""
    kept = [line for line in event.splitlines() if line and not line.startswith(b"data:")]
    return b"\n".join([*kept, b"data: " + data.encode()]) + b"\n\n"
