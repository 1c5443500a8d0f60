"""The management API has no anonymous route: walk every route in its OpenAPI document."""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.conftest import RunningPlatform

OPEN_ROUTES = {("GET", "/health")}


@pytest.fixture(scope="module")
def member_token(platform: RunningPlatform) -> str:
    with platform.api() as api:
        assert api.post("/members", json={"name": "walker", "role": "member"}).status_code == 201
        return api.post("/members/walker/tokens", json={}).json()["token"]


def test_openapi_is_served_and_every_route_needs_an_admin(platform: RunningPlatform, member_token: str) -> None:
    document = httpx2.get(f"{platform.control_url}/api/openapi.json").json()
    routes = [(method.upper(), path) for path, item in document["paths"].items() for method in item]
    assert len(routes) >= 10
    checked = 0
    for method, path in routes:
        if (method, path) in OPEN_ROUTES:
            continue
        url = platform.control_url + re.sub(r"\{[^}]+\}", "x", path)
        for headers, expected in (({}, 401), ({"Authorization": "Bearer stk_bogus_value"}, 401),
                                  ({"Authorization": f"Bearer {member_token}"}, 403)):
            response = httpx2.request(method, url, headers=headers, json={})
            assert response.status_code == expected, (method, path, headers, response.text)
            assert "error" in response.json()
        checked += 1
    assert checked == len(routes) - len(OPEN_ROUTES)


def test_bad_input_gets_clear_errors(platform: RunningPlatform) -> None:
    with platform.api() as api:
        unknown = api.post("/deployments", json={"server": "no-such-server"})
        assert unknown.status_code == 404 and "no catalog entry" in unknown.json()["error"]
        undeclared = api.post("/deployments", json={"server": "time", "slug": "t2", "env": {"SURPRISE": "1"}})
        assert undeclared.status_code == 422 and "SURPRISE" in undeclared.json()["error"]
        bad_slug = api.post("/deployments", json={"server": "time", "slug": "Not A Slug"})
        assert bad_slug.status_code == 422
        assert api.post("/members", json={"name": "x", "role": "root"}).status_code == 422
        assert api.post("/members/nobody/tokens", json={}).status_code == 404
        assert api.delete("/tokens/doesnotexist").status_code == 404
        assert api.get("/deployments").json() == [] or all(d["slug"] != "t2" for d in api.get("/deployments").json())
        # A NUL character (PostgreSQL text cannot hold one): the same clear 422 on either store.
        for refused in (api.get("/audit", params={"server": "a\x00b"}),
                        api.post("/members", json={"name": "nul\u0000member", "role": "member"}),
                        api.get("/deployments/a%00b")):
            assert refused.status_code == 422 and "NUL character" in refused.json()["error"], refused.text
        assert all(m["name"] != "nul\x00member" for m in api.get("/members").json())


def test_cli_mirrors_the_api(platform: RunningPlatform) -> None:
    added = platform.cli("members", "add", "cli-user", "--json")
    assert '"cli-user"' in added.stdout
    minted = platform.cli("tokens", "mint", "cli-user", "--name", "ci")
    token = minted.stdout.strip().splitlines()[-1]
    assert token.startswith("stk_")
    listed = platform.cli("tokens", "list", "--member", "cli-user", "--json")
    assert token not in listed.stdout and '"ci"' in listed.stdout
    refused = platform.cli("members", "list", token=token, check=False)
    assert refused.returncode == 1 and "admin token" in refused.stderr
    bad = platform.cli("deploy", "time", "--env", "novalue", check=False)
    assert bad.returncode == 1 and "NAME=VALUE" in bad.stderr
    verify = platform.cli("audit", "verify")
    assert "intact" in verify.stdout
