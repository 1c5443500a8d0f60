"""Server-Sent Events framing and small ASGI response helpers (no Starlette response objects on
the hot path: one `http.response.start` and bodies written as they come)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.types import Send

from .jsonrpc import JSON, dumps

KEEPALIVE_SECONDS = 15.0
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
PING = b": ping\n\n"


def sse_event(message: JSON, event_id: int | str | None = None) -> bytes:
    head = b"id: %s\n" % str(event_id).encode() if event_id is not None else b""
    return head + b"event: message\ndata: " + dumps(message) + b"\n\n"


def header_list(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        *header_list(headers)]})
    await send({"type": "http.response.body", "body": payload})


async def send_empty(send: Send, status: int, headers: dict[str, str] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"0"), *header_list(headers)]})
    await send({"type": "http.response.body", "body": b""})


async def start_sse(send: Send, headers: dict[str, str] | None = None,
                    extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [*SSE_HEADERS, *header_list(headers), *extra]})


def http_error(code: str, description: str) -> JSON:
    """The JSON body of an HTTP-level refusal (same shape as the gateway's)."""
    return {"error": code, "error_description": description}
