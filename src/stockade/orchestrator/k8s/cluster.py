"""Talking to a cluster with the official `kubernetes` client: applying manifests, finding servers.

`apply` is deliberately small: it has never been run against a real cluster in this repository's
tests (none is available where they run) — only its refusals and its errors without a reachable
API server are tested. `discover_servers` is tested against the client's own model objects and a
loopback HTTP server speaking the Kubernetes list API, also behind a running gateway.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.errors import DeploymentError, EngineError
from stockade.orchestrator.k8s.render import (
    ANNOTATION_PLACEHOLDER,
    BRIDGE_PORT,
    LABEL_DEPLOYMENT,
    LABEL_ENTRY,
    LABEL_NAME,
    LABEL_SERVER,
    SERVER_APP_NAME,
)

FIELD_MANAGER = "stockade"
SERVER_LABEL_SELECTOR = f"{LABEL_NAME}={SERVER_APP_NAME},{LABEL_SERVER}"

# Cluster-scoped kinds first, then what pods depend on; Deployments last.
_ORDER = {"Namespace": 0, "NetworkPolicy": 1, "Secret": 2, "PersistentVolumeClaim": 3, "Service": 4, "Deployment": 5}


def _is_placeholder(manifest: Mapping[str, Any]) -> bool:
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    return manifest.get("kind") == "Secret" and annotations.get(ANNOTATION_PLACEHOLDER) == "true"


def load_api_client(kubeconfig: str | Path | None = None, *, context: str | None = None) -> Any:
    """An `ApiClient` from `kubeconfig`, else in-cluster configuration, else the default kubeconfig.

    Raises `EngineError` naming what was tried when no configuration can be loaded.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        if kubeconfig is not None and not Path(kubeconfig).is_file():
            raise EngineError(f"kubeconfig {kubeconfig} does not exist", hint="pass --kubeconfig PATH to a readable kubeconfig file")
        return config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None, context=context, persist_config=False)
    except ConfigException as exc:
        where = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise EngineError(
            f"no usable Kubernetes configuration ({where}): {exc}",
            hint="pass --kubeconfig, set KUBECONFIG, or run inside a cluster with a service account",
        ) from None


def _unreachable(exc: BaseException, api_client: Any) -> EngineError:
    host = getattr(getattr(api_client, "configuration", None), "host", "the API server")
    return EngineError(f"cannot reach the Kubernetes API at {host}: {type(exc).__name__}", hint="check the cluster is running and the kubeconfig's server address")


def apply(
    manifests: Iterable[Mapping[str, Any]],
    *,
    namespace: str,
    kubeconfig: str | Path | None = None,
    context: str | None = None,
    api_client: Any = None,
    field_manager: str = FIELD_MANAGER,
) -> list[str]:
    """Server-side apply every manifest (namespaced ones into `namespace` unless they name one).

    Refuses, before connecting, to apply a placeholder Secret (from a render without bootstrap
    values): that would replace a real bridge token with a known string. Returns "Kind/name" of
    each object applied. A successful apply does not mean pods run: PodSecurity admission rejects
    non-compliant pods when the ReplicaSet creates them, and readiness is not awaited here.
    """
    ordered = sorted((dict(m) for m in manifests), key=lambda m: _ORDER.get(m.get("kind", ""), 9))
    placeholders = [m["metadata"]["name"] for m in ordered if _is_placeholder(m)]
    if placeholders:
        raise DeploymentError(
            f"refusing to apply placeholder Secrets: {', '.join(placeholders)}",
            hint="render with real bootstrap values (stockade k8s apply --bootstrap-dir DIR)",
        )
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

    api_client = api_client or load_api_client(kubeconfig, context=context)
    try:
        dynamic = DynamicClient(api_client)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(exc, api_client) from None
    except (ApiException, DynamicApiError) as exc:
        raise EngineError(f"the Kubernetes API refused discovery: {getattr(exc, 'status', '')} {getattr(exc, 'reason', exc)}") from None
    applied = []
    for manifest in ordered:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=kind)
            target_ns = (manifest["metadata"].get("namespace") or namespace) if resource.namespaced else None
            dynamic.server_side_apply(resource, body=manifest, name=name, namespace=target_ns, field_manager=field_manager, force_conflicts=True)
        except ResourceNotFoundError:
            raise DeploymentError(f"the cluster does not serve {manifest['apiVersion']} {kind}") from None
        except (ApiException, DynamicApiError) as exc:
            status = getattr(exc, "status", None)
            hint = "the kubeconfig's user needs RBAC to create and patch this kind in the namespace" if status in (401, 403) else None
            raise DeploymentError(f"applying {kind}/{name} failed ({status}): {_api_message(exc)}", hint=hint) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _unreachable(exc, api_client) from None
        applied.append(f"{kind}/{name}")
    return applied


def _api_message(exc: Exception) -> str:
    """The API server's own message (e.g. a PodSecurity or validation refusal), not the raw headers."""
    import json

    body = getattr(exc, "body", None)
    if isinstance(body, (str, bytes)):
        try:
            return str(json.loads(body).get("message") or body)
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(getattr(exc, "reason", None) or exc)[:500]


def _value(obj: Any, *path: str) -> Any:
    """Read a field from a kubernetes model object or its dict form."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return obj


@dataclass(frozen=True)
class DiscoveredServer:
    slug: str
    endpoint: str
    entry: str | None  # the catalog entry it was rendered from (io.stockade/entry)
    deployment_id: str | None  # io.stockade/deployment: with the slug, what its bridge token derives from


def discover_servers(core_v1_api: Any, namespace: str) -> list[DiscoveredServer]:
    """Every Stockade server Service in `namespace`, sorted by slug.

    Asks the API for Services labelled `app.kubernetes.io/name=stockade-server` with an
    `io.stockade/server` label, and checks the labels again (a selector is a request, not a
    guarantee). The endpoint is the Service's cluster IP (no DNS lookup per call), else for a
    headless Service its cluster DNS name, with its `http` port (else the first), e.g.
    `http://mcp-<slug>.<namespace>.svc:8080`.
    """
    result = core_v1_api.list_namespaced_service(namespace, label_selector=SERVER_LABEL_SELECTOR)
    found = []
    for service in _value(result, "items") or []:
        labels = _value(service, "metadata", "labels") or {}
        slug = labels.get(LABEL_SERVER)
        if labels.get(LABEL_NAME) != SERVER_APP_NAME or not slug:
            continue
        ports = _value(service, "spec", "ports") or []
        named = [p for p in ports if _value(p, "name") == "http"] or list(ports)
        port = _value(named[0], "port") if named else BRIDGE_PORT
        name = _value(service, "metadata", "name")
        ns = _value(service, "metadata", "namespace") or namespace
        cluster_ip = _value(service, "spec", "cluster_ip") or _value(service, "spec", "clusterIP")
        if cluster_ip and cluster_ip != "None":
            host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
        else:
            host = f"{name}.{ns}.svc"
        found.append(DiscoveredServer(slug, f"http://{host}:{port}", labels.get(LABEL_ENTRY), labels.get(LABEL_DEPLOYMENT)))
    return sorted(found, key=lambda server: server.slug)
