"""Raw Streamable HTTP helpers (httpx2, no SDK) for wire-level tests."""

from __future__ import annotations

import json
from typing import Any

import httpx2

ACCEPT_BOTH = "application/json, text/event-stream"
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}


def initialize(http: httpx2.Client, *, version: str = "2025-11-25", capabilities: dict | None = None) -> str:
    response = http.post("/mcp", json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": capabilities or {},
                   "clientInfo": {"name": "raw", "version": "1"}}},
        headers={"accept": ACCEPT_BOTH})
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
              headers={"accept": ACCEPT_BOTH, "mcp-session-id": session_id})
    return session_id


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The JSON messages in an SSE body (comments skipped)."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data and "".join(data):
            messages.append(json.loads("".join(data)))
    return messages


def messages_of(response: httpx2.Response) -> list[dict[str, Any]]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return parse_sse(response.text)
    return [response.json()]


def session_headers(session_id: str, version: str = "2025-11-25") -> dict[str, str]:
    return {"accept": ACCEPT_BOTH, "mcp-session-id": session_id, "mcp-protocol-version": version}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"accept": ACCEPT_BOTH, "mcp-protocol-version": MODERN, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


def modern_request(request_id: int | str, method: str, params: dict | None = None) -> dict[str, Any]:
    body = dict(params or {})
    body["_meta"] = dict(ENVELOPE, **body.get("_meta", {}))
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body}
