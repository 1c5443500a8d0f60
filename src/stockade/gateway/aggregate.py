"""One MCP endpoint, `/mcp`, offering every tool the caller may use on every running server.

Tools are renamed `<server>__<tool>` (server slugs never contain `_`, so the split is
unambiguous) and each call is routed, authorized and audited like a call to that server's own
endpoint. The MCP side is the official SDK's server and session manager (both protocol eras,
sessions, SSE); the upstream side is each bridge's REST surface, which needs no session.
Progress notifications and server-to-client requests of upstream tools are not relayed here:
use `/servers/<slug>/mcp` for tools that need them.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from stockade import __version__
from stockade.gateway import jsonrpc
from stockade.gateway.identity import Principal
from stockade.gateway.upstream import ServerDirectory

SEPARATOR = "__"
AGGREGATE = "*"  # the "server" that aggregated sessions belong to in the stream registry


def split_name(name: str) -> tuple[str, str] | None:
    slug, sep, tool = name.partition(SEPARATOR)
    return (slug, tool) if sep and slug and tool else None


def _principal(ctx: Any) -> Principal:
    request = ctx.request
    principal = getattr(getattr(request, "state", None), "principal", None)
    if not isinstance(principal, Principal):  # the route admits no request without one
        raise RuntimeError("aggregated MCP request without an authenticated principal")
    return principal


def create_aggregate_server(directory: ServerDirectory, proxy_of: Any) -> StreamableHTTPSessionManager:
    """`proxy_of()` returns the gateway's `McpProxy` (created in the app's lifespan)."""

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        principal, proxy = _principal(ctx), proxy_of()
        return types.ListToolsResult(tools=[
            types.Tool.model_validate({**tool, "name": f"{upstream.slug}{SEPARATOR}{tool['name']}"})
            for upstream, tool in await proxy.tools_for(principal, await directory.running())
        ])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        principal, proxy = _principal(ctx), proxy_of()
        parts = split_name(params.name)
        upstream = await directory.resolve(parts[0]) if parts else None
        if parts is None or upstream is None:
            raise MCPError(jsonrpc.INVALID_PARAMS, f"unknown tool {params.name!r}")
        response = await proxy.rest_call(principal, upstream, parts[1], dict(params.arguments or {}))
        payload = json.loads(bytes(response.body))
        if response.status_code == 403:
            raise MCPError(jsonrpc.PERMISSION_DENIED, f"tool {params.name!r} is not available to you")
        if response.status_code >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(message or "call failed"))], is_error=True)
        return types.CallToolResult.model_validate(payload)

    server: Server[Any] = Server("stockade-gateway", version=__version__, on_list_tools=list_tools, on_call_tool=call_tool)
    return StreamableHTTPSessionManager(server, json_response=False, session_idle_timeout=1800)
