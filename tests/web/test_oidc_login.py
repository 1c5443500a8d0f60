"""Dashboard sign-in through OIDC, in Chromium, against a local issuer on loopback.

The issuer (`tests/gateway/issuer.py`) is a real authorization server over HTTP: its login form,
authorization codes, PKCE check and signed ID tokens. Its URL names `localhost` while the dashboard
is on 127.0.0.1, so the issuer is another *site*, as a real one is: the redirect back is a
cross-site navigation, which is what the cookies' SameSite choices must survive.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import start_platform, stop_platform
from tests.gateway.issuer import LocalIssuer, free_port
from tests.web.conftest import Watched, WebPlatform, watch

CLIENT_ID = "stockade-dashboard"
CLIENT_SECRET = "dashboard-client-secret-4f1c"  # registered at the test issuer below
ROLE_MAP = {"platform-admins": "admin", "engineers": "member"}


def oidc_env(issuer_url: str) -> dict[str, str]:
    return {
        "STOCKADE_OIDC": json.dumps({"issuer": issuer_url, "role_map": ROLE_MAP}),
        "STOCKADE_OIDC_CLIENT_ID": CLIENT_ID,
        "STOCKADE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
    }


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    running = LocalIssuer(host="localhost").start()
    running.reset()
    running.add_user("ada", email="ada@example.test", groups=["platform-admins"])
    running.add_user("bob", email="bob@example.test", groups=["engineers"])
    running.add_user("eve", email="eve@example.test", groups=["visitors"])
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory, issuer: LocalIssuer) -> Iterator[WebPlatform]:
    data_dir: Path = tmp_path_factory.mktemp("web-oidc")
    running = start_platform(data_dir, **oidc_env(issuer.url))
    issuer.register_client(CLIENT_ID, f"{running.control_url}/ui/auth/callback", secret=CLIENT_SECRET)
    try:
        yield WebPlatform(running)
    finally:
        stop_platform(running)


@pytest.fixture
def browsing(browser: Browser, sso: WebPlatform, issuer: LocalIssuer) -> Iterator[Watched]:
    issuer.status = 200
    with watch(browser, sso) as seen:
        yield seen
    issuer.status = 200


def to_issuer(watched: Watched, issuer: LocalIssuer) -> dict[str, list[str]]:
    """From the dashboard's sign-in page to the issuer's login form; the authorization request's parameters."""
    watched.goto("/login")
    link = watched.page.get_by_role("link", name=f"Sign in with {urlsplit(issuer.url).netloc}")
    expect(link).to_be_visible()
    link.click()
    expect(watched.page.get_by_label("User name")).to_be_visible()
    assert watched.page.url.startswith(f"{issuer.url}/authorize?")
    return parse_qs(urlsplit(watched.page.url).query)


def sign_in_at_issuer(watched: Watched, user: str) -> None:
    watched.page.get_by_label("User name").fill(user)
    watched.page.get_by_role("button", name="Continue").click()
    watched.page.wait_for_load_state()


def session_cookies(watched: Watched) -> list[dict]:
    return [c for c in watched.context.cookies() if c["name"] == "stockade_session"]


def assert_signed_out(watched: Watched) -> None:
    assert not session_cookies(watched)
    watched.goto("/catalog")
    expect(watched.page).to_have_url(f"{watched.web.ui}/login?next=%2Fui%2Fcatalog")


def test_admin_signs_in_with_oidc_and_out_again(browsing: Watched, issuer: LocalIssuer) -> None:
    tokens_before = issuer.count("token")
    browsing.goto("/login")
    browsing.shot("login-oidc")
    request = to_issuer(browsing, issuer)
    # the authorization request: code flow, PKCE S256, state and nonce; no secret in the browser
    assert request["response_type"] == ["code"] and request["client_id"] == [CLIENT_ID]
    assert request["code_challenge_method"] == ["S256"] and len(request["code_challenge"][0]) == 43
    assert len(request["state"][0]) >= 32 and len(request["nonce"][0]) >= 32
    assert request["redirect_uri"] == [f"{browsing.web.ui}/auth/callback"]
    assert "openid" in request["scope"][0].split()
    pending = [c for c in browsing.context.cookies() if c["name"] == "stockade_oidc"]
    assert pending and pending[0]["httpOnly"] and pending[0]["sameSite"] == "Lax"
    browsing.shot("oidc-issuer-login")

    sign_in_at_issuer(browsing, "ada")
    expect(browsing.page).to_have_url(f"{browsing.web.ui}/catalog")
    expect(browsing.page.get_by_text("Signed in as ada@example.test.")).to_be_visible()
    expect(browsing.page.locator(".who")).to_contain_text("ada@example.test")
    assert issuer.count("token") == tokens_before + 1  # the code was exchanged server-side
    (cookie,) = session_cookies(browsing)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert not [c for c in browsing.context.cookies() if c["name"] == "stockade_oidc"]
    # the session works on every page, and no secret of the flow reached the browser
    for page in ("/servers", "/members", "/audit"):
        assert browsing.goto(page).status == 200
    for _, _, body in browsing.bodies:
        assert CLIENT_SECRET.encode() not in body
    browsing.shot("catalog-after-oidc")

    # replaying the issuer's answer (the code and state are single-use) signs no one in
    callback = next(url for url, _, _ in browsing.bodies if "/ui/auth/callback?" in url)
    browsing.page.goto(callback)
    expect(browsing.page.get_by_role("alert")).to_contain_text("unknown to this browser or has expired")

    browsing.goto("/catalog")
    browsing.page.get_by_role("button", name="Sign out").click()
    expect(browsing.page).to_have_url(f"{browsing.web.ui}/login")
    assert_signed_out(browsing)
    assert not browsing.errors and not browsing.csp_violations()


def test_non_admin_is_refused_with_403_and_no_session(browsing: Watched, issuer: LocalIssuer) -> None:
    to_issuer(browsing, issuer)
    with browsing.page.expect_response(lambda r: "/ui/auth/callback" in r.url) as answer:
        sign_in_at_issuer(browsing, "bob")
    assert answer.value.status == 403
    expect(browsing.page.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(browsing.page.get_by_role("alert")).to_contain_text("role here is 'member'; the dashboard is for admins")
    browsing.shot("oidc-refused")
    assert_signed_out(browsing)


def test_unmapped_user_is_refused_and_gets_no_session(browsing: Watched, issuer: LocalIssuer) -> None:
    to_issuer(browsing, issuer)
    sign_in_at_issuer(browsing, "eve")
    expect(browsing.page.get_by_role("alert")).to_contain_text("maps to a Stockade role")
    assert_signed_out(browsing)


def test_tampered_state_is_refused(browsing: Watched, issuer: LocalIssuer) -> None:
    tokens_before = issuer.count("token")
    to_issuer(browsing, issuer)
    # the issuer echoes `state` from its form: change it, as an attacker replaying another answer would
    browsing.page.locator("input[name=state]").evaluate("(input) => { input.value = 'forged-' + input.value; }")
    with browsing.page.expect_response(lambda r: "/ui/auth/callback" in r.url) as answer:
        sign_in_at_issuer(browsing, "ada")
    assert answer.value.status == 401
    expect(browsing.page.get_by_role("alert")).to_contain_text("state mismatch")
    assert issuer.count("token") == tokens_before  # refused before the code was ever used
    assert_signed_out(browsing)


def test_issuer_failing_at_the_token_endpoint_is_explained(browsing: Watched, issuer: LocalIssuer) -> None:
    to_issuer(browsing, issuer)
    issuer.status = 503
    with browsing.page.expect_response(lambda r: "/ui/auth/callback" in r.url) as answer:
        sign_in_at_issuer(browsing, "ada")
    assert answer.value.status == 502
    expect(browsing.page.get_by_role("heading", name="Identity provider unavailable")).to_be_visible()
    expect(browsing.page.get_by_role("alert")).to_contain_text("token endpoint answered HTTP 503")
    assert_signed_out(browsing)


def test_issuer_down_is_explained(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No issuer listens at the configured URL: the sign-in button leads to a clear 502 page."""
    issuer_url = f"http://localhost:{free_port()}"
    running = start_platform(tmp_path_factory.mktemp("web-oidc-down"), **oidc_env(issuer_url))
    try:
        with watch(browser, WebPlatform(running)) as seen:
            seen.goto("/login")
            with seen.page.expect_response(lambda r: "/ui/auth/start" in r.url) as answer:
                seen.page.get_by_role("link", name=f"Sign in with {urlsplit(issuer_url).netloc}").click()
            assert answer.value.status == 502
            expect(seen.page.get_by_role("heading", name="Identity provider unavailable")).to_be_visible()
            expect(seen.page.get_by_role("alert")).to_contain_text("identity provider unreachable")
            assert not session_cookies(seen)
    finally:
        stop_platform(running)


def test_login_page_without_oidc_says_so(web: WebPlatform) -> None:
    page = httpx2.get(f"{web.ui}/login", timeout=30).text
    assert "Single sign-on (OIDC) is not configured." in page and "/ui/auth/start" not in page
    assert httpx2.get(f"{web.ui}/auth/start", timeout=30).status_code == 404
