"""Catalog entries as Kubernetes manifests: pure functions, no cluster and no client needed.

One deployed server becomes five or six objects in its namespace, all named `mcp-<slug>`:

- a Deployment whose pods meet the *restricted* Pod Security Standard (non-root 65534, read-only
  root filesystem, every capability dropped, RuntimeDefault seccomp, no privilege escalation, no
  service-account token, no service links);
- a Secret holding the bridge's bootstrap JSON (`{"token": ..., "env": {...}}`), mounted as a
  read-only FILE — values never travel as environment variables or arguments;
- a ClusterIP Service on 8080, labelled so the gateway finds servers by label (`discover_servers`);
- a NetworkPolicy that denies everything but the gateway (and control plane) reaching port 8080
  and, per network profile, the egress the server needs;
- a PersistentVolumeClaim when the entry has mounts (hostPath volumes are forbidden under the
  restricted standard, so host directories become subPaths of one claim per deployment).

The namespace itself must enforce the standard: `render_namespace` labels it
`pod-security.kubernetes.io/enforce: restricted`, so the API server refuses any pod that does not
comply, whatever rendered it. NetworkPolicies are enforced only by a CNI that implements them
(Calico, Cilium, ...); on one without, they are accepted and silently ignored.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import yaml

from stockade.catalog import CatalogEntry, NetworkProfile
from stockade.errors import ConfigError, ValidationFailed

# -- constants shared with discovery and the Helm chart --------------------------------------------
BRIDGE_PORT = 8080
NONROOT_ID = 65534  # "nobody": the UID/GID the images run as, on Docker and here
BOOTSTRAP_DIR = "/var/run/stockade"
BOOTSTRAP_KEY = "bootstrap.json"
BOOTSTRAP_FILE = f"{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}"
NAME_PREFIX = "mcp-"
CONTAINER_NAME = "bridge"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SERVER = "io.stockade/server"
LABEL_ENTRY = "io.stockade/entry"
LABEL_DEPLOYMENT = "io.stockade/deployment"
LABEL_NETWORK = "io.stockade/network"
SERVER_APP_NAME = "stockade-server"
ANNOTATION_PLACEHOLDER = "io.stockade/placeholder"
ANNOTATION_EGRESS = "io.stockade/egress-allowlist"
ANNOTATION_BOOTSTRAP_SHA = "io.stockade/bootstrap-sha256"

DEFAULT_GATEWAY_SELECTOR: Mapping[str, str] = {LABEL_COMPONENT: "gateway"}
DEFAULT_CONTROL_PLANE_SELECTOR: Mapping[str, str] = {LABEL_COMPONENT: "control-plane"}
DEFAULT_EGRESS_PROXY_SELECTOR: Mapping[str, str] = {LABEL_COMPONENT: "egress-proxy"}
DEFAULT_EGRESS_PROXY_URL = "http://stockade-egress-proxy:3128"
DEFAULT_DNS_SELECTOR: Mapping[str, str] = {"k8s-app": "kube-dns"}
DEFAULT_DNS_NAMESPACE = "kube-system"

PULL_POLICIES = ("IfNotPresent", "Never", "Always")

# `network: open` may reach any address except these: the private, shared (CGNAT), link-local
# (where clouds serve instance metadata) and loopback ranges in which clusters put their nodes, pods
# and Services. A cluster whose pod or Service CIDR is public address space is NOT protected by this
# list: extend it with `open_egress_except`.
OPEN_EGRESS_EXCEPT_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8")
OPEN_EGRESS_EXCEPT_V6 = ("fc00::/7", "fe80::/10", "::1/128")

OPEN_NETWORK_WARNING = (
    "network: open lets the server reach ANY public address (everything but private, CGNAT, "
    "link-local and loopback ranges) and resolve names through cluster DNS; only the catalog's "
    "approval stands between it and exfiltration"
)

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _check_dns_label(value: str, what: str, *, max_len: int = 63) -> None:
    if len(value) > max_len or not _DNS1035.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid Kubernetes name",
            hint=f"lower-case letters, digits and '-', starting with a letter, ending alphanumeric, at most {max_len} characters",
        )


def _check_label_value(value: str, what: str) -> None:
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise ConfigError(f"{what} {value!r} cannot be a Kubernetes label value", hint="at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends")


def object_name(slug: str) -> str:
    """The name of every object rendered for deployment `slug`."""
    return f"{NAME_PREFIX}{slug}"


def pod_selector(slug: str) -> dict[str, str]:
    """The (immutable) Deployment selector, also the Service's and the NetworkPolicy's."""
    return {LABEL_NAME: SERVER_APP_NAME, LABEL_INSTANCE: slug}


def server_labels(entry: CatalogEntry, slug: str, deployment_id: str) -> dict[str, str]:
    return {
        **pod_selector(slug),
        LABEL_SERVER: slug,
        LABEL_ENTRY: entry.name,
        LABEL_DEPLOYMENT: deployment_id,
        LABEL_NETWORK: entry.network.value,
        LABEL_MANAGED_BY: "stockade",
    }


def bridge_token_context(namespace: str, slug: str, deployment_id: str) -> str:
    """What a server's bridge token is derived for (`Sealer.derive_token`): `stockade k8s apply`
    and every gateway derive the same token from the master key; a new deployment id rotates it."""
    return f"k8s-bridge:{namespace}/{slug}/{deployment_id}"


def default_deployment_id(namespace: str, slug: str) -> str:
    """A stable id for a deployment rendered outside the control plane (so re-applying is a no-op)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"stockade:k8s:{namespace}:{slug}"))


def image_for(entry: CatalogEntry, image_prefix: str, *, tag: str | None = None) -> str:
    """The image reference for `entry` in a registry under `image_prefix`.

    Built entries are `<prefix>/server-<entry name>:<tag>`, the repository name the local image
    builder uses (`stockade/server-<entry>`, so prefix `stockade` names the local image itself).
    The builder tags by build hash; without `tag`, the pinned package version is used — retag what
    you push accordingly. An entry naming an image of its own keeps that name (re-homed under the
    prefix when one is given). A catalog digest pins it (`@sha256:...`).
    """
    prefix = image_prefix.rstrip("/")
    if entry.image is not None:
        base = entry.image if not prefix else f"{prefix}/{entry.image.rsplit('/', 1)[-1]}"
        if tag is not None:
            base = f"{base.rsplit(':', 1)[0] if ':' in base.rsplit('/', 1)[-1] else base}:{tag}"
    else:
        assert entry.build is not None
        version = tag or re.sub(r"[^A-Za-z0-9_.-]", "-", entry.build.version)[:128]
        repository = f"server-{entry.name}"
        base = f"{prefix}/{repository}:{version}" if prefix else f"{repository}:{version}"
    return f"{base}@{entry.image_digest}" if entry.image_digest else base


def _cpu(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def _restricted_container_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": NONROOT_ID,
        "runAsGroup": NONROOT_ID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "privileged": False,
    }


def _restricted_pod_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_ID,
        "runAsGroup": NONROOT_ID,
        # fsGroup makes the bootstrap Secret file (mode 0400, owned by root) readable by the bridge:
        # the kubelet gives the volume's files this group and adds group-read, so the file is
        # 0440 root:65534 — readable by the bridge, by no other UID. It also makes the data claim
        # writable by 65534 on volume types that support ownership management.
        "fsGroup": NONROOT_ID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _bootstrap_document(entry: CatalogEntry, bootstrap: Mapping[str, str] | None) -> tuple[str, bool]:
    """The bootstrap JSON and whether it is a placeholder.

    `bootstrap` maps `"token"` to the bridge token and each variable name to its value. Variable
    names are upper case by the catalog's rules, so the lower-case key cannot collide with one.
    Errors name keys, never values.
    """
    if bootstrap is None:
        env = {v.name: f"<placeholder: value of {v.name}>" for v in entry.required_env}
        document = {"token": "<placeholder: bridge token, minted by the control plane at apply time>", "env": env}
        return json.dumps(document, sort_keys=True), True
    token = bootstrap.get("token")
    if not token:
        raise ValidationFailed(f"bootstrap for {entry.name!r} has no bridge token", hint="give the key 'token'")
    env = {k: v for k, v in bootstrap.items() if k != "token"}
    entry.check_variables(env)
    return json.dumps({"token": token, "env": env}, sort_keys=True), False


def _mount_sub_path(host_path: str) -> str:
    """A host directory's place inside the deployment's claim: `{data_dir}/shared` -> `shared`."""
    relative = host_path.replace("{data_dir}", "").strip("/")
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any(not re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in parts):
        raise ConfigError(f"mount host_path {host_path!r} cannot be mapped onto a volume claim", hint="use {data_dir}/<name>")
    return "/".join(parts)


def render_namespace(namespace: str, *, pss_version: str = "latest") -> dict[str, Any]:
    """The namespace for servers, enforcing (and auditing, and warning on) the restricted standard.

    Enforcement is what matters: with these labels the API server's PodSecurity admission refuses
    any pod that is not restricted-compliant, even one created by hand or by another tool. Note that
    it checks pods, not Deployments: a non-compliant Deployment is accepted with a warning and then
    its ReplicaSet cannot create pods.
    """
    _check_dns_label(namespace, "namespace")
    labels = {"kubernetes.io/metadata.name": namespace, LABEL_MANAGED_BY: "stockade"}
    for mode in ("enforce", "audit", "warn"):
        labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
        labels[f"pod-security.kubernetes.io/{mode}-version"] = pss_version
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}


def _peer(selector: Mapping[str, str], namespace: str | None) -> dict[str, Any]:
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(selector)}}
    if namespace is not None:  # both selectors in ONE peer: pods with these labels in THAT namespace
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def render_server(
    entry: CatalogEntry,
    *,
    slug: str,
    namespace: str,
    image: str,
    deployment_id: str,
    replicas: int = 1,
    bridge_port: int = BRIDGE_PORT,
    gateway_selector: Mapping[str, str] = DEFAULT_GATEWAY_SELECTOR,
    control_plane_selector: Mapping[str, str] | None = DEFAULT_CONTROL_PLANE_SELECTOR,
    clients_namespace: str | None = None,
    egress_proxy_selector: Mapping[str, str] = DEFAULT_EGRESS_PROXY_SELECTOR,
    egress_proxy_url: str = DEFAULT_EGRESS_PROXY_URL,
    egress_proxy_namespace: str | None = None,
    dns_selector: Mapping[str, str] = DEFAULT_DNS_SELECTOR,
    dns_namespace: str = DEFAULT_DNS_NAMESPACE,
    open_egress_except: Sequence[str] = (),
    bootstrap: Mapping[str, str] | None = None,
    image_pull_policy: str = "IfNotPresent",
    storage_size: str = "1Gi",
    storage_class: str | None = None,
    storage_access_mode: str = "ReadWriteOnce",
) -> list[dict[str, Any]]:
    """Every object deployment `slug` of `entry` needs, in apply order.

    `bootstrap` maps "token" to the bridge token and variable names to values; None renders a Secret
    of placeholders (annotated `io.stockade/placeholder: "true"`), so `stockade k8s render` output
    never holds a secret value, and `apply` refuses to send such a Secret to a cluster.

    `gateway_selector` / `control_plane_selector` (None: gateway only) name the pods that may call
    the bridge; `clients_namespace` the namespace they run in (None: `namespace`). Both are needed:
    the gateway proxies calls, the control plane lists a new server's tools. Labels are not
    authentication — anyone who may create pods in that namespace can wear them — the bridge token
    is; the policy narrows who can even try.

    `image_pull_policy` defaults to IfNotPresent, the sensible choice with a cluster registry; use
    Never where images are loaded into each node (kind, k3s imports). On one machine Stockade never
    pulls at all (it builds its images locally).
    """
    _check_dns_label(slug, "slug", max_len=63 - len(NAME_PREFIX) - len("-bootstrap"))
    _check_dns_label(namespace, "namespace")
    _check_label_value(deployment_id, "deployment id")
    if image_pull_policy not in PULL_POLICIES:
        raise ConfigError(f"image pull policy {image_pull_policy!r} is not one of {', '.join(PULL_POLICIES)}")
    if replicas < 0:
        raise ConfigError("replicas cannot be negative")
    if not 1 <= bridge_port <= 65535:
        raise ConfigError(f"bridge port {bridge_port} is out of range")
    if entry.mounts and replicas > 1 and storage_access_mode == "ReadWriteOnce":
        raise ConfigError(
            f"{slug}: {replicas} replicas cannot share a ReadWriteOnce claim for the entry's mounts",
            hint="use storage_access_mode='ReadWriteMany' with a storage class that supports it, or 1 replica",
        )

    name = object_name(slug)
    labels = server_labels(entry, slug, deployment_id)
    meta = {"name": name, "namespace": namespace, "labels": labels}
    limits = entry.resources.limits
    bootstrap_json, placeholder = _bootstrap_document(entry, bootstrap)

    # -- the bootstrap Secret: one key, mounted as a file, never as environment variables ----------
    secret_name = f"{name}-bootstrap"
    secret_annotations = {ANNOTATION_PLACEHOLDER: "true"} if placeholder else {}
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {**meta, "name": secret_name, **({"annotations": secret_annotations} if secret_annotations else {})},
        "type": "Opaque",
        "stringData": {BOOTSTRAP_KEY: bootstrap_json},
    }

    # -- volumes -----------------------------------------------------------------------------------
    tmp_mb = max(16, limits.memory_mb // 4)
    volumes: list[dict[str, Any]] = [
        # Memory-backed: counts against the container's memory limit, never touches node disk.
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": f"{tmp_mb}Mi"}},
        {
            "name": "bootstrap",
            "secret": {
                "secretName": secret_name,
                "defaultMode": 0o400,
                "items": [{"key": BOOTSTRAP_KEY, "path": BOOTSTRAP_KEY}],
            },
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True},
    ]
    objects: list[dict[str, Any]] = []
    if entry.mounts:
        # Host directories: hostPath volumes are forbidden by the restricted standard (and would tie
        # a pod to one node), so each mount becomes a subPath of ONE claim per deployment, named
        # after it. Unlike `{data_dir}/shared` on one machine, the data is therefore NOT shared
        # between deployments; pre-populate or back up the claim like any other volume.
        claim = f"{name}-data"
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
        for mount in entry.mounts:
            mounts.append({
                "name": "data",
                "mountPath": mount.container_path,
                "subPath": _mount_sub_path(mount.host_path),
                "readOnly": mount.read_only,
            })
        pvc_spec: dict[str, Any] = {"accessModes": [storage_access_mode], "resources": {"requests": {"storage": storage_size}}}
        if storage_class is not None:
            pvc_spec["storageClassName"] = storage_class
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {**meta, "name": claim}, "spec": pvc_spec})

    # -- the container -----------------------------------------------------------------------------
    args = ["--host", "0.0.0.0", "--port", str(bridge_port), "--bootstrap-file", BOOTSTRAP_FILE, "--name", slug]
    for variable in entry.required_env:
        args += ["--required-env", variable.name]
    args += ["--", *entry.command]

    env: list[dict[str, str]] = []
    if entry.network is NetworkProfile.egress:
        # Not secret: where the allowlisting proxy is. The bridge passes its environment on to the
        # server process, so HTTP clients that honour these variables use the proxy; those that
        # don't simply cannot connect (the NetworkPolicy admits only the proxy).
        env = [{"name": n, "value": egress_proxy_url} for n in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")]

    resources = {"cpu": _cpu(limits.cpus), "memory": f"{limits.memory_mb}Mi"}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "args": args,
        "ports": [{"name": "http", "containerPort": bridge_port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "initialDelaySeconds": 1,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Requests equal limits: Guaranteed QoS, predictable like the Docker limits. The catalog's
        # `pids` limit has no pod field: it is the kubelet's `podPidsLimit` (node configuration),
        # so it is NOT enforced per server here.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": _restricted_container_context(),
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env

    annotations = {"io.stockade/catalog-entry": entry.name}
    if entry.egress:
        annotations[ANNOTATION_EGRESS] = ",".join(entry.egress)
    pod_annotations = {}
    if not placeholder:
        # Restart pods when the bootstrap changes (the bridge reads the file once, at start). A hash
        # of a document holding a 256-bit token reveals nothing about its values.
        pod_annotations[ANNOTATION_BOOTSTRAP_SHA] = hashlib.sha256(bootstrap_json.encode()).hexdigest()

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**meta, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": pod_selector(slug)},
            # A ReadWriteOnce claim cannot be attached to the old and the new pod at once on two nodes.
            "strategy": {"type": "Recreate"} if entry.mounts else {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels, **({"annotations": pod_annotations} if pod_annotations else {})},
                "spec": {
                    "automountServiceAccountToken": False,
                    # No FOO_SERVICE_HOST/PORT variables for every Service in the namespace.
                    "enableServiceLinks": False,
                    "securityContext": _restricted_pod_context(),
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": pod_selector(slug),
            "ports": [{"name": "http", "port": bridge_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }

    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": render_network_policy_spec(
            entry,
            slug=slug,
            bridge_port=bridge_port,
            gateway_selector=gateway_selector,
            control_plane_selector=control_plane_selector,
            clients_namespace=clients_namespace,
            egress_proxy_selector=egress_proxy_selector,
            egress_proxy_url=egress_proxy_url,
            egress_proxy_namespace=egress_proxy_namespace,
            dns_selector=dns_selector,
            dns_namespace=dns_namespace,
            open_egress_except=open_egress_except,
        ),
    }
    # Policy first, so the pods never run a moment without it; the Secret before the Deployment.
    # Deep copies: no two objects share a dict (no YAML aliases, no action at a distance).
    return copy.deepcopy([policy, secret, *objects, service, deployment])


def render_network_policy_spec(
    entry: CatalogEntry,
    *,
    slug: str,
    bridge_port: int = BRIDGE_PORT,
    gateway_selector: Mapping[str, str] = DEFAULT_GATEWAY_SELECTOR,
    control_plane_selector: Mapping[str, str] | None = DEFAULT_CONTROL_PLANE_SELECTOR,
    clients_namespace: str | None = None,
    egress_proxy_selector: Mapping[str, str] = DEFAULT_EGRESS_PROXY_SELECTOR,
    egress_proxy_url: str = DEFAULT_EGRESS_PROXY_URL,
    egress_proxy_namespace: str | None = None,
    dns_selector: Mapping[str, str] = DEFAULT_DNS_SELECTOR,
    dns_namespace: str = DEFAULT_DNS_NAMESPACE,
    open_egress_except: Sequence[str] = (),
) -> dict[str, Any]:
    """Default deny both ways, then the few holes the server's network profile needs.

    - ingress: only the gateway (and control plane) pods, only to the bridge port;
    - `network: none`: no egress at all, not even DNS — the bridge only answers, the server needs
      no name resolution, and DNS is itself a channel data can leave by (tunnelling through the
      cluster resolver);
    - `network: egress`: the egress proxy's port, plus DNS to the cluster resolver, needed to
      resolve the proxy's Service name (destination names are resolved by the proxy, which
      enforces the allowlist). The DNS hole is the residual exfiltration channel of this profile;
    - `network: open`: any address but private, CGNAT, link-local (cloud metadata) and loopback
      ranges, plus DNS. See OPEN_NETWORK_WARNING.
    """
    peers = [_peer(gateway_selector, clients_namespace)]
    if control_plane_selector is not None:
        peers.append(_peer(control_plane_selector, clients_namespace))
    dns_rule = {
        "to": [_peer(dns_selector, dns_namespace)],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    egress: list[dict[str, Any]] = []
    if entry.network is NetworkProfile.egress:
        proxy_port = urlsplit(egress_proxy_url).port
        if proxy_port is None:
            raise ConfigError(f"egress proxy URL {egress_proxy_url!r} must name a port")
        egress = [{"to": [_peer(egress_proxy_selector, egress_proxy_namespace)], "ports": [{"protocol": "TCP", "port": proxy_port}]}, dns_rule]
    elif entry.network is NetworkProfile.open:
        # LOUD: see OPEN_NETWORK_WARNING. `except` must lie inside its cidr, so split by family.
        extra = [ipaddress.ip_network(c, strict=False) for c in open_egress_except]
        v4 = [*OPEN_EGRESS_EXCEPT_V4, *(str(n) for n in extra if n.version == 4)]
        v6 = [*OPEN_EGRESS_EXCEPT_V6, *(str(n) for n in extra if n.version == 6)]
        egress = [
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": v4}}, {"ipBlock": {"cidr": "::/0", "except": v6}}]},
            dns_rule,
        ]
    return {
        "podSelector": {"matchLabels": pod_selector(slug)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": bridge_port}]}],
        "egress": egress,
    }


def egress_allowlist(entries: Iterable[CatalogEntry]) -> list[str]:
    """The union of `egress` destinations: what the shared proxy (Helm `egressProxy.allowedDestinations`) must allow.

    The chart's one proxy cannot tell servers apart, so on Kubernetes every egress server may reach
    every destination in this union — per-server allowlists are enforced on one machine only.
    """
    return sorted({d for e in entries for d in e.egress})


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(manifests: Iterable[Mapping[str, Any]]) -> str:
    """Multi-document YAML (`---` separated), keys in the order rendered, no anchors or aliases."""
    return "".join(
        "---\n" + yaml.dump(dict(m), Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False) for m in manifests
    )
