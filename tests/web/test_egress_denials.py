"""Denied egress, counted per server and shown on the dashboard, in Debian's Chromium.

A real platform with a catalog of one `egress` server (the time server, allowed one name); the
server's own Python, inside its container and with the proxy settings it was given, tries three
destinations the allowlist does not name; the servers page then shows the proxy's count. The
destinations are refused by the proxy itself (unlisted name, raw IP): nothing leaves the machine.
Needs the Docker engine; fails, never skips, when it is missing.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import docker
import pytest
from playwright.sync_api import expect

from stockade.orchestrator.spec import LABEL_SERVER
from tests.conftest import start_platform, stop_platform
from tests.web.conftest import TIME_PACKAGE, Watched, WebPlatform

DEPLOY_TIMEOUT_S = 15 * 60  # a first image build downloads and installs the package

CATALOG = f"""\
version: 1
servers:
  - name: fenced-time
    description: The time server behind an egress proxy that allows one name.
    build:
      pypi: {TIME_PACKAGE}
    command: [mcp-server-time]
    resources: small
    network: egress
    egress: ["allowed.example.test:443"]
"""

# Run by the server's own interpreter, with the server's environment (HTTP(S)_PROXY): what an MCP
# server's HTTP client does. Each attempt is refused by the proxy, which answers 403.
ATTEMPTS = r"""
import json, urllib.error, urllib.request
outcomes = []
for url in ("https://denied.example.test/", "http://denied.example.test/v1", "https://203.0.113.10/"):
    try:
        urllib.request.urlopen(url, timeout=10)
        outcomes.append("answered")
    except urllib.error.HTTPError as exc:
        outcomes.append(f"http {exc.code}")
    except OSError as exc:
        outcomes.append(f"refused {exc}")
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebPlatform]:
    """This module's platform: the dashboard fixtures (`watched`) use it instead of the shared one."""
    data_dir = tmp_path_factory.mktemp("egress-web")
    catalog = data_dir / "catalog.yaml"
    catalog.write_text(CATALOG)
    running = start_platform(data_dir, STOCKADE_CATALOG_FILE=str(catalog))
    try:
        yield WebPlatform(running)
    finally:
        try:
            with running.api() as api:
                for deployment in api.get("/deployments").json():
                    api.delete(f"/deployments/{deployment['slug']}")
        finally:
            stop_platform(running)


def _attempt_denied_egress(client: docker.DockerClient, slug: str) -> list[str]:
    [container] = client.containers.list(filters={"label": f"{LABEL_SERVER}={slug}"})
    python = container.attrs["Config"]["Entrypoint"][0]
    assert any(item.startswith("HTTPS_PROXY=") for item in container.attrs["Config"]["Env"])
    result = container.exec_run([python, "-c", ATTEMPTS], user="65534:65534")
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return json.loads(result.output.decode().strip().splitlines()[-1])


def test_denied_egress_is_counted_on_the_servers_page(watched: Watched, docker_client: docker.DockerClient) -> None:
    slug = f"fenced-{secrets.token_hex(3)}"
    with watched.web.api() as api:
        api.timeout = DEPLOY_TIMEOUT_S
        created = api.post("/deployments", json={"server": "fenced-time", "slug": slug})
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "running"

    page = watched.page
    watched.login()
    watched.goto("/servers")
    row = page.locator(f"#server-{slug}")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "running")
    expect(row).to_contain_text("egress proxy refused 0 requests")

    outcomes = _attempt_denied_egress(docker_client, slug)
    assert outcomes[0].startswith("refused") and "403" in outcomes[0], outcomes  # CONNECT refused
    assert outcomes[1] == "http 403", outcomes                                     # plain HTTP refused
    assert outcomes[2].startswith("refused") and "403" in outcomes[2], outcomes  # raw IP refused

    watched.goto("/servers")
    row = page.locator(f"#server-{slug}")
    expect(row).to_contain_text("egress proxy refused 3 requests")
    assert re.search(r"egress proxy refused 3 requests", row.inner_text())
    watched.shot("egress-denials")

    # a second attempt adds to the count: the page shows the proxy's running total
    _attempt_denied_egress(docker_client, slug)
    page.reload()
    expect(page.locator(f"#server-{slug}")).to_contain_text("egress proxy refused 6 requests")
    assert not watched.errors, watched.errors
    assert not watched.csp_violations(), watched.console
