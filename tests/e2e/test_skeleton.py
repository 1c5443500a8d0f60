"""The walking skeleton, end to end on the real engine: deploy `time`, call it through the gateway
with the official MCP SDK, check the audit row and the container's hardening, then tear down."""

from __future__ import annotations

import json
import subprocess

import anyio
import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from stockade.orchestrator.spec import network_name, owner_id
from tests.conftest import RunningPlatform

pytestmark = pytest.mark.docker

PLANTED_ZONE = "Pacific/Chatham"


@pytest.fixture(scope="module")
def time_server(platform: RunningPlatform) -> dict:
    with platform.api() as api:
        response = api.post("/deployments", json={"server": "time"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def member_token(platform: RunningPlatform) -> str:
    with platform.api() as api:
        assert api.post("/members", json={"name": "ada", "role": "member"}).status_code == 201
        minted = api.post("/members/ada/tokens", json={"name": "laptop"})
    assert minted.status_code == 201
    return minted.json()["token"]


async def call_time(url: str, token: str | None, mode: str = "auto") -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            assert "get_current_time" in {tool.name for tool in tools.tools}
            result = await client.call_tool("get_current_time", {"timezone": PLANTED_ZONE})
            assert not result.is_error, result
            return result.content[0].text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_tool_call_through_the_gateway(platform: RunningPlatform, time_server: dict, member_token: str, mode: str) -> None:
    assert time_server["status"] == "running"
    assert time_server["endpoint"] == f"{platform.gateway_url}/servers/time/mcp"
    text = anyio.run(call_time, time_server["endpoint"], member_token, mode)
    assert PLANTED_ZONE in text


def test_no_token_or_a_wrong_one_is_refused(platform: RunningPlatform, time_server: dict) -> None:
    url = time_server["endpoint"]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in (None, "Bearer stk_wrong_token", "Basic YWRtaW46YWRtaW4="):
        sent = dict(headers, Authorization=auth) if auth else headers
        response = httpx2.post(url, json=body, headers=sent)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer resource_metadata="')


def test_audit_row_without_argument_values(platform: RunningPlatform, time_server: dict, member_token: str) -> None:
    anyio.run(call_time, time_server["endpoint"], member_token, "auto")
    with platform.api() as api:
        rows = api.get("/audit", params={"member": "ada", "tool": "get_current_time"}).json()
        raw = api.get("/audit", params={"limit": 1000}).text
    assert rows, "no audit row for the tool call"
    row = rows[-1]
    assert row["server"] == "time" and row["method"] == "tools/call" and row["outcome"] == "ok"
    assert row["latency_ms"] is not None and row["token_id"] and row["request_id"] is not None
    assert PLANTED_ZONE not in raw and "Chatham" not in raw
    assert PLANTED_ZONE.encode() not in platform.database_bytes()


def server_labels(platform: RunningPlatform, slug: str) -> list[str]:
    return ["io.stockade.managed=true", f"io.stockade.server={slug}", f"io.stockade.owner={owner_id(platform.data_dir)}"]


def test_container_is_hardened(platform: RunningPlatform, docker_client: docker.DockerClient, time_server: dict) -> None:
    [container] = docker_client.containers.list(filters={"label": server_labels(platform, "time")})
    inspect = container.attrs
    host = inspect["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"] or "no-new-privileges" in host["SecurityOpt"]
    assert inspect["Config"]["User"] not in ("", "0", "root") and not inspect["Config"]["User"].startswith("0:")
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in host["Tmpfs"]
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] > 0 and host["PidsLimit"] > 0
    assert host["Privileged"] is False and host["PortBindings"] in (None, {})
    networks = inspect["NetworkSettings"]["Networks"]
    assert list(networks) == [network_name("time", owner_id(platform.data_dir))]
    assert docker_client.networks.get(list(networks)[0]).attrs["Internal"] is True
    mounts = [m.get("Source", "") for m in inspect["Mounts"]]
    assert not any("docker.sock" in m for m in mounts)
    dumped = json.dumps(inspect)
    with_token = subprocess.run(["docker", "inspect", container.id], capture_output=True, text=True).stdout
    assert "stk_" not in dumped and "stk_" not in with_token


def test_teardown_leaves_nothing(platform: RunningPlatform, docker_client: docker.DockerClient, member_token: str) -> None:
    with platform.api() as api:
        created = api.post("/deployments", json={"server": "time", "slug": "time-two"})
        assert created.status_code == 201, created.text
        assert api.delete("/deployments/time-two").status_code == 204
        assert api.get("/deployments/time-two").status_code == 404
    leftovers = docker_client.containers.list(all=True, filters={"label": server_labels(platform, "time-two")})
    assert leftovers == []
    assert docker_client.networks.list(names=[network_name("time-two", owner_id(platform.data_dir))]) == []
    response = httpx2.post(
        f"{platform.gateway_url}/servers/time-two/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": f"Bearer {member_token}", "Accept": "application/json, text/event-stream"},
    )
    assert response.status_code == 404
