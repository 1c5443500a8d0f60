"""JSON-RPC 2.0 / MCP wire vocabulary, as plain dicts.

The bridge never validates messages into models: it reads the few keys it routes on (`id`,
`method`, `params._meta.progressToken`, ...) and leaves everything else untouched, so unknown fields
and future protocol additions pass through byte-for-byte equivalent (modulo JSON whitespace).
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeAlias

JSON: TypeAlias = dict[str, Any]
RequestId: TypeAlias = int | str

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
CONNECTION_CLOSED: Final = -32000
REQUEST_TIMEOUT: Final = -32001
HEADER_MISMATCH: Final = -32020
MISSING_REQUIRED_CLIENT_CAPABILITY: Final = -32021
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022

HANDSHAKE_VERSIONS: Final[tuple[str, ...]] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
"""Revisions negotiated with `initialize` (sessions, GET stream), oldest first."""
MODERN_VERSIONS: Final[tuple[str, ...]] = ("2026-07-28",)
"""Stateless revisions (per-request `_meta` envelope, `server/discover`)."""
LATEST_HANDSHAKE: Final = HANDSHAKE_VERSIONS[-1]
LATEST_MODERN: Final = MODERN_VERSIONS[-1]
DEFAULT_NEGOTIATED_VERSION: Final = "2025-03-26"
"""What a legacy request without an MCP-Protocol-Version header is taken to speak (spec)."""

PROTOCOL_VERSION_META: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_META: Final = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_META: Final = "io.modelcontextprotocol/clientCapabilities"
LOG_LEVEL_META: Final = "io.modelcontextprotocol/logLevel"
SERVER_INFO_META: Final = "io.modelcontextprotocol/serverInfo"
SUBSCRIPTION_ID_META: Final = "io.modelcontextprotocol/subscriptionId"
ENVELOPE_META_PREFIX: Final = "io.modelcontextprotocol/"

NAME_BEARING_METHODS: Final[dict[str, str]] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Method -> the params key mirrored in the `Mcp-Name` header (2026-07-28)."""

CACHEABLE_METHODS: Final = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read", "server/discover"}
)
"""Methods whose 2026-07-28 results carry `ttlMs` / `cacheScope`."""

REMOVED_IN_MODERN: Final = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
"""Requests that do not exist at 2026-07-28: a client of that revision gets 404 / -32601 for them."""

LIST_CHANGED_NOTIFICATIONS: Final = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
"""Backend notifications every client may see, and the `subscriptions/listen` filter key for each."""
RESOURCE_UPDATED: Final = "notifications/resources/updated"


def is_request(message: JSON) -> bool:
    return "method" in message and "id" in message


def is_notification(message: JSON) -> bool:
    return "method" in message and "id" not in message


def is_response(message: JSON) -> bool:
    return "method" not in message and "id" in message and ("result" in message or "error" in message)


def valid_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def error_object(code: int, message: str, data: Any = None) -> JSON:
    error: JSON = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> JSON:
    return {"jsonrpc": "2.0", "id": request_id, "error": error_object(code, message, data)}


def result_response(request_id: RequestId, result: JSON) -> JSON:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def notification(method: str, params: JSON | None = None) -> JSON:
    message: JSON = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def dumps(message: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept as is)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def params_of(message: JSON) -> JSON | None:
    params = message.get("params")
    return params if isinstance(params, dict) else None


def meta_of(message: JSON) -> JSON | None:
    params = params_of(message)
    if params is None:
        return None
    meta = params.get("_meta")
    return meta if isinstance(meta, dict) else None


def progress_token_of(message: JSON) -> RequestId | None:
    meta = meta_of(message)
    if meta is None:
        return None
    token = meta.get("progressToken")
    return token if valid_id(token) else None
