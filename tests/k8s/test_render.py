"""Rendering catalog entries as Kubernetes manifests: schemas, restricted PSS, secrets, policies."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from stockade.catalog import Catalog, CatalogEntry
from stockade.errors import ConfigError, ValidationFailed
from stockade.orchestrator.k8s import (
    default_deployment_id,
    egress_allowlist,
    image_for,
    render_namespace,
    render_server,
    to_yaml,
)
from stockade.orchestrator.k8s.render import OPEN_EGRESS_EXCEPT_V4
from tests.k8s.support import K8S_VERSIONS, documents, pod_specs, restricted_violations, validate_all

BUNDLED = Catalog.load().servers

# Entries the bundled catalog lacks, so every network profile, variables and sizes are covered.
EXTRA = Catalog.parse_yaml(
    """
version: 1
servers:
  - name: fetcher
    build: {pypi: mcp-server-fetch==2025.4.7}
    command: [mcp-server-fetch]
    required_env: [{name: API_KEY, secret: true}, {name: REGION}]
    optional_env: [{name: DEBUG}]
    resources: medium
    network: egress
    egress: ["api.example.com:443", "*.example.org:8443"]
  - name: browser
    image: local/browser:1.0
    command: [browse, --headless]
    resources: large
    network: open
    mounts:
      - {host_path: "{data_dir}/cache", container_path: /cache}
      - {host_path: "{data_dir}/out/reports", container_path: /reports, read_only: false}
""",
    source="test catalog",
).servers
ALL = [*BUNDLED, *EXTRA]
NS = "stockade-servers"


def render(entry: CatalogEntry, **kwargs: Any) -> list[dict[str, Any]]:
    options: dict[str, Any] = {
        "slug": entry.name,
        "namespace": NS,
        "image": image_for(entry, "registry.test/stockade"),
        "deployment_id": default_deployment_id(NS, entry.name),
    }
    options.update(kwargs)
    return render_server(entry, **options)


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [m for m in manifests if m["kind"] == kind]
    return found


def test_the_bundled_catalog_is_what_these_tests_cover() -> None:
    assert {e.name for e in BUNDLED} == {"time", "everything", "filesystem"}
    assert {e.network.value for e in ALL} == {"none", "egress", "open"}


def test_the_validator_is_not_vacuous() -> None:
    manifests = render(BUNDLED[0])
    deployment = by_kind(manifests, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    policy = by_kind(render(BUNDLED[0]), "NetworkPolicy")
    policy["spec"]["ingress"][0]["ports"][0]["port"] = {"not": "a port"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("entry", ALL, ids=lambda e: e.name)
def test_every_entry_renders_schema_valid_manifests(entry: CatalogEntry) -> None:
    manifests = render(entry)
    kinds = [m["kind"] for m in manifests]
    expected = ["NetworkPolicy", "Secret", *(["PersistentVolumeClaim"] if entry.mounts else []), "Service", "Deployment"]
    assert kinds == expected
    assert validate_all([render_namespace(NS), *manifests]) == len(manifests) + 1
    # and the YAML the CLI prints is the same data, with no anchors/aliases
    text = to_yaml(manifests)
    assert "&id" not in text and "*id" not in text
    assert documents(text) == manifests


@pytest.mark.parametrize("entry", ALL, ids=lambda e: e.name)
def test_pods_meet_the_restricted_pod_security_standard(entry: CatalogEntry) -> None:
    [(_name, spec)] = pod_specs(render(entry))
    assert restricted_violations(spec) == []
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == pod_sc["runAsGroup"] == pod_sc["fsGroup"] == 65534
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    [container] = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == sc["runAsGroup"] == 65534
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any("hostPath" in v for v in spec["volumes"])
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["medium"] == "Memory" and tmp["emptyDir"]["sizeLimit"].endswith("Mi")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_the_checker_catches_what_restricted_forbids() -> None:
    [(_, spec)] = pod_specs(render(BUNDLED[0]))
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    container = spec["containers"][0]
    container["securityContext"].update(allowPrivilegeEscalation=True, capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]})
    container["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    spec["securityContext"].pop("seccompProfile")
    problems = " ".join(restricted_violations(spec))
    for expected in ("hostNetwork", "hostPath", "allowPrivilegeEscalation", "SYS_ADMIN", "seccomp Unconfined"):
        assert expected in problems


@pytest.mark.parametrize("entry", ALL, ids=lambda e: e.name)
def test_resources_and_args_follow_the_entry(entry: CatalogEntry) -> None:
    deployment = by_kind(render(entry), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    limits = entry.resources.limits
    expected = {"cpu": f"{round(limits.cpus * 1000)}m", "memory": f"{limits.memory_mb}Mi"}
    assert container["resources"] == {"requests": expected, "limits": expected}
    required = [a for v in entry.required_env for a in ("--required-env", v.name)]
    assert container["args"] == [
        "--host", "0.0.0.0", "--port", "8080", "--bootstrap-file", "/var/run/stockade/bootstrap.json",
        "--name", entry.name, *required, "--", *entry.command,
    ]
    assert container["imagePullPolicy"] == "IfNotPresent"
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_labels_and_the_service_selector_match_the_pods() -> None:
    for entry in ALL:
        manifests = render(entry, deployment_id="d-123")
        deployment, service = by_kind(manifests, "Deployment"), by_kind(manifests, "Service")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/name"] == "stockade-server"
        assert pod_labels["app.kubernetes.io/instance"] == entry.name
        assert pod_labels["io.stockade/server"] == entry.name
        assert pod_labels["io.stockade/deployment"] == "d-123"
        selector = service["spec"]["selector"]
        assert selector.items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"] == selector
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
        assert service["metadata"]["labels"]["io.stockade/server"] == entry.name
        for manifest in manifests:
            assert manifest["metadata"]["namespace"] == NS
            assert manifest["metadata"]["name"].startswith(f"mcp-{entry.name}")


def test_namespace_enforces_restricted() -> None:
    namespace = render_namespace(NS)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    with pytest.raises(ConfigError):
        render_namespace("Not_A_Namespace")


# -- the bootstrap Secret ------------------------------------------------------------------------------
FETCHER = next(e for e in EXTRA if e.name == "fetcher")
PLANTED = {"token": "tok-PLANTED-7f3a9c", "API_KEY": "sk-PLANTED-c0ffee", "REGION": "PLANTED-region-x"}


@pytest.mark.parametrize("entry", ALL, ids=lambda e: e.name)
def test_the_secret_is_a_read_only_file_never_environment(entry: CatalogEntry) -> None:
    manifests = render(entry)
    secret = by_kind(manifests, "Secret")
    spec = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"] == {
        "secretName": secret["metadata"]["name"],
        "defaultMode": 0o400,
        "items": [{"key": "bootstrap.json", "path": "bootstrap.json"}],
    }
    [container] = spec["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/var/run/stockade", "readOnly": True}
    assert "envFrom" not in container
    for variable in container.get("env", []):
        assert "valueFrom" not in variable
        assert variable["name"] in {"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"}
    assert ("env" in container) == (entry.network.value == "egress")


def test_without_bootstrap_the_secret_holds_placeholders_only() -> None:
    secret = by_kind(render(FETCHER), "Secret")
    assert secret["metadata"]["annotations"] == {"io.stockade/placeholder": "true"}
    document = json.loads(secret["stringData"]["bootstrap.json"])
    assert document["token"].startswith("<placeholder")
    assert set(document["env"]) == {"API_KEY", "REGION"}
    assert all(v.startswith("<placeholder") for v in document["env"].values())


def test_a_planted_secret_value_appears_only_in_the_secret() -> None:
    manifests = render(FETCHER, bootstrap=PLANTED)
    secret = by_kind(manifests, "Secret")
    assert "annotations" not in secret["metadata"]
    assert json.loads(secret["stringData"]["bootstrap.json"]) == {
        "token": PLANTED["token"],
        "env": {"API_KEY": PLANTED["API_KEY"], "REGION": PLANTED["REGION"]},
    }
    for manifest in manifests:
        text = to_yaml([manifest])
        for value in PLANTED.values():
            assert (value in text) == (manifest["kind"] == "Secret"), (manifest["kind"], value)
    # A changed bootstrap restarts the pods (the bridge reads the file once), by hash only.
    template = by_kind(manifests, "Deployment")["spec"]["template"]["metadata"]
    changed = by_kind(render(FETCHER, bootstrap={**PLANTED, "REGION": "other"}), "Deployment")["spec"]["template"]["metadata"]
    assert template["annotations"]["io.stockade/bootstrap-sha256"] != changed["annotations"]["io.stockade/bootstrap-sha256"]
    assert validate_all(manifests) == len(manifests)


@pytest.mark.parametrize(
    ("bootstrap", "message"),
    [
        ({"API_KEY": "sk-PLANTED-c0ffee", "REGION": "r"}, "no bridge token"),
        ({"token": "tok-PLANTED-7f3a9c", "API_KEY": "sk-PLANTED-c0ffee"}, "missing required variables: REGION"),
        ({**PLANTED, "SURPRISE": "sk-PLANTED-c0ffee"}, "not declared by catalog entry 'fetcher': SURPRISE"),
    ],
)
def test_bad_bootstraps_are_refused_naming_keys_never_values(bootstrap: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        render(FETCHER, bootstrap=bootstrap)
    assert message in str(caught.value)
    assert "PLANTED" not in str(caught.value)


# -- NetworkPolicies -----------------------------------------------------------------------------------
def _ingress_is_gateway_and_control_plane_only(policy: dict[str, Any]) -> None:
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "stockade-server", "app.kubernetes.io/instance": policy["metadata"]["labels"]["app.kubernetes.io/instance"]}}
    assert spec["ingress"] == [
        {
            "from": [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}},
                {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "control-plane"}}},
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]


def test_network_none_denies_all_egress_even_dns() -> None:
    for entry in BUNDLED:
        policy = by_kind(render(entry), "NetworkPolicy")
        _ingress_is_gateway_and_control_plane_only(policy)
        assert policy["spec"]["egress"] == []


DNS_RULE = {
    "to": [{"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def test_network_egress_reaches_only_the_proxy_and_dns() -> None:
    policy = by_kind(render(FETCHER), "NetworkPolicy")
    _ingress_is_gateway_and_control_plane_only(policy)
    assert policy["spec"]["egress"] == [
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "egress-proxy"}}}], "ports": [{"protocol": "TCP", "port": 3128}]},
        DNS_RULE,
    ]
    container = by_kind(render(FETCHER), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HTTPS_PROXY", "value": "http://stockade-egress-proxy:3128"} in container["env"]
    assert by_kind(render(FETCHER), "Deployment")["metadata"]["annotations"]["io.stockade/egress-allowlist"] == "api.example.com:443,*.example.org:8443"
    assert egress_allowlist(ALL) == ["*.example.org:8443", "api.example.com:443"]


def test_network_open_excludes_private_and_metadata_ranges() -> None:
    browser = next(e for e in EXTRA if e.name == "browser")
    policy = by_kind(render(browser, open_egress_except=["203.0.113.0/24", "2001:db8::/32"]), "NetworkPolicy")
    _ingress_is_gateway_and_control_plane_only(policy)
    [anywhere, dns] = policy["spec"]["egress"]
    assert dns == DNS_RULE
    v4, v6 = (peer["ipBlock"] for peer in anywhere["to"])
    assert v4["cidr"] == "0.0.0.0/0" and v6["cidr"] == "::/0"
    assert "169.254.0.0/16" in v4["except"] and "10.0.0.0/8" in v4["except"] and "203.0.113.0/24" in v4["except"]
    assert set(OPEN_EGRESS_EXCEPT_V4) <= set(v4["except"])
    assert "fc00::/7" in v6["except"] and "2001:db8::/32" in v6["except"]
    assert "ports" not in anywhere


def test_clients_in_another_namespace_are_named_in_the_same_peer() -> None:
    policy = by_kind(render(BUNDLED[0], clients_namespace="stockade", control_plane_selector=None), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == [
        {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "stockade"}},
        }
    ]


# -- mounts, options, refusals ---------------------------------------------------------------------------
def test_mounts_become_sub_paths_of_one_claim_named_after_the_server() -> None:
    browser = next(e for e in EXTRA if e.name == "browser")
    manifests = render(browser, storage_class="fast", storage_size="5Gi")
    claim = by_kind(manifests, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "mcp-browser-data"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}, "storageClassName": "fast"}
    deployment = by_kind(manifests, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = deployment["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "mcp-browser-data"}} in spec["volumes"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "data"}
    assert mounts["/cache"] == {"name": "data", "mountPath": "/cache", "subPath": "cache", "readOnly": True}
    assert mounts["/reports"] == {"name": "data", "mountPath": "/reports", "subPath": "out/reports", "readOnly": False}
    filesystem = next(e for e in BUNDLED if e.name == "filesystem")
    fs_spec = by_kind(render(filesystem), "Deployment")["spec"]["template"]["spec"]
    assert {"name": "data", "mountPath": "/data", "subPath": "shared", "readOnly": False} in fs_spec["containers"][0]["volumeMounts"]
    with pytest.raises(ConfigError, match="ReadWriteOnce"):
        render(filesystem, replicas=2)
    assert by_kind(render(filesystem, replicas=2, storage_access_mode="ReadWriteMany"), "Deployment")["spec"]["replicas"] == 2


def test_options_and_refusals() -> None:
    entry = BUNDLED[0]
    container = by_kind(render(entry, image_pull_policy="Never"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "Never"
    with pytest.raises(ConfigError):
        render(entry, image_pull_policy="Sometimes")
    for slug in ("Upper", "trailing-", "-lead", "x" * 60):
        with pytest.raises(ConfigError):
            render(entry, slug=slug)
    with pytest.raises(ConfigError):
        render(entry, deployment_id="not a label value!")
    assert by_kind(render(entry, replicas=3), "Deployment")["spec"]["replicas"] == 3
    assert by_kind(render(entry, bridge_port=9000), "Service")["spec"]["ports"][0]["port"] == 9000


def test_image_names() -> None:
    time_entry = next(e for e in BUNDLED if e.name == "time")
    assert image_for(time_entry, "registry.test/stockade/") == "registry.test/stockade/server-time:2026.10.19"
    assert image_for(time_entry, "stockade", tag="0123456789abcdef") == "stockade/server-time:0123456789abcdef"
    assert image_for(time_entry, "") == "server-time:2026.10.19"
    browser = next(e for e in EXTRA if e.name == "browser")
    assert image_for(browser, "") == "local/browser:1.0"
    assert image_for(browser, "registry.test/x") == "registry.test/x/browser:1.0"
    pinned = time_entry.model_copy(update={"image_digest": "sha256:" + "a" * 64})
    assert image_for(pinned, "r.test") == "r.test/server-time:2026.10.19@sha256:" + "a" * 64
    assert image_for(browser, "r.test", tag="2.0") == "r.test/browser:2.0"
    assert default_deployment_id(NS, "time") == default_deployment_id(NS, "time") != default_deployment_id("other", "time")
