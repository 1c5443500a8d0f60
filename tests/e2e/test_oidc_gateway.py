"""OIDC at the gateway on the real stack: JWTs from a local issuer, mapped to roles."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import RunningPlatform, hold_stream, start_platform, stop_platform
from tests.gateway.issuer import LocalIssuer

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    running = LocalIssuer().start()
    running.reset()  # one RSA and one EC key, published
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def oidc_platform(tmp_path_factory: pytest.TempPathFactory, issuer: LocalIssuer, docker_client: object) -> Iterator[RunningPlatform]:
    data_dir: Path = tmp_path_factory.mktemp("oidc-platform")
    config = {"issuer": issuer.url, "audience": "https://mcp.example.test", "role_map": {"engineers": "member"},
              "required_scopes": ["mcp:tools"], "jwks_min_refresh_seconds": 1}
    platform = start_platform(data_dir, STOCKADE_OIDC=json.dumps(config))
    with platform.api() as api:
        assert api.post("/deployments", json={"server": "time"}).status_code == 201
    try:
        yield platform
    finally:
        with platform.api() as api:
            api.delete("/deployments/time")
        stop_platform(platform)


def post_list(platform: RunningPlatform, token: str) -> httpx2.Response:
    return httpx2.post(
        f"{platform.gateway_url}/servers/time/mcp",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                 "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"},
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
    )


def test_valid_jwt_is_admitted_and_audited(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    response = post_list(oidc_platform, issuer.token(aud="https://mcp.example.test"))
    assert response.status_code == 200, response.text
    rest = httpx2.get(f"{oidc_platform.gateway_url}/api/v1/tools",
                      headers={"Authorization": f"Bearer {issuer.token(aud='https://mcp.example.test')}"})
    assert rest.status_code == 200 and any(t["name"] == "get_current_time" for t in rest.json()["tools"])
    with oidc_platform.api() as api:
        rows = api.get("/audit", params={"member": "ada@example.com"}).json()
    assert rows and all(r["token_id"].startswith("oidc:") for r in rows)


@pytest.mark.parametrize("overrides, why", [
    ({"aud": "https://elsewhere.example.test"}, "audience"),
    ({"aud": "https://mcp.example.test", "exp": 1}, "expired"),
    ({"aud": "https://mcp.example.test", "groups": ["visitors"]}, "role"),
])
def test_bad_jwts_get_401(oidc_platform: RunningPlatform, issuer: LocalIssuer, overrides: dict, why: str) -> None:
    response = post_list(oidc_platform, issuer.token(**overrides))
    assert response.status_code == 401, (why, response.text)
    assert response.headers["www-authenticate"].startswith("Bearer resource_metadata=")
    assert 'scope="mcp:tools"' in response.headers["www-authenticate"]


def test_alg_none_is_refused(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    unsigned = issuer.unsigned(issuer.claims(aud="https://mcp.example.test"))
    assert post_list(oidc_platform, unsigned).status_code == 401


def test_missing_scope_is_403_insufficient_scope(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    response = post_list(oidc_platform, issuer.token(aud="https://mcp.example.test", scope="openid"))
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_key_rotation_is_picked_up(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    new_kid = issuer.add_key("EC")
    token = issuer.token(kid=new_kid, aud="https://mcp.example.test")
    # The gateway refetches keys for an unknown kid at most once a second: retry across that bound.
    statuses = []
    for _ in range(20):
        statuses.append(post_list(oidc_platform, token).status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.25)
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {401}


def test_protected_resource_metadata_names_the_issuer(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    for path in ("", "/servers/time/mcp"):
        metadata = httpx2.get(f"{oidc_platform.gateway_url}/.well-known/oauth-protected-resource{path}").json()
        assert metadata["authorization_servers"] == [issuer.url]
        assert metadata["resource"].endswith(path)
        assert metadata["scopes_supported"] == ["mcp:tools"]


def test_offboarded_member_jwts_are_refused(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    with oidc_platform.api() as api:
        api.post("/members", json={"name": "grace@example.com", "role": "member"})
        assert api.post("/members/grace@example.com/offboard").status_code == 200
    token = issuer.token(aud="https://mcp.example.test", email="grace@example.com")
    assert post_list(oidc_platform, token).status_code == 401


def test_open_stream_ends_when_its_jwt_expires(oidc_platform: RunningPlatform, issuer: LocalIssuer) -> None:
    lifetime = 5
    token = issuer.token(aud="https://mcp.example.test", exp=int(time.time()) + lifetime)
    init = post_list(oidc_platform, token)
    assert init.status_code == 200, init.text
    url = f"{oidc_platform.gateway_url}/servers/time/mcp"
    headers = {"Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25",
               "Mcp-Session-Id": init.headers["mcp-session-id"], "Content-Type": "application/json"}
    httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    stream = hold_stream(url, headers)
    assert stream.connected.wait(30) and stream.statuses == [200]
    # Nothing revokes the token: only its expiry can end the stream (the client's timeout is 120 s).
    assert stream.ended.wait(lifetime + 30), "the SSE stream outlived the JWT that opened it"
