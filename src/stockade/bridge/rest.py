"""The small REST surface: `GET /tools` and `POST /tools/{name}/call`.

For callers that do not speak MCP (the gateway's REST API, scripts). Answers are the backend's own
JSON (`{"tools": [...]}` across all pages; the CallToolResult), HTTP-mapped: 404 unknown tool,
400 bad arguments, 502 backend failure, 503 not ready, 504 timeout.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .backend import NotReady
from .hub import Hub
from .jsonrpc import INVALID_PARAMS, JSON, METHOD_NOT_FOUND
from .multiplexer import AnswerOnlyPeer
from .streamable import BodyTooLarge, ClientGone, read_body

MAX_PAGES = 100


def _error(status: int, code: str, description: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": description, **extra}, status_code=status)


class Rest:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.backend = hub.backend

    async def _call(self, method: str, params: JSON) -> JSON | None:
        """One backend request from a REST caller (its own peer: never sent server requests)."""
        peer = AnswerOnlyPeer()
        call = self.backend.open(peer, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                                 streaming=False)
        with anyio.move_on_after(self.hub.options.request_timeout):
            while True:
                message = await call.inbox.get()
                if message is call.response:
                    return message
        self.hub.mux.cancel(call, "no answer in time", answer=False)
        return None

    async def list_tools(self) -> list[JSON] | JSONResponse:
        tools: list[JSON] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            answer = await self._call("tools/list", {"cursor": cursor} if cursor else {})
            if answer is None:
                return _error(504, "timeout", "the server did not list its tools in time")
            result = answer.get("result")
            if not isinstance(result, dict):
                return _error(502, "backend_error", "the server failed to list its tools", detail=answer.get("error"))
            tools.extend(t for t in result.get("tools") or [] if isinstance(t, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor or cursor in seen:
                return tools
            seen.add(cursor)
        return tools

    async def tools(self, request: Request) -> Response:
        try:
            await self.backend.wait_ready(self.hub.options.ready_timeout)
            listing = await self.list_tools()
        except NotReady as exc:
            return JSONResponse({"error": "not_ready", "error_description": str(exc), **exc.detail}, status_code=503)
        if isinstance(listing, Response):
            return listing
        return JSONResponse({"tools": listing})

    async def call_tool(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = await read_body(request.receive, self.hub.options.max_body)
        except BodyTooLarge:
            return _error(413, "request_too_large", f"the body exceeds {self.hub.options.max_body} bytes")
        except ClientGone:
            return Response(status_code=499)
        try:
            arguments = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            return _error(400, "invalid_json", "the body must be a JSON object of arguments")
        if not isinstance(arguments, dict):
            return _error(400, "invalid_arguments", "the body must be a JSON object of arguments")
        try:
            await self.backend.wait_ready(self.hub.options.ready_timeout)
            answer = await self._call("tools/call", {"name": name, "arguments": arguments})
        except NotReady as exc:
            return JSONResponse({"error": "not_ready", "error_description": str(exc), **exc.detail}, status_code=503)
        if answer is None:
            return _error(504, "timeout", f"the server did not answer {name} in time")
        result = answer.get("result")
        error = answer.get("error") if isinstance(answer.get("error"), dict) else None
        if isinstance(result, dict) and not result.get("isError"):
            return JSONResponse(result)
        if await self._unknown(name):
            return _error(404, "unknown_tool", f"the server has no tool {name!r}")
        if isinstance(result, dict):
            return JSONResponse(result)  # a tool error is a result (isError), not an HTTP failure
        code = error.get("code") if error else None
        if code == INVALID_PARAMS:
            return _error(400, "invalid_arguments", str(error.get("message") if error else "invalid arguments"),
                          detail=error)
        if code == METHOD_NOT_FOUND:
            return _error(404, "unknown_tool", str(error.get("message") if error else "not found"), detail=error)
        return _error(502, "backend_error", str(error.get("message") if error else "the server failed"), detail=error)

    async def _unknown(self, name: str) -> bool:
        try:
            listing = await self.list_tools()
        except NotReady:
            return False
        if isinstance(listing, Response):
            return False
        return all(tool.get("name") != name for tool in listing)
