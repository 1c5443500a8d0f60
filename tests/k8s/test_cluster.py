"""Discovery and apply with the official client. No cluster exists here: discovery is tested on the
client's own model objects and through the real client against a loopback HTTP server that answers
the one list call; apply only on its refusals and its errors when no API server can be reached."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from stockade.catalog import Catalog
from stockade.errors import DeploymentError, EngineError
from stockade.orchestrator.k8s import (
    DiscoveredServer,
    apply,
    discover_servers,
    load_api_client,
    render_server,
)
from tests.k8s.apiserver import FakeApiServer, write_kubeconfig

NS = "stockade-servers"


def service(name: str, labels: dict[str, str], ports: list[client.V1ServicePort],
            cluster_ip: str | None = None) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name, namespace=NS, labels=labels),
        spec=client.V1ServiceSpec(type="ClusterIP", ports=ports, selector={"app.kubernetes.io/instance": name},
                                  cluster_ip=cluster_ip),
    )


class ServiceLister:
    """Holds a V1ServiceList and answers the one call discovery makes (data, not behaviour)."""

    def __init__(self, items: list[client.V1Service]) -> None:
        self.items = items
        self.calls: list[tuple[str, str]] = []

    def list_namespaced_service(self, namespace: str, *, label_selector: str) -> client.V1ServiceList:
        self.calls.append((namespace, label_selector))
        return client.V1ServiceList(items=self.items)


SERVER = {"app.kubernetes.io/name": "stockade-server"}


def test_discover_servers_from_model_objects() -> None:
    lister = ServiceLister([
        service("mcp-time", {**SERVER, "io.stockade/server": "time", "io.stockade/entry": "time",
                             "io.stockade/deployment": "d-time"}, [client.V1ServicePort(name="http", port=8080)]),
        service("mcp-fs", {**SERVER, "io.stockade/server": "fs"},
                [client.V1ServicePort(name="metrics", port=9100), client.V1ServicePort(name="http", port=8081)]),
        service("mcp-other", {**SERVER, "io.stockade/server": "other"}, [client.V1ServicePort(port=7000)],
                cluster_ip="10.96.0.12"),
        service("mcp-v6", {**SERVER, "io.stockade/server": "v6"}, [client.V1ServicePort(port=8080)], cluster_ip="fd00::12"),
        service("mcp-headless", {**SERVER, "io.stockade/server": "headless"}, [client.V1ServicePort(port=8080)],
                cluster_ip="None"),
        service("unrelated", {"app.kubernetes.io/name": "postgres"}, [client.V1ServicePort(port=5432)]),
        service("no-slug", SERVER, [client.V1ServicePort(port=8080)]),
    ])
    assert discover_servers(lister, NS) == [
        DiscoveredServer("fs", f"http://mcp-fs.{NS}.svc:8081", None, None),
        DiscoveredServer("headless", f"http://mcp-headless.{NS}.svc:8080", None, None),
        DiscoveredServer("other", "http://10.96.0.12:7000", None, None),
        DiscoveredServer("time", f"http://mcp-time.{NS}.svc:8080", "time", "d-time"),
        DiscoveredServer("v6", "http://[fd00::12]:8080", None, None),
    ]
    assert lister.calls == [(NS, "app.kubernetes.io/name=stockade-server,io.stockade/server")]


def test_discover_servers_finds_what_render_server_renders() -> None:
    entry = Catalog.load().get("time")
    manifests = render_server(entry, slug="clock", namespace=NS, image="i:1", deployment_id="d1")
    [rendered] = [m for m in manifests if m["kind"] == "Service"]
    # The rendered dict deserialised into the client's model, as the API would return it.
    api = client.ApiClient()
    model = api._ApiClient__deserialize(rendered, "V1Service")  # the client's own deserialiser
    assert discover_servers(ServiceLister([model]), NS) == [
        DiscoveredServer("clock", f"http://mcp-clock.{NS}.svc:8080", "time", "d1")]


def test_discover_servers_through_the_real_client(tmp_path: Path) -> None:
    with FakeApiServer(NS) as api_server:
        api_server.services.append({
            "metadata": {"name": "mcp-time", "namespace": NS, "labels": {**SERVER, "io.stockade/server": "time"}},
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}]},
        })
        api_client = load_api_client(api_server.kubeconfig(tmp_path / "kubeconfig"))
        try:
            assert discover_servers(client.CoreV1Api(api_client), NS) == [
                DiscoveredServer("time", f"http://mcp-time.{NS}.svc:8080", None, None)]
        finally:
            api_client.close()
    [path] = api_server.seen
    assert parse_qs(urlsplit(path).query)["labelSelector"] == ["app.kubernetes.io/name=stockade-server,io.stockade/server"]


def test_apply_refuses_placeholder_secrets_before_connecting(tmp_path: Path) -> None:
    entry = Catalog.load().get("time")
    manifests = render_server(entry, slug="time", namespace=NS, image="i:1", deployment_id="d1")  # no bootstrap
    with pytest.raises(DeploymentError, match="refusing to apply placeholder Secrets: mcp-time-bootstrap"):
        apply(manifests, namespace=NS, kubeconfig=tmp_path / "never-read")


def test_apply_without_a_kubeconfig_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(EngineError, match="does not exist") as caught:
        apply([], namespace=NS, kubeconfig=tmp_path / "missing")
    assert "--kubeconfig" in (caught.value.hint or "")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "also-missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(EngineError, match="no usable Kubernetes configuration"):
        apply([], namespace=NS)


def test_apply_with_no_api_server_listening_says_so(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry = Catalog.load().get("time")
    manifests = render_server(entry, slug="time", namespace=NS, image="i:1", deployment_id="d1", bootstrap={"token": "t"})
    with pytest.raises(EngineError, match=f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"):
        apply(manifests, namespace=NS, kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", NS))
