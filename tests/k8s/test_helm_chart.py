"""The Helm chart, rendered by a real helm binary, validated against the Kubernetes schemas."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from stockade.catalog import Catalog
from stockade.orchestrator.k8s import render_server
from stockade.orchestrator.k8s.render import DEFAULT_EGRESS_PROXY_SELECTOR, DEFAULT_EGRESS_PROXY_URL
from tests.k8s.support import CHART, documents, pod_specs, restricted_violations, validate_all

REQUIRED = ["--set", "database.existingSecret=stockade-db", "--set", "masterKey.existingSecret=stockade-master-key"]


def template(helm: str, *args: str, release: str = "stockade", namespace: str = "stockade") -> list[dict[str, Any]]:
    result = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", namespace, *REQUIRED, *args],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_helm_lint_strict(helm: str) -> None:
    result = subprocess.run([helm, "lint", str(CHART), "--strict", *REQUIRED], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_secrets_are_required(helm: str) -> None:
    result = subprocess.run([helm, "template", "s", str(CHART)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode != 0
    assert "database.existingSecret is required" in result.stderr


def test_values_schema_rejects_bad_destinations(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "s", str(CHART), *REQUIRED, "--set", "egressProxy.allowedDestinations={no port}"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode != 0 and "allowedDestinations" in result.stderr


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "servers.namespace=mcp", "--set", "servers.createNamespace=true",
         "--set", "egressProxy.allowedDestinations={api.example.com:443,*.example.org:8443}",
         "--set", "networkPolicy.kubeApi.cidrs={10.96.0.1/32}", "--set", "gateway.replicas=3",
         "--set", "gateway.publicUrl=https://mcp.example.com", "--set", "imagePullSecrets={regcred}"],
        ["--set", "egressProxy.enabled=false", "--set", "networkPolicy.enabled=false", "--set", "rbac.create=false"],
    ],
    ids=["defaults", "separate-namespace", "minimal"],
)
def test_every_document_validates_and_every_pod_is_restricted(helm: str, values: list[str]) -> None:
    docs = template(helm, *values)
    assert validate_all(docs) == len(docs)
    specs = pod_specs(docs)
    assert specs
    for name, spec in specs:
        assert restricted_violations(spec) == [], name
        assert spec["enableServiceLinks"] is False, name
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            for variable in container.get("env", []):  # secrets only by reference
                if variable["name"] in ("STOCKADE_DATABASE_URL", "STOCKADE_MASTER_KEY"):
                    assert set(variable) == {"name", "valueFrom"}, name


def test_default_shape(helm: str) -> None:
    docs = template(helm)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == sorted([
        "ConfigMap/stockade-egress-proxy",
        "Deployment/stockade-control-plane", "Deployment/stockade-egress-proxy", "Deployment/stockade-gateway",
        "NetworkPolicy/stockade-control-plane", "NetworkPolicy/stockade-default-deny",
        "NetworkPolicy/stockade-egress-proxy", "NetworkPolicy/stockade-gateway",
        "Role/stockade-control-plane", "Role/stockade-gateway",
        "RoleBinding/stockade-control-plane", "RoleBinding/stockade-gateway",
        "Service/stockade-control-plane", "Service/stockade-egress-proxy", "Service/stockade-gateway",
        "ServiceAccount/stockade-control-plane", "ServiceAccount/stockade-gateway",
    ])
    gateway = find(docs, "Deployment", "stockade-gateway")
    control = find(docs, "Deployment", "stockade-control-plane")
    assert gateway["spec"]["replicas"] == 2
    assert control["spec"]["replicas"] == 1 and control["spec"]["strategy"] == {"type": "Recreate"}
    env = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STOCKADE_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "stockade-db", "key": "url"}}
    assert env["STOCKADE_MASTER_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "stockade-master-key", "key": "master-key"}}
    assert env["STOCKADE_GATEWAY_HOST"]["value"] == "0.0.0.0"
    for deployment in (gateway, control):
        assert find(docs, "Service", deployment["metadata"]["name"])["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # Default deny covers every pod of the release.
    deny = find(docs, "NetworkPolicy", "stockade-default-deny")["spec"]
    assert deny == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "stockade", "app.kubernetes.io/instance": "stockade"}}, "policyTypes": ["Ingress", "Egress"]}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deny["podSelector"]["matchLabels"].items() <= labels.items()
    # No proxy destination allowed by default: the proxy may reach DNS only.
    proxy_policy = find(docs, "NetworkPolicy", "stockade-egress-proxy")["spec"]
    assert len(proxy_policy["egress"]) == 1 and proxy_policy["egress"][0]["ports"][0]["port"] == 53


def test_server_policies_admit_the_charts_gateway_and_control_plane(helm: str) -> None:
    """What render_server allows in (and out to) matches the labels and names the chart gives."""
    docs = template(helm)
    entry = Catalog.load().get("time")
    [policy] = [m for m in render_server(entry, slug="time", namespace="stockade", image="i:1", deployment_id="d") if m["kind"] == "NetworkPolicy"]
    peers = policy["spec"]["ingress"][0]["from"]
    for component, peer in zip(("gateway", "control-plane"), peers, strict=True):
        labels = find(docs, "Deployment", f"stockade-{component}")["spec"]["template"]["metadata"]["labels"]
        assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    proxy = find(docs, "Deployment", "stockade-egress-proxy")
    assert DEFAULT_EGRESS_PROXY_SELECTOR.items() <= proxy["spec"]["template"]["metadata"]["labels"].items()
    proxy_service = find(docs, "Service", "stockade-egress-proxy")
    assert DEFAULT_EGRESS_PROXY_URL == f"http://{proxy_service['metadata']['name']}:{proxy_service['spec']['ports'][0]['port']}"


def test_separate_servers_namespace(helm: str) -> None:
    docs = template(helm, "--set", "servers.namespace=mcp", "--set", "servers.createNamespace=true",
                    "--set", "egressProxy.allowedDestinations={api.example.com:443,*.example.org:8443,b.example.com:443}")
    namespace = find(docs, "Namespace", "mcp")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for role in (d for d in docs if d["kind"] in ("Role", "RoleBinding")):
        assert role["metadata"]["namespace"] == "mcp"
    gateway_role = find(docs, "Role", "stockade-gateway")
    assert gateway_role["rules"] == [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}]
    proxy_policy = find(docs, "NetworkPolicy", "stockade-egress-proxy")["spec"]
    assert proxy_policy["ingress"][0]["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "mcp"}}
    assert proxy_policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["io.stockade/network"] == "egress"
    [_, public] = proxy_policy["egress"]
    assert sorted(p["port"] for p in public["ports"]) == [443, 8443]
    assert "169.254.0.0/16" in public["to"][0]["ipBlock"]["except"]
    config = find(docs, "ConfigMap", "stockade-egress-proxy")["data"]["squid.conf"]
    assert "acl allowed_host_1 dstdomain .example.org" in config and "http_access deny all" in config.splitlines()[-1]


def test_the_rendered_squid_configuration_runs_as_nobody(helm: str, tmp_path: Path) -> None:
    """Debian's squid parses the chart's configuration, starts unprivileged on loopback, and refuses
    destinations off the allowlist and internal addresses (no request leaves this machine)."""
    squid = shutil.which("squid") or "/usr/sbin/squid"
    assert Path(squid).exists(), "squid is needed for this test: apt-get install --no-install-recommends squid"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    docs = template(helm, "--set", f"egressProxy.port={port}", "--set", "egressProxy.allowedDestinations={api.example.com:443}")
    config = find(docs, "ConfigMap", "stockade-egress-proxy")["data"]["squid.conf"]
    # A directory the unprivileged user can traverse (pytest's own base directory is 0700).
    workdir = Path(tempfile.mkdtemp(prefix="stockade-squid-"))
    workdir.chmod(0o755)
    conf = workdir / "squid.conf"
    conf.write_text(config.replace(f"http_port {port}", f"http_port 127.0.0.1:{port}"))
    parsed = subprocess.run([squid, "-k", "parse", "-f", str(conf)], capture_output=True, text=True, check=False, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    assert "ERROR" not in parsed.stderr and "WARNING" not in parsed.stderr.upper().replace("WARNING: (", "")
    conf.chmod(0o644)
    # As the chart runs it: foreground, our configuration, UID/GID 65534.
    as_nobody: dict[str, Any] = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    # squid reopens /dev/stdout and /dev/stderr: give it stdio owned by its user, as runc does for a
    # container's stdio when the container runs as a non-root UID.
    out, err = (open(workdir / name, "w+b") for name in ("stdout", "stderr"))  # noqa: SIM115
    if as_nobody:
        for stream in (out, err):
            os.fchown(stream.fileno(), 65534, 65534)
    process = subprocess.Popen([squid, "-N", "-f", str(conf)], cwd=workdir, stdout=out, stderr=err, **as_nobody)
    try:
        import time

        import httpx2

        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "stderr").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "squid did not listen"
                time.sleep(0.2)
        with httpx2.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("http://not-allowed.invalid/").status_code == 403
            assert http.get(f"http://127.0.0.1:{port}/").status_code in (403, 400)
        assert "TCP_DENIED/403" in (workdir / "stdout").read_text()  # the access log reached stdout
    finally:
        process.terminate()  # the chart sets shutdown_lifetime 5 seconds
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        out.close()
        err.close()
        shutil.rmtree(workdir, ignore_errors=True)
