"""The servers page's actions beyond start/stop: rotate a secret, resource use, log tail.

Needs the Docker engine and the orchestrator; fails, never skips, when either is missing. The
server is deployed through the management API (the deploy dialog has its own test) and the
actions are driven in Debian's Chromium.
"""

from __future__ import annotations

import re
import secrets

import docker
import httpx2
from playwright.sync_api import expect

from stockade.orchestrator.spec import LABEL_SERVER
from tests.web.conftest import Watched, form_post
from tests.web.test_dashboard import EXPECTED_CSP

DEPLOY_TIMEOUT_S = 15 * 60  # a first image build downloads and installs the package
ROTATE_TIMEOUT_MS = 5 * 60 * 1000


def _container_ids(client: docker.DockerClient, slug: str) -> set[str]:
    return {c.id for c in client.containers.list(filters={"label": f"{LABEL_SERVER}={slug}"})}


def _assert_page_is_strict(watched: Watched, path: str) -> str:
    response = watched.goto(path)
    assert response.status == 200, path
    assert response.headers["content-security-policy"] == EXPECTED_CSP, path
    html = watched.page.content()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"inline script on {path}"
    assert not re.search(r"\sstyle=", html), f"inline style attribute on {path}"
    return html


def test_rotate_secret_resource_use_and_log_tail(watched: Watched, docker_client: docker.DockerClient) -> None:
    first = f"planted-first-{secrets.token_urlsafe(18)}"
    rotated = f"planted-rotated-{secrets.token_urlsafe(18)}"
    slug = f"rot-{secrets.token_hex(3)}"
    with httpx2.Client(base_url=f"{watched.web.platform.control_url}/api/v1",
                       headers=watched.web.platform.admin_headers, timeout=DEPLOY_TIMEOUT_S) as api:
        created = api.post("/deployments", json={"server": "keyed-time", "slug": slug,
                                                 "env": {"PLANTED_API_KEY": first, "GREETING": "hello"}})
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "running"
    before = _container_ids(docker_client, slug)
    assert before, "no container carries the server's label"

    page = watched.page
    page.on("dialog", lambda dialog: dialog.accept())
    watched.login()
    try:
        # -- the row offers the three actions, none disabled, and no "coming soon" note -------------------
        html = _assert_page_is_strict(watched, "/servers")
        assert "Coming soon" not in html and "Not available yet" not in html
        row = page.locator(f"#server-{slug}")
        expect(row.locator("[data-status]")).to_have_attribute("data-status", "running")
        opener = row.get_by_role("link", name="Rotate secret…")
        expect(opener).to_be_visible()
        expect(row.get_by_role("link", name=f"Log tail of {slug}")).to_be_visible()

        # -- health and resource use on the row itself (measured after the page loads) -------------------
        health = row.locator(".health")
        expect(health.locator(".replicas")).to_have_text("1 of 1 replica running")
        expect(health.locator(".restarts")).to_contain_text("restarts: 0")
        usage = row.locator(f"#usage-{slug}")
        memory = usage.locator("[data-memory-bytes]")
        expect(memory).to_contain_text(re.compile(r"\d+(\.\d)? (B|KiB|MiB|GiB) of 192\.0 MiB \(\d+(\.\d)?%\)"))
        assert int(memory.get_attribute("data-memory-bytes") or "0") > 0
        expect(usage.get_by_role("meter", name=f"Memory of {slug} against its limit")).to_be_visible()
        expect(usage).to_contain_text(re.compile(r"CPU\s*\d+\.\d% of 50% allowed"))
        expect(usage).to_contain_text(re.compile(r"Processes\s*\d+ of 64"))
        measured_at = usage.locator(".usage-foot .muted").inner_text()
        refresh = usage.get_by_role("button", name=f"Measure the resource use of {slug} again")
        refresh.focus()
        page.keyboard.press("Enter")  # keyboard use: a real button
        expect(usage.locator("[data-memory-bytes]")).to_be_visible()
        assert usage.locator(".usage-foot .muted").inner_text().startswith("at ") and measured_at.startswith("at ")
        watched.shot("servers-resources")

        # -- the dialog: keyboard-opened, password input, Escape forgets what was typed ------------------
        opener.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name=f"Rotate secrets of {slug}")
        expect(dialog).to_be_visible()
        secret_input = dialog.get_by_label(re.compile("PLANTED_API_KEY"))
        assert secret_input.get_attribute("type") == "password"
        assert secret_input.get_attribute("autocomplete") == "off"
        expect(secret_input).to_be_focused()
        assert dialog.get_by_label(re.compile("GREETING")).get_attribute("type") == "text"
        expect(dialog).to_contain_text(re.compile(r"set on \d{4}-\d{2}-\d{2}"))
        secret_input.fill("typed-then-cancelled")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        # The dialog's "close" event (dispatched as a task after it hides) resets its form.
        expect(page.locator(f"#rotate-{slug}-PLANTED_API_KEY")).to_have_value("")

        # -- rotate with a new planted value ---------------------------------------------------------
        opener.click()
        expect(dialog).to_be_visible()
        dialog.get_by_label(re.compile("PLANTED_API_KEY")).fill(rotated)
        dialog.get_by_role("button", name=f"Rotate and restart {slug}").click()
        expect(page).to_have_url(re.compile(r"/ui/servers"))
        expect(page.get_by_role("status").filter(has_text=f"Rotating PLANTED_API_KEY of {slug}")).to_be_visible()
        row = page.locator(f"#server-{slug}")
        status = row.locator("[data-status]")
        # the row polls while the fresh container starts, then settles
        expect(row.locator(".muted", has_text="updating")).to_have_count(0, timeout=ROTATE_TIMEOUT_MS)
        expect(status).to_have_attribute("data-status", re.compile(r"^(running|failed|crash-loop)$"),
                                         timeout=ROTATE_TIMEOUT_MS)
        assert status.get_attribute("data-status") == "running", row.inner_text()
        expect(row.locator(".vars-set")).to_contain_text(re.compile(r"PLANTED_API_KEY\s+secret\s+set on \d{4}-\d{2}-\d{2}"))
        after = _container_ids(docker_client, slug)
        assert after and not (after & before), "the server was not moved onto a fresh container"
        watched.shot("servers-rotated")

        # -- resource use and the log tail -----------------------------------------------------------
        row.get_by_role("link", name=f"Log tail of {slug}").click()
        expect(page).to_have_url(re.compile(rf"/ui/servers/{slug}/logs"))
        expect(page.get_by_role("heading", name="Log tail", exact=True)).to_be_visible()
        expect(page.get_by_role("heading", name="Resource use", exact=True)).to_be_visible()
        memory = page.locator("[data-memory-bytes]")
        expect(memory).to_contain_text(re.compile(r"\d+(\.\d)? (B|KiB|MiB|GiB) of \d+(\.\d)? (MiB|GiB) \(\d+(\.\d)?%\)"))
        assert int(memory.get_attribute("data-memory-bytes") or "0") > 0
        expect(page.locator(".resource-use")).to_contain_text("Processes")
        expect(page.locator("pre.log").or_(page.get_by_text("No output"))).to_be_visible()
        page.get_by_role("link", name="Refresh").first.click()
        expect(page.get_by_role("heading", name="Log tail", exact=True)).to_be_visible()
        page.get_by_role("link", name="50 lines").click()
        expect(page.get_by_role("link", name="50 lines")).to_have_attribute("aria-current", "true")
        watched.shot("server-logs")
        # an unlisted tail is bounded back to the default
        expect(page.get_by_role("heading", name="Log tail", exact=True)).to_be_visible()
        watched.goto(f"/servers/{slug}/logs?tail=100000")
        expect(page.get_by_role("link", name="200 lines")).to_have_attribute("aria-current", "true")

        # -- the page without JavaScript: the rotate form on a page of its own -------------------------
        _assert_page_is_strict(watched, f"/servers/{slug}/rotate")
        expect(page.get_by_role("heading", name=f"Rotate secrets of {slug}")).to_be_visible()
        assert page.get_by_label(re.compile("PLANTED_API_KEY")).input_value() == ""

        # -- neither value appears in any page or response -------------------------------------------
        seen_html = [_assert_page_is_strict(watched, path) for path in
                     ["/servers", f"/servers/{slug}/logs", f"/servers/{slug}/logs?tail=1000", f"/servers/{slug}/rotate",
                      "/catalog", "/audit"]]
        for value in (first, rotated):
            assert all(value not in html for html in seen_html)
            leaks = [url for url, _status, body in watched.bodies if value.encode() in body]
            assert leaks == [], f"a planted value came back in {leaks}"
        assert watched.bodies, "no responses were captured"
        for path in sorted(p for p in watched.web.data_dir.rglob("*") if p.is_file()):
            assert rotated.encode() not in path.read_bytes(), f"plaintext secret in {path}"

        # -- refusals: no CSRF token, nothing entered, undeclared names ignored -------------------------
        csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
        assert form_post(watched, f"/servers/{slug}/rotate", {"env.PLANTED_API_KEY": "x"}).status == 403
        refused = form_post(watched, f"/servers/{slug}/rotate", {"csrf_token": csrf, "env.NOT_DECLARED": "x"})
        assert refused.status == 303
        watched.goto("/servers")
        expect(page.get_by_role("alert")).to_contain_text(f"Nothing rotated on {slug}")
        assert _container_ids(docker_client, slug) == after

        # -- a stopped server: "not running", and the row still offers its pages -----------------------
        page.locator(f"#server-{slug}").get_by_role("button", name="Stop").click()
        expect(page.get_by_role("status").filter(has_text=f"Stopped {slug}")).to_be_visible()
        watched.goto(f"/servers/{slug}/logs")
        expect(page.locator("#resources")).to_contain_text("Not running")
        assert watched.csp_violations() == []
        assert watched.errors == []
    finally:
        with watched.web.api() as api:
            api.delete(f"/deployments/{slug}")
