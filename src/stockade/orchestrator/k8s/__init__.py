"""The Kubernetes backend: render catalog entries as manifests, apply them, discover servers.

Rendering (`render`) is pure and needs neither a cluster nor the `kubernetes` package; applying
and discovery (`cluster`) use the official `kubernetes` client, imported only when called.
"""

from stockade.orchestrator.k8s.cluster import DiscoveredServer, apply, discover_servers, load_api_client
from stockade.orchestrator.k8s.render import (
    OPEN_NETWORK_WARNING,
    bridge_token_context,
    default_deployment_id,
    egress_allowlist,
    image_for,
    object_name,
    render_namespace,
    render_network_policy_spec,
    render_server,
    to_yaml,
)

__all__ = [
    "OPEN_NETWORK_WARNING",
    "DiscoveredServer",
    "apply",
    "bridge_token_context",
    "default_deployment_id",
    "discover_servers",
    "egress_allowlist",
    "image_for",
    "load_api_client",
    "object_name",
    "render_namespace",
    "render_network_policy_spec",
    "render_server",
    "to_yaml",
]
