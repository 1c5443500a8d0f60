"""Deploying through the credentials dialog: the planted secret never comes back out.

Needs the Docker engine and the orchestrator (`stockade.orchestrator.runtime`); fails, never skips,
when either is missing.
"""

from __future__ import annotations

import re
import secrets

import docker
from playwright.sync_api import expect

from tests.web.conftest import Watched

DEPLOY_TIMEOUT_MS = 15 * 60 * 1000  # a first image build downloads and installs the package


def test_deploy_with_credentials_never_shows_or_stores_the_secret_in_plaintext(
    watched: Watched, docker_client: docker.DockerClient
) -> None:
    planted = f"planted-{secrets.token_urlsafe(24)}"
    slug = f"keyed-{secrets.token_hex(3)}"
    page = watched.page
    page.on("dialog", lambda dialog: dialog.accept())
    watched.login()
    watched.goto("/deploy")
    page.get_by_role("link", name="Deploy keyed-time…").click()
    dialog = page.get_by_role("dialog", name="Deploy keyed-time")
    expect(dialog).to_be_visible()
    dialog.get_by_label(re.compile("Name of this deployment")).fill(slug)
    secret_input = dialog.get_by_label(re.compile("PLANTED_API_KEY"))
    assert secret_input.get_attribute("type") == "password"
    assert secret_input.get_attribute("autocomplete") == "off"
    secret_input.fill(planted)
    dialog.get_by_label(re.compile("GREETING")).fill("hello")
    dialog.get_by_role("button", name="Deploy keyed-time").click()

    expect(page).to_have_url(re.compile(r"/ui/servers"))
    row = page.locator(f"#server-{slug}")
    status = row.locator("[data-status]")
    expect(status).to_have_attribute("data-status", re.compile(r"^(running|failed|crash-loop)$"), timeout=DEPLOY_TIMEOUT_MS)
    watched.shot("servers")
    assert status.get_attribute("data-status") == "running", row.inner_text()
    variables = row.locator(".vars-set")
    expect(variables).to_contain_text(re.compile(r"PLANTED_API_KEY\s+secret\s+set on \d{4}-\d{2}-\d{2}"))
    expect(variables).to_contain_text(re.compile(r"GREETING\s+set on \d{4}-\d{2}-\d{2}"))
    expect(row).to_contain_text(f"/servers/{slug}/mcp")

    # every page of the dashboard, as HTML, without the value
    seen_html = []
    for path in ["/servers", "/catalog", "/deploy", "/deploy/keyed-time", "/members", "/audit", "/verification"]:
        watched.goto(path)
        seen_html.append(page.content())
    assert all(planted not in html for html in seen_html)
    # nor any response the browser received (HTML, fragments polled by htmx, assets)
    assert watched.bodies, "no responses were captured"
    leaks = [url for url, _status, body in watched.bodies if planted.encode() in body]
    assert leaks == []
    # nor anything in the data directory in plaintext: database, its WAL, logs
    for path in sorted(p for p in watched.web.data_dir.rglob("*") if p.is_file()):
        assert planted.encode() not in path.read_bytes(), f"plaintext secret in {path}"

    # and it is removed through the page
    watched.goto("/servers")
    row.get_by_role("button", name="Remove").click()
    expect(page.get_by_role("status").filter(has_text=f"Removed {slug}")).to_be_visible()
    expect(page.locator(f"#server-{slug}")).to_have_count(0)
    assert watched.csp_violations() == []
