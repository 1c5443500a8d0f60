"""The gateway on the real stack: denial paths first, then routing, revocation, pinning, audit."""

from __future__ import annotations

import json
import threading

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningPlatform, hold_stream

pytestmark = pytest.mark.docker
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def deployed(platform: RunningPlatform) -> RunningPlatform:
    with platform.api() as api:
        for server in ("time", "everything"):
            response = api.post("/deployments", json={"server": server})
            assert response.status_code == 201, response.text
    return platform


def mint(platform: RunningPlatform, member: str, role: str = "member") -> str:
    with platform.api() as api:
        assert api.post("/members", json={"name": member, "role": role}).status_code in (201, 409)
        response = api.post(f"/members/{member}/tokens", json={"name": "test"})
        assert response.status_code == 201, response.text
        return response.json()["token"]


async def session_tools(url: str, token: str) -> set[str]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            return {tool.name for tool in (await client.list_tools()).tools}


async def call(url: str, token: str, tool: str, arguments: dict) -> object:
    try:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                return await client.call_tool(tool, arguments)
    except BaseExceptionGroup as group:  # the client's task groups wrap the one error that matters
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from None


def audit_rows(platform: RunningPlatform, **filters: str) -> list[dict]:
    with platform.api() as api:
        return api.get("/audit", params={"limit": 1000, **filters}).json()


def test_role_hides_and_refuses_forbidden_tools(deployed: RunningPlatform) -> None:
    with deployed.api() as api:
        rules = [{"effect": "allow", "server": "time", "kind": "tool", "name": "*"},
                 {"effect": "deny", "server": "time", "kind": "tool", "name": "convert_*"}]
        assert api.put("/roles/time-reader", json={"rules": rules}).status_code == 200
        assert api.post("/members", json={"name": "reader", "role": "time-reader"}).status_code == 201
        token = api.post("/members/reader/tokens", json={}).json()["token"]
    url = f"{deployed.gateway_url}/servers/time/mcp"
    assert anyio.run(session_tools, url, token) == {"get_current_time"}
    with pytest.raises(MCPError) as refused:
        anyio.run(call, url, token, "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
    assert "not available" in str(refused.value)
    denied = audit_rows(deployed, member="reader", outcome="denied")
    assert [(r["server"], r["tool"]) for r in denied] == [("time", "convert_time")]
    # Another server is not granted at all: its list is empty and calls are refused.
    assert anyio.run(session_tools, f"{deployed.gateway_url}/servers/everything/mcp", token) == set()


def test_aggregated_endpoint_merges_and_routes(deployed: RunningPlatform) -> None:
    token = mint(deployed, "agg")
    url = f"{deployed.gateway_url}/mcp"
    tools = anyio.run(session_tools, url, token)
    assert {"time__get_current_time", "everything__echo"} <= tools
    result = anyio.run(call, url, token, "time__get_current_time", {"timezone": "Asia/Kathmandu"})
    assert not result.is_error and "Asia/Kathmandu" in result.content[0].text
    echoed = anyio.run(call, url, token, "everything__echo", {"message": "routed"})
    assert "routed" in echoed.content[0].text
    rows = audit_rows(deployed, member="agg", tool="get_current_time")
    assert rows and rows[-1]["server"] == "time" and rows[-1]["outcome"] == "ok"
    with pytest.raises(MCPError):
        anyio.run(call, url, token, "nosuchserver__tool", {})


def test_rest_surface(deployed: RunningPlatform) -> None:
    token = mint(deployed, "rest")
    headers = {"Authorization": f"Bearer {token}"}
    listing = httpx2.get(f"{deployed.gateway_url}/api/v1/tools", headers=headers).json()["tools"]
    assert {("time", "get_current_time"), ("everything", "echo")} <= {(t["server"], t["name"]) for t in listing}
    called = httpx2.post(f"{deployed.gateway_url}/api/v1/servers/time/tools/get_current_time:call",
                         headers=headers, json={"timezone": "UTC"})
    assert called.status_code == 200 and "UTC" in json.dumps(called.json())
    assert httpx2.get(f"{deployed.gateway_url}/api/v1/tools").status_code == 401
    bad = httpx2.post(f"{deployed.gateway_url}/api/v1/servers/time/tools/get_current_time:call",
                      headers=headers, content=b"[1,2]")
    assert bad.status_code == 400


def test_query_string_tokens_are_refused(deployed: RunningPlatform) -> None:
    token = mint(deployed, "query")
    response = httpx2.post(f"{deployed.gateway_url}/servers/time/mcp?access_token={token}",
                           headers={**ACCEPT, "Authorization": f"Bearer {token}"},
                           json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 401 and "query" in response.json()["error_description"]


def test_revocation_closes_the_open_stream_and_the_next_request_fails(deployed: RunningPlatform) -> None:
    with deployed.api() as api:
        api.post("/members", json={"name": "leaver", "role": "member"})
        minted = api.post("/members/leaver/tokens", json={}).json()
    token, url = minted["token"], f"{deployed.gateway_url}/servers/time/mcp"
    headers = {**ACCEPT, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
    init = httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert init.status_code == 200, init.text
    session = init.headers["mcp-session-id"]
    headers["Mcp-Session-Id"] = session
    httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    stream = hold_stream(url, headers, timeout=60)
    assert stream.connected.wait(30) and stream.statuses == [200]
    assert not stream.ended.is_set()
    with deployed.api() as api:
        revoked = api.delete(f"/tokens/{minted['id']}").json()
    assert revoked["revoked_at"] is not None and revoked["streams_closed"] >= 1 and revoked["sessions_closed"] >= 1
    assert stream.ended.wait(30), "the open SSE stream was not closed after revocation"
    after = httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert after.status_code == 401


def test_offboarding_revokes_every_token(deployed: RunningPlatform) -> None:
    first, second = mint(deployed, "offboarded"), mint(deployed, "offboarded")
    result = deployed.cli("members", "offboard", "offboarded", "--json")
    report = json.loads(result.stdout)
    assert len(report["tokens_revoked"]) == 2
    for token in (first, second):
        response = httpx2.get(f"{deployed.gateway_url}/api/v1/tools", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


def test_hostile_input_gets_clear_answers(deployed: RunningPlatform) -> None:
    token = mint(deployed, "hostile")
    url = f"{deployed.gateway_url}/servers/time/mcp"
    auth = {"Authorization": f"Bearer {token}"}
    big = httpx2.post(url, headers={**ACCEPT, **auth}, content=b'{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}')
    assert big.status_code == 413
    garbage = httpx2.post(url, headers={**ACCEPT, **auth}, content=b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
    batch = httpx2.post(url, headers={**ACCEPT, **auth}, json=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert batch.status_code == 400 and "batch" in batch.json()["error"]["message"]
    wrong_type = httpx2.post(url, headers={**auth, "Content-Type": "text/plain"}, content=b"hello")
    assert wrong_type.status_code == 415
    for response in (big, garbage, batch, wrong_type):
        assert "Traceback" not in response.text


def test_audit_chain_edit_is_caught_by_verify(deployed: RunningPlatform) -> None:
    token = mint(deployed, "chain")
    anyio.run(call, f"{deployed.gateway_url}/servers/time/mcp", token, "get_current_time", {"timezone": "UTC"})
    row = audit_rows(deployed, member="chain", tool="get_current_time")[-1]
    assert "intact" in deployed.cli("audit", "verify").stdout
    deployed.sql("UPDATE audit SET outcome = 'denied' WHERE id = :id", id=row["id"])
    broken = deployed.cli("audit", "verify", check=False)
    assert broken.returncode == 1
    assert str(row["id"]) in broken.stdout and "edited" in broken.stdout
    deployed.sql("UPDATE audit SET outcome = 'ok' WHERE id = :id", id=row["id"])
    assert deployed.cli("audit", "verify").returncode == 0


def test_audit_export_is_json_lines_with_hashes(deployed: RunningPlatform) -> None:
    token = mint(deployed, "exporter")
    anyio.run(call, f"{deployed.gateway_url}/servers/time/mcp", token, "get_current_time", {"timezone": "UTC"})
    exported = deployed.cli("audit", "export", "--member", "exporter").stdout
    records = [json.loads(line) for line in exported.splitlines()]
    assert records and {r["member"] for r in records} == {"exporter"}
    assert all(len(r["hash"]) == 64 and len(r["prev_hash"]) == 64 for r in records)
    assert "get_current_time" in {r["tool"] for r in records}
