"""Helpers of the replica and rotation tests: a platform whose catalog runs `replica_probe.py`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import docker
import httpx2

from stockade.orchestrator.spec import owner_id
from tests.conftest import RunningPlatform, start_platform

PROBE_SOURCE = (Path(__file__).parent / "replica_probe.py").read_text()


def start_probe_platform(data_dir: Path) -> RunningPlatform:
    entry = {"name": "probe", "build": {"pypi": "mcp-server-time==2026.10.19"}, "resources": "small",
             "command": ["python3", "-c", PROBE_SOURCE],
             "required_env": [{"name": "ROTATED_KEY", "secret": True, "description": "a key the probe digests"}]}
    (data_dir / "catalog.yaml").write_text(f"version: 1\nservers:\n  - {json.dumps(entry)}\n")
    return start_platform(data_dir, STOCKADE_CATALOG_FILE=str(data_dir / "catalog.yaml"),
                          STOCKADE_RATE_LIMIT_PER_MINUTE="600000", STOCKADE_RATE_LIMIT_BURST="10000")


def key_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def containers(client: docker.DockerClient, platform: RunningPlatform, slug: str) -> list:
    labels = ["io.stockade.managed=true", f"io.stockade.server={slug}", f"io.stockade.owner={owner_id(platform.data_dir)}"]
    return client.containers.list(all=True, filters={"label": labels})


def networks(client: docker.DockerClient, platform: RunningPlatform, slug: str) -> list:
    labels = ["io.stockade.managed=true", f"io.stockade.server={slug}", f"io.stockade.owner={owner_id(platform.data_dir)}"]
    return client.networks.list(filters={"label": labels})


def deploy(platform: RunningPlatform, slug: str, key: str, replicas: int) -> str:
    """Deploy the probe; returns a member token for calls."""
    with platform.api() as api:
        created = api.post("/deployments", json={"server": "probe", "slug": slug, "replicas": replicas,
                                                  "env": {"ROTATED_KEY": key}})
        assert created.status_code == 201, created.text
        return api.post("/members/admin/tokens", json={"name": slug}).json()["token"]


def call(http: httpx2.Client, platform: RunningPlatform, slug: str, tool: str, arguments: dict | None = None) -> httpx2.Response:
    return http.post(f"{platform.gateway_url}/api/v1/servers/{slug}/tools/{tool}:call", json=arguments or {})


def whoami(http: httpx2.Client, platform: RunningPlatform, slug: str) -> dict:
    response = call(http, platform, slug, "whoami")
    assert response.status_code == 200, response.text
    return json.loads(response.json()["content"][0]["text"])


def status(platform: RunningPlatform, slug: str) -> dict:
    return httpx2.get(f"{platform.control_url}/api/v1/deployments/{slug}", headers=platform.admin_headers, timeout=30).json()
