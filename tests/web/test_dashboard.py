"""The dashboard in a real browser (Debian's Chromium via Playwright) against a real platform process."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta

import httpx2
from playwright.sync_api import expect

from stockade.gateway.audit import AuditEvent, AuditLog
from stockade.store.database import Database
from tests.web.conftest import Watched, WebPlatform, form_post

EXPECTED_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
PAGES = ["/catalog", "/deploy", "/servers", "/members", "/audit", "/verification"]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def accept_dialogs(watched: Watched) -> None:
    watched.page.on("dialog", lambda dialog: dialog.accept())


def api_member_token(web: WebPlatform, name: str, role: str = "member") -> str:
    with web.api() as api:
        assert api.post("/members", json={"name": name, "role": role}).status_code == 201
        minted = api.post(f"/members/{name}/tokens", json={"name": "t"})
        assert minted.status_code == 201, minted.text
        return minted.json()["token"]


def gateway_tools(web: WebPlatform, token: str) -> int:
    return httpx2.get(f"{web.platform.gateway_url}/api/v1/tools", headers={"Authorization": f"Bearer {token}"},
                      timeout=30).status_code


# -- signing in ------------------------------------------------------------------------------------
def test_anonymous_requests_go_to_the_sign_in_page(web: WebPlatform) -> None:
    for path in [*PAGES, "/audit/export.jsonl", "/deploy/time", "/servers/x/row"]:
        response = httpx2.get(web.ui + path, timeout=10)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login"), path
    for path in ["/members", "/tokens", "/deploy/time", "/servers/x/remove", "/tokens/x/revoke", "/logout"]:
        response = httpx2.post(web.ui + path, data={"name": "anonymous-post"}, timeout=10)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login", path
    with web.api() as api:
        assert "anonymous-post" not in [m["name"] for m in api.get("/members").json()]


def test_bad_token_is_refused_with_a_message_and_a_good_one_signs_in(watched: Watched) -> None:
    page = watched.page
    watched.goto("/login")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    token_input = page.get_by_label("Admin token")
    assert token_input.get_attribute("type") == "password"
    assert token_input.get_attribute("autocomplete") == "off"
    watched.shot("login")

    token_input.fill("stk_000000000000_not-a-real-token")
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        page.get_by_role("button", name="Sign in").click()
    assert refused.value.status == 401
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    assert not [c for c in watched.context.cookies() if c["name"] == "stockade_session"]

    member_token = api_member_token(watched.web, unique("plain"))
    page.get_by_label("Admin token").fill(member_token)
    with page.expect_response(lambda r: r.request.method == "POST") as not_admin:
        page.get_by_role("button", name="Sign in").click()
    assert not_admin.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("not an admin")

    watched.login()
    expect(page).to_have_url(re.compile(r"/ui/catalog$"))
    expect(page.get_by_role("heading", name="Catalog", exact=True)).to_be_visible()
    expect(page.get_by_text("Signed in as admin", exact=False).first).to_be_visible()
    session = [c for c in watched.context.cookies() if c["name"] == "stockade_session"]
    assert len(session) == 1
    assert session[0]["httpOnly"] is True
    assert session[0]["sameSite"] == "Strict"
    assert session[0]["secure"] is False  # plain http on loopback; Secure is set on https
    assert len(session[0]["value"]) >= 40
    assert watched.web.admin_token not in session[0]["value"]


def test_sign_in_returns_to_the_page_asked_for_and_sign_out_ends_the_session(watched: Watched) -> None:
    page = watched.page
    watched.goto("/audit?outcome=denied")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("Admin token").fill(watched.web.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui/audit\?outcome=denied$"))

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    watched.goto("/members")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_revoking_the_admin_token_ends_its_session_on_the_next_request(watched: Watched) -> None:
    name = unique("admin2")
    token = api_member_token(watched.web, name, role="admin")
    watched.login(token)
    expect(watched.page.locator(".who")).to_have_text(f"Signed in as {name}")
    token_id = token.split("_")[1]
    with watched.web.api() as api:
        assert api.delete(f"/tokens/{token_id}").status_code == 200
    watched.page.reload()
    expect(watched.page).to_have_url(re.compile(r"/ui/login"))
    expect(watched.page.get_by_role("heading", name="Sign in")).to_be_visible()


# -- headers, CSP, CSRF ------------------------------------------------------------------------------
def test_every_page_sends_a_strict_csp_and_the_browser_reports_no_violation(watched: Watched) -> None:
    login = watched.goto("/login")
    assert login.headers["content-security-policy"] == EXPECTED_CSP
    watched.login()
    for path in PAGES:
        response = watched.goto(path)
        assert response.status == 200, path
        headers = response.headers
        assert headers["content-security-policy"] == EXPECTED_CSP, path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert headers["cache-control"] == "no-store", path
        html = watched.page.content()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"inline script on {path}"
        assert not re.search(r"\sstyle=", html), f"inline style attribute on {path}"
        assert not re.search(r"<style", html), f"style element on {path}"
        assert not re.search(r"""(?:src|href|action)=["']?(?:https?:)?//""", html), f"off-site resource on {path}"
    # the scripts ran under the policy: htmx is loaded and the modal opens
    assert watched.page.evaluate("typeof window.htmx") == "object"
    watched.goto("/deploy")
    watched.page.get_by_role("link", name="Deploy time…").click()
    expect(watched.page.get_by_role("dialog", name="Deploy time")).to_be_visible()
    for name in ["htmx.min.js", "app.js", "app.css"]:
        asset = httpx2.get(f"{watched.web.ui}/static/{name}", timeout=10)
        assert asset.status_code == 200
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert watched.csp_violations() == []
    assert watched.errors == []


def test_a_form_post_without_the_csrf_token_is_refused(watched: Watched) -> None:
    watched.login()
    name = unique("csrf")
    assert form_post(watched, "/members", {"name": name, "role": "member"}).status == 403
    assert form_post(watched, "/members", {"name": name, "role": "member", "csrf_token": "forged"}).status == 403
    assert form_post(watched, "/logout", {}).status == 403
    with watched.web.api() as api:
        assert name not in [m["name"] for m in api.get("/members").json()]
    # the login form has its own token too
    fresh = watched.context.browser.new_context()  # type: ignore[union-attr]
    try:
        refused = fresh.request.post(f"{watched.web.ui}/login", form={"token": watched.web.admin_token}, max_redirects=0)
        assert refused.status == 403
        assert not [c for c in fresh.cookies() if c["name"] == "stockade_session"]
    finally:
        fresh.close()
    # the same form with the page's token works
    watched.goto("/members")
    csrf = watched.page.locator("meta[name=csrf-token]").get_attribute("content")
    accepted = form_post(watched, "/members", {"name": name, "role": "member", "csrf_token": csrf})
    assert accepted.status == 303
    with watched.web.api() as api:
        assert name in [m["name"] for m in api.get("/members").json()]


# -- catalog ----------------------------------------------------------------------------------------
def test_catalog_shows_variables_profiles_and_warns_loudly_about_open_network(watched: Watched) -> None:
    watched.login()
    page = watched.page
    watched.goto("/catalog")
    keyed = page.locator("#entry-keyed-time")
    expect(keyed.get_by_role("cell", name="PLANTED_API_KEY")).to_be_visible()
    expect(keyed.locator("tr", has_text="PLANTED_API_KEY")).to_contain_text("secret")
    expect(keyed.locator("tr", has_text="PLANTED_API_KEY")).to_contain_text("required")
    expect(keyed.locator("tr", has_text="GREETING")).to_contain_text("plain")
    expect(keyed).to_contain_text("192 MB memory")
    partner = page.locator("#entry-partner-api")
    expect(partner).to_contain_text("api.partner.example:443")
    expect(partner).to_contain_text("*.partner.example:443")
    expect(partner.locator(".warn-open")).to_have_count(0)
    browser_entry = page.locator("#entry-web-browser")
    expect(browser_entry.get_by_role("note")).to_contain_text("Open network")
    expect(browser_entry).to_contain_text("1024 MB memory")
    watched.shot("catalog")


# -- deploy modal (no engine needed) ------------------------------------------------------------------
def test_deploy_modal_is_keyboard_usable_and_collects_credentials_safely(watched: Watched) -> None:
    watched.login()
    page = watched.page
    watched.goto("/deploy")
    opener = page.get_by_role("link", name="Deploy keyed-time…")
    opener.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Deploy keyed-time")
    expect(dialog).to_be_visible()
    secret = dialog.get_by_label(re.compile("PLANTED_API_KEY"))
    assert secret.get_attribute("type") == "password"
    assert secret.get_attribute("autocomplete") == "off"
    assert secret.get_attribute("required") is not None
    assert dialog.get_by_label(re.compile("GREETING")).get_attribute("type") == "text"
    expect(dialog.get_by_label(re.compile("Name of this deployment"))).to_be_focused()
    secret.fill("typed-then-cancelled")
    watched.shot("deploy-modal")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(opener).to_be_focused()
    expect(page.locator("#env-keyed-time-PLANTED_API_KEY")).to_have_value("")  # a cancelled dialog forgets it

    # the server refuses a deploy without the required variable, and says which one
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    refused = form_post(watched, "/deploy/keyed-time", {"csrf_token": csrf, "slug": unique("nokey")})
    assert refused.status == 303
    watched.goto("/deploy")
    expect(page.get_by_role("alert")).to_contain_text("missing required variables: PLANTED_API_KEY")
    assert watched.csp_violations() == []


# -- members and tokens --------------------------------------------------------------------------------
def test_members_and_tokens_create_mint_once_revoke_offboard(watched: Watched) -> None:
    accept_dialogs(watched)
    watched.login()
    page = watched.page
    name = unique("dana")
    watched.goto("/members")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Role").select_option("member")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("status").filter(has_text=f"Member {name} created")).to_be_visible()
    expect(page.locator(f"#member-{name}")).to_contain_text("member")

    page.get_by_label("Member", exact=True).select_option(name)
    page.get_by_label("Token name").fill("laptop")
    page.get_by_role("button", name="Mint token").click()
    minted = page.locator("#minted")
    expect(minted).to_contain_text("shown only this once")
    token = page.locator("#minted-secret").inner_text().strip()
    token_id = page.locator("[data-token-id]").inner_text().strip()
    assert token.startswith(f"stk_{token_id}_")
    expect(page.get_by_role("button", name="Copy token")).to_be_visible()
    watched.shot("members-minted")
    assert gateway_tools(watched.web, token) == 200

    page.reload()
    expect(page.locator("#minted")).to_have_count(0)
    assert token not in page.content()
    row = page.locator(f"#token-{token_id}")
    expect(row).to_contain_text(token_id)
    expect(row).to_contain_text("active")
    watched.shot("members")

    row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(page.get_by_role("status").filter(has_text=f"Token {token_id} of {name} revoked")).to_be_visible()
    expect(page.locator(f"#token-{token_id}")).to_contain_text("revoked")
    assert gateway_tools(watched.web, token) == 401

    # offboarding revokes every remaining token of the member
    page.get_by_label("Member", exact=True).select_option(name)
    page.get_by_label("Token name").fill("ci")
    page.get_by_role("button", name="Mint token").click()
    second = page.locator("#minted-secret").inner_text().strip()
    assert gateway_tools(watched.web, second) == 200
    page.locator(f"#member-{name}").get_by_role("button", name=f"Offboard {name}").click()
    expect(page.get_by_role("status").filter(has_text=f"Offboarded {name}: 1 token(s) revoked")).to_be_visible()
    assert gateway_tools(watched.web, second) == 401
    with watched.web.api() as api:
        tokens = api.get("/tokens", params={"member": name}).json()
    assert [t["revoked_at"] is not None for t in tokens] == [True, True]
    assert watched.csp_violations() == []


# -- audit ----------------------------------------------------------------------------------------------
def seed_audit(web: WebPlatform, events: list[AuditEvent]) -> None:
    database = Database(web.platform.database_url)  # SQLite or PostgreSQL, whichever the platform runs on
    try:
        log = AuditLog(database)
        for event in events:
            log.append(event)
    finally:
        database.close()


def test_audit_filters_narrow_the_table_pagination_and_export(watched: Watched) -> None:
    alice, bob = unique("alice"), unique("bob")
    events = (
        [AuditEvent(alice, "a1", "time", "tools/call", "get_current_time", 3.5 + i, "ok") for i in range(30)]
        + [AuditEvent(alice, "a1", "time", "tools/call", "convert_time", 7.0, "denied", error_code=-32001) for _ in range(3)]
        + [AuditEvent(bob, "b1", "files", "tools/call", "read_file", 12.0, "error", error_code=-32603) for _ in range(4)]
    )
    seed_audit(watched.web, events)
    watched.login()
    page = watched.page
    watched.goto("/audit")
    expect(page.locator("#chain")).to_contain_text("intact")

    page.get_by_label("Member").fill(alice)
    page.get_by_label("Per page").select_option("25")
    page.get_by_role("button", name="Apply filters").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(25)
    expect(page).to_have_url(re.compile(f"member={alice}"))  # htmx pushed the filtered URL
    assert set(page.locator("table.audit td.c-member").all_inner_texts()) == {alice}
    page.locator("#next-page").click()
    expect(rows).to_have_count(8)
    assert set(page.locator("table.audit td.c-member").all_inner_texts()) == {alice}
    expect(page.locator("#next-page")).to_have_count(0)

    watched.goto("/audit")
    page.get_by_label("Member").fill(alice)
    page.get_by_label("Outcome").select_option("denied")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(3)
    assert set(page.locator("table.audit td.c-tool").all_inner_texts()) == {"convert_time"}
    watched.shot("audit")

    with page.expect_download() as download_info:
        page.locator("#export-link").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".jsonl")
    lines = [json.loads(line) for line in download.path().read_text().splitlines()]
    assert len(lines) == 3
    assert {(r["member"], r["outcome"], r["tool"]) for r in lines} == {(alice, "denied", "convert_time")}
    assert all(set(r) >= {"id", "ts", "hash", "prev_hash", "latency_ms"} for r in lines)

    watched.goto(f"/audit?server=files&tool=read_file&outcome=error&member={bob}")
    expect(rows).to_have_count(4)
    export = watched.context.request.get(f"{watched.web.ui}/audit/export.jsonl?member={bob}")
    assert export.status == 200
    assert export.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(line)["member"] for line in export.text().splitlines()] == [bob] * 4

    # a time range that ends before the records were written shows none of them
    past = (datetime.now(UTC) - timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%S")
    watched.goto(f"/audit?member={alice}&until={past}")
    expect(page.get_by_text("No records match.")).to_be_visible()
    assert watched.csp_violations() == []


# -- verification ----------------------------------------------------------------------------------------
def test_verification_page_shows_the_matrix_and_charts(watched: Watched) -> None:
    seed_audit(watched.web, [AuditEvent("carol", "c1", "time", "tools/call", "get_current_time", 20.0, o)
                             for o in ["ok", "ok", "ok", "denied", "error"]])
    watched.login()
    page = watched.page
    results = watched.web.data_dir / "verify" / "latest.json"
    results.unlink(missing_ok=True)
    watched.goto("/verification")
    expect(page.locator("#no-results")).to_be_visible()
    rerun = page.get_by_role("button", name="Re-run verification")
    expect(rerun).to_be_enabled()
    rerun.click()  # runs the real `stockade verify` on the platform host
    expect(page.get_by_text("Verification finished")).to_be_visible(timeout=300_000)
    assert results.exists()

    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({
        "generated_at": "2026-11-23T09:00:00Z",
        "results": [
            {"server": "time", "check": "tools-list", "status": "pass"},
            {"server": "time", "check": "no-egress", "status": "pass"},
            {"server": "everything", "check": "tools-list", "status": "pass"},
            {"server": "everything", "check": "no-egress", "status": "fail", "detail": "reached 203.0.113.9:443"},
        ],
    }))
    page.reload()
    matrix = page.locator("#verify-matrix")
    expect(matrix.locator("tbody tr")).to_have_count(2)
    expect(matrix.locator("tr", has_text="everything")).to_contain_text("fail")
    expect(matrix.locator("tr", has_text="everything")).to_contain_text("reached 203.0.113.9:443")
    expect(matrix.locator("tr", has_text="time")).not_to_contain_text("fail")
    expect(page.get_by_text("failures")).to_be_visible()
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(3)
    expect(page.locator("svg.chart rect.s-denied")).not_to_have_count(0)
    assert page.locator("svg.chart title").first.text_content() == "Call volume"
    page.get_by_role("link", name="last 7d").click()
    expect(page).to_have_url(re.compile(r"window=7d"))
    expect(charts).to_have_count(3)
    page.get_by_role("link", name="last 24h").click()
    watched.shot("verification")
    assert watched.csp_violations() == []


# -- servers page without a deployment ------------------------------------------------------------------
def test_servers_page_renders(watched: Watched) -> None:
    watched.login()
    watched.goto("/servers")
    expect(watched.page.get_by_role("heading", name="Servers")).to_be_visible()
    watched.shot("servers-empty")
    assert watched.csp_violations() == []
