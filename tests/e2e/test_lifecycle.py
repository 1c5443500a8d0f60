"""The deployment lifecycle on the real engine: secrets that never leak, crash restarts, adoption
after a control-plane restart, and convergence after the control plane dies mid-deploy."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from stockade.orchestrator.spec import owner_id
from tests.conftest import RunningPlatform, remove_deployments, start_platform, stop_platform, wait_for

pytestmark = pytest.mark.docker

TIME = "mcp-server-time==2026.10.19"  # as in the bundled catalog, so the image is shared
CATALOG = f"""\
version: 1
servers:
  - name: time
    build: {{pypi: {TIME}}}
    command: [mcp-server-time]
  - name: keyed
    description: the time server, given an API key it does not use
    build: {{pypi: {TIME}}}
    command: [mcp-server-time]
    required_env:
      - {{name: PLANTED_API_KEY, secret: true, description: an API key}}
    optional_env:
      - {{name: GREETING}}
"""


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[RunningPlatform]:
    data_dir: Path = tmp_path_factory.mktemp("lifecycle")
    (data_dir / "catalog.yaml").write_text(CATALOG)
    platform = start_platform(data_dir, STOCKADE_CATALOG_FILE=str(data_dir / "catalog.yaml"))
    try:
        yield platform
    finally:
        remove_deployments(platform)
        stop_platform(platform)


def containers(client: docker.DockerClient, platform: RunningPlatform, slug: str) -> list:
    labels = ["io.stockade.managed=true", f"io.stockade.server={slug}", f"io.stockade.owner={owner_id(platform.data_dir)}"]
    return client.containers.list(all=True, filters={"label": labels})


async def current_time(url: str, token: str) -> str:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            return result.content[0].text



def test_missing_required_variable_is_refused_up_front(lifecycle: RunningPlatform, docker_client: docker.DockerClient) -> None:
    with lifecycle.api() as api:
        response = api.post("/deployments", json={"server": "keyed", "slug": "keyless"})
        assert response.status_code == 422
        assert "PLANTED_API_KEY" in response.json()["error"]
        assert api.get("/deployments/keyless").status_code == 404
    assert containers(docker_client, lifecycle, "keyless") == []


def test_secrets_never_leak(lifecycle: RunningPlatform, docker_client: docker.DockerClient) -> None:
    first, second = f"planted-{uuid.uuid4().hex}", f"planted-{uuid.uuid4().hex}"
    responses: list[str] = []
    with lifecycle.api() as api:
        created = api.post("/deployments", json={"server": "keyed", "slug": "keyed",
                                                  "env": {"PLANTED_API_KEY": first, "GREETING": "hello"}})
        assert created.status_code == 201, created.text
        responses.append(created.text)
        token = api.post("/members/admin/tokens", json={"name": "sweep"}).json()["token"]
        assert "UTC" in anyio.run(current_time, created.json()["endpoint"], token)
        # rotate through the CLI, with the value on stdin (never on the command line)
        rotate = subprocess.run(
            [*lifecycle.cli_command(), "secrets", "rotate", "keyed", "PLANTED_API_KEY", "--stdin"],
            input=f"PLANTED_API_KEY={second}\n", env=lifecycle.cli_env(), capture_output=True, text=True, timeout=300)
        assert rotate.returncode == 0, rotate.stderr
        responses += [rotate.stdout, rotate.stderr]
        assert "UTC" in anyio.run(current_time, created.json()["endpoint"], token)
        for path in ("/deployments", "/deployments/keyed", "/deployments/keyed/variables", "/audit?limit=1000",
                     "/deployments/keyed/logs", "/catalog", "/members", "/tokens"):
            response = api.get(path)
            assert response.status_code == 200, (path, response.text)
            responses.append(response.text)
        variables = api.get("/deployments/keyed/variables").json()
        assert {v["name"]: v["secret"] for v in variables} == {"PLANTED_API_KEY": True, "GREETING": False}
        responses.append(lifecycle.cli("secrets", "list", "keyed", "--json").stdout)
        responses.append(lifecycle.cli("logs", "keyed").stdout)
    [container] = containers(docker_client, lifecycle, "keyed")
    inspected = subprocess.run(["docker", "inspect", container.id], capture_output=True, text=True).stdout
    image = subprocess.run(["docker", "image", "inspect", container.image.id], capture_output=True, text=True).stdout
    container_logs = subprocess.run(["docker", "logs", container.id], capture_output=True, text=True)
    places = {
        "API and CLI responses": "\n".join(responses),
        "docker inspect": inspected + image,
        "container logs": container_logs.stdout + container_logs.stderr,
        "platform logs": "".join(p.read_text(errors="replace") for p in lifecycle.data_dir.rglob("*.log*")),
        "database": lifecycle.database_bytes().decode("latin-1"),
        "data directory": "".join(p.read_bytes().decode("latin-1") for p in lifecycle.data_dir.rglob("*")
                                  if p.is_file() and p.stat().st_size < 50_000_000),
    }
    for place, text in places.items():
        for planted in (first, second):
            assert planted not in text, f"a planted secret value appears in {place}"
    assert "hello" not in places["docker inspect"]  # non-secret values travel the same sealed way


def test_crashed_container_is_restarted_and_the_death_is_visible(lifecycle: RunningPlatform, docker_client: docker.DockerClient) -> None:
    with lifecycle.api() as api:
        created = api.post("/deployments", json={"server": "time", "slug": "crashy"})
        assert created.status_code == 201, created.text
        token = api.post("/members/admin/tokens", json={"name": "crash"}).json()["token"]
        [container] = containers(docker_client, lifecycle, "crashy")
        container.kill()
        restarted = wait_for(lambda: (d := api.get("/deployments/crashy").json())["restarts"] >= 1
                             and d["status"] == "running" and d, "the supervisor to restart the server")
    assert "exited with code 137" in restarted["last_exit"]
    assert "UTC" in anyio.run(current_time, created.json()["endpoint"], token)
    assert [c.id for c in containers(docker_client, lifecycle, "crashy")] != [container.id]


def test_control_plane_restart_adopts_running_servers(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    platform = start_platform(tmp_path)
    try:
        with platform.api() as api:
            created = api.post("/deployments", json={"server": "time", "slug": "adopted"})
            assert created.status_code == 201, created.text
            token = api.post("/members/admin/tokens", json={"name": "adopt"}).json()["token"]
        [before] = containers(docker_client, platform, "adopted")
        stop_platform(platform)
        assert before.reload() is None and before.status == "running"  # servers outlive the control plane
        platform = start_platform(tmp_path)
        url = f"{platform.gateway_url}/servers/adopted/mcp"
        wait_for(lambda: httpx2.get(f"{platform.control_url}/api/v1/deployments/adopted",
                                    headers=platform.admin_headers).json()["status"] == "running", "adoption")
        assert "UTC" in anyio.run(current_time, url, token)
        assert [c.id for c in containers(docker_client, platform, "adopted")] == [before.id]
    finally:
        with platform.api() as api:
            api.delete("/deployments/adopted")
        stop_platform(platform)
    assert containers(docker_client, platform, "adopted") == []


def test_control_plane_killed_mid_deploy_converges(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    platform = start_platform(tmp_path)
    outcome: list[int] = []

    def deploy() -> None:
        try:
            with platform.api() as api:
                outcome.append(api.post("/deployments", json={"server": "time", "slug": "interrupted"}).status_code)
        except httpx2.HTTPError:
            outcome.append(-1)

    worker = threading.Thread(target=deploy, daemon=True)
    worker.start()
    wait_for(lambda: httpx2.get(f"{platform.control_url}/api/v1/deployments/interrupted",
                                headers=platform.admin_headers).status_code == 200, "the deployment to be recorded")
    platform.process.send_signal(signal.SIGKILL)
    platform.process.wait()
    worker.join(60)
    restarted = start_platform(tmp_path)
    try:
        final = wait_for(lambda: (d := httpx2.get(f"{restarted.control_url}/api/v1/deployments/interrupted",
                                                  headers=restarted.admin_headers).json())["status"] == "running" and d,
                         "the interrupted deployment to converge")
        assert final["desired_state"] == "running"
        assert len([c for c in containers(docker_client, restarted, "interrupted") if c.status == "running"]) == 1
    finally:
        with restarted.api() as api:
            api.delete("/deployments/interrupted")
        stop_platform(restarted)
    assert containers(docker_client, restarted, "interrupted") == []
    assert json.dumps(outcome)  # the interrupted request ended one way or another
