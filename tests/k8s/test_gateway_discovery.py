"""The gateway finding servers through Kubernetes Services: a real platform process with
STOCKADE_K8S_SERVERS_NAMESPACE set, the official client, and a real bridge in front of
mcp-server-time standing in for the pod behind the Service. Only the API server is a loopback
stand-in (tests/k8s/apiserver.py): no cluster runs here."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from stockade.orchestrator.k8s import bridge_token_context
from stockade.secrets import Sealer
from tests.bridge.conftest import TIME_COMMAND, Bridge, start_bridge
from tests.conftest import RunningPlatform, start_platform, stop_platform, wait_for
from tests.k8s.apiserver import FakeApiServer

NS = "stockade-servers"
DEPLOYMENT_ID = "0b7c6a52-3d1e-4d8e-9a55-1f2e3d4c5b6a"


def server_service(slug: str, entry: str, port: int, deployment_id: str = DEPLOYMENT_ID) -> dict:
    """A Service as `stockade k8s apply` renders it, with the cluster IP the API server assigned."""
    return {
        "metadata": {"name": f"mcp-{slug}", "namespace": NS, "labels": {
            "app.kubernetes.io/name": "stockade-server", "app.kubernetes.io/instance": slug,
            "io.stockade/server": slug, "io.stockade/entry": entry, "io.stockade/deployment": deployment_id}},
        "spec": {"type": "ClusterIP", "clusterIP": "127.0.0.1",
                 "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}]},
    }


@pytest.fixture(scope="module")
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def api_server() -> Iterator[FakeApiServer]:
    with FakeApiServer(NS) as running:
        yield running


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory, master_key: bytes) -> Iterator[Bridge]:
    """The server's pod: a bridge holding the token `stockade k8s apply` derives for it."""
    token = Sealer(master_key).derive_token(bridge_token_context(NS, "clock", DEPLOYMENT_ID))
    bridge = start_bridge(tmp_path_factory.mktemp("pod"), TIME_COMMAND, token=token)
    bridge.wait_ready()
    try:
        yield bridge
    finally:
        bridge.stop()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, api_server: FakeApiServer, master_key: bytes,
             pod: Bridge) -> Iterator[RunningPlatform]:
    data_dir: Path = tmp_path_factory.mktemp("k8s-gateway")
    api_server.services[:] = [server_service("clock", "time", pod.port)]
    running = start_platform(
        data_dir,
        STOCKADE_MASTER_KEY=base64.b64encode(master_key).decode(),
        STOCKADE_K8S_SERVERS_NAMESPACE=NS,
        STOCKADE_K8S_KUBECONFIG=str(api_server.kubeconfig(data_dir / "kubeconfig")),
    )
    try:
        yield running
    finally:
        stop_platform(running)


def call_time(platform: RunningPlatform, slug: str) -> httpx2.Response:
    return httpx2.post(f"{platform.gateway_url}/api/v1/servers/{slug}/tools/get_current_time:call",
                       headers={"Authorization": f"Bearer {platform.admin_token}"}, json={"timezone": "UTC"}, timeout=30)


def test_gateway_routes_to_a_server_found_through_its_service(platform: RunningPlatform, api_server: FakeApiServer) -> None:
    with platform.api() as api:
        approved = api.post("/servers/clock/tools/approve", json={})
        assert approved.status_code == 200, approved.text
        assert "get_current_time" in approved.json()
    response = call_time(platform, "clock")
    assert response.status_code == 200, response.text
    assert "UTC" in response.text
    assert any("labelSelector=" in path for path in api_server.seen)
    with platform.api() as api:
        [record] = [r for r in api.get("/audit", params={"server": "clock"}).json() if r["method"] == "tools/call"]
    assert record["outcome"] == "ok"


def test_a_service_without_stockade_labels_is_not_routed(platform: RunningPlatform, api_server: FakeApiServer, pod: Bridge) -> None:
    # Same pod, but the Service was not rendered from an approved catalog entry: nothing to derive a
    # token for, nothing approved to call.
    api_server.services.append(server_service("stray", "not-in-the-catalog", pod.port))
    wait_for(lambda: call_time(platform, "stray").status_code == 404, "the stray Service to be ignored", timeout=30)


def test_a_token_from_another_deployment_id_is_refused_by_the_bridge(platform: RunningPlatform, api_server: FakeApiServer,
                                                                      pod: Bridge) -> None:
    # A Service claiming another deployment id derives another token: the pod's bridge refuses it.
    api_server.services.append(server_service("impostor", "time", pod.port, deployment_id="another-deployment"))
    wait_for(lambda: call_time(platform, "impostor").status_code != 404, "the impostor Service to be discovered", timeout=30)
    response = call_time(platform, "impostor")
    assert response.status_code >= 400 and "UTC" not in response.text


def test_a_removed_service_stops_being_routed(platform: RunningPlatform, api_server: FakeApiServer) -> None:
    assert call_time(platform, "clock").status_code == 200
    api_server.services[:] = [s for s in api_server.services if s["metadata"]["name"] != "mcp-clock"]
    wait_for(lambda: call_time(platform, "clock").status_code == 404, "the removed Service to be forgotten", timeout=30)
