"""The few JSON-RPC facts the gateway needs: what a body asks, and what a response says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000..-32099) used by the gateway.
UPSTREAM_UNAVAILABLE = -32001
PERMISSION_DENIED = -32003

NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


@dataclass(frozen=True)
class Call:
    """A client request as far as authorization and audit care."""

    id: Any
    method: str
    name: str | None  # tool or prompt name, resource URI

    @property
    def request_id(self) -> str:
        return json.dumps(self.id)


def parse_call(message: Any) -> Call | None:
    """The request in a single JSON-RPC message, or None for notifications and responses."""
    if not isinstance(message, dict) or "method" not in message or "id" not in message:
        return None
    method = message["method"]
    params = message.get("params")
    name = None
    if isinstance(method, str) and method in NAMED_METHODS and isinstance(params, dict):
        value = params.get(NAMED_METHODS[method])
        name = value if isinstance(value, str) else None
    return Call(id=message["id"], method=str(method), name=name)


@dataclass(frozen=True)
class Outcome:
    outcome: str  # ok | error | tool_error
    error_code: int | None = None


def outcome_of(response: dict[str, Any]) -> Outcome:
    if "error" in response:
        error = response["error"]
        code = error.get("code") if isinstance(error, dict) else None
        return Outcome("error", code if isinstance(code, int) else None)
    result = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return Outcome("tool_error")
    return Outcome("ok")


def error_response(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
