"""Helpers: the official `mcp` SDK client pointed at a bridge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .conftest import Bridge


async def answer_sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    prompt = params.messages[0].content
    text = getattr(prompt, "text", "")
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=f"echo:{text}"),
                                     model="test-model")


async def answer_elicitation(ctx: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"answer": "blue"})


async def answer_roots(ctx: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/root-a", name="a")])


def sdk_client(bridge: Bridge, mode: str = "legacy", **kwargs: Any) -> Client:
    http = httpx2.AsyncClient(headers=bridge.headers, timeout=httpx2.Timeout(60, read=120))
    kwargs.setdefault("sampling_callback", answer_sampling)
    kwargs.setdefault("elicitation_callback", answer_elicitation)
    kwargs.setdefault("list_roots_callback", answer_roots)
    return Client(streamable_http_client(bridge.url, http_client=http), mode=mode, **kwargs)


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(timeout):
            return await fn()

    return anyio.run(bounded)


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent), block
    return block.text
