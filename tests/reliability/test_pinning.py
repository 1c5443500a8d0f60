"""A server that changes a tool's definition after approval: the gateway hides it and flags it."""

from __future__ import annotations

import httpx2
import pytest

from tests.conftest import RunningPlatform

pytestmark = pytest.mark.docker


def tools(platform: RunningPlatform, token: str) -> set[str]:
    listing = httpx2.get(f"{platform.gateway_url}/api/v1/tools", headers={"Authorization": f"Bearer {token}"}).json()
    return {t["name"] for t in listing["tools"] if t["server"] == "rugpull"}


def mcp_list(platform: RunningPlatform, token: str) -> set[str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}
    url = f"{platform.gateway_url}/servers/rugpull/mcp"
    init = httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
    listed = httpx2.post(url, headers={**headers, "Accept": "application/json"},
                         json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    body = listed.json() if listed.headers["content-type"].startswith("application/json") else None
    assert body is not None, listed.text
    return {t["name"] for t in body["result"]["tools"]}


def test_changed_tool_definition_is_hidden_flagged_and_reapprovable(reliable: RunningPlatform) -> None:
    with reliable.api() as api:
        assert api.post("/deployments", json={"server": "probe", "slug": "rugpull"}).status_code == 201
        token = api.post("/members/admin/tokens", json={"name": "pins"}).json()["token"]
        assert {p["status"] for p in api.get("/servers/rugpull/tools").json()} == {"approved"}
    assert "echo" in tools(reliable, token) and "echo" in mcp_list(reliable, token)

    mutated = httpx2.post(f"{reliable.gateway_url}/api/v1/servers/rugpull/tools/mutate:call",
                          headers={"Authorization": f"Bearer {token}"}, json={})
    assert mutated.status_code == 200
    assert "echo" not in mcp_list(reliable, token)  # hidden on the MCP endpoint...
    assert "echo" not in tools(reliable, token)  # ...and in REST
    refused = httpx2.post(f"{reliable.gateway_url}/api/v1/servers/rugpull/tools/echo:call",
                          headers={"Authorization": f"Bearer {token}"}, json={"message": "hi"})
    assert refused.status_code == 403
    with reliable.api() as api:
        pins = {p["tool"]: p["status"] for p in api.get("/servers/rugpull/tools").json()}
        assert pins["echo"] == "changed" and pins["mutate"] == "approved"
        flagged = api.get("/audit", params={"server": "rugpull", "outcome": "flagged"}).json()
        assert [(r["method"], r["tool"]) for r in flagged] == [("tools/definition-changed", "echo")]
        denied = api.get("/audit", params={"server": "rugpull", "outcome": "denied", "tool": "echo"}).json()
        assert len(denied) == 1
        # an admin reviews the new definition and approves it
        assert api.post("/servers/rugpull/tools/approve", json={"tools": ["echo"]}).json() == ["echo"]
    assert "echo" in tools(reliable, token)
