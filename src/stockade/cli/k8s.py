"""`stockade k8s`: render catalog entries as Kubernetes manifests, and apply them.

`render` needs no cluster and prints no secret value (bootstrap Secrets hold placeholders).
`apply` needs a kubeconfig (or in-cluster credentials), a bootstrap file of variable values per
server, and the master key the gateways use: each bridge token is derived from it, never stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.catalog import Catalog, CatalogEntry, NetworkProfile
from stockade.errors import ConfigError
from stockade.secrets import Sealer, load_master_key

app = typer.Typer(no_args_is_help=True, help="Kubernetes: render manifests for catalog entries and apply them.")

EntriesArg = Annotated[list[str] | None, typer.Argument(help="Catalog entries (default: all).")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Namespace the servers run in.")]
PrefixOpt = Annotated[str, typer.Option("--image-prefix", help="Registry prefix the images were pushed under, e.g. registry.example/stockade.")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Catalog YAML (default: STOCKADE_CATALOG_FILE, else the bundled one).")]
PullOpt = Annotated[str, typer.Option("--pull-policy", help="imagePullPolicy: IfNotPresent, Never (images loaded on nodes) or Always.")]
ClientsNsOpt = Annotated[str | None, typer.Option("--clients-namespace", help="Namespace of the gateway and control plane, if not --namespace.")]
ProxyUrlOpt = Annotated[str | None, typer.Option("--egress-proxy-url", help="The egress proxy as servers reach it (default: STOCKADE_K8S_EGRESS_PROXY_URL).")]
ProxyNsOpt = Annotated[str | None, typer.Option("--egress-proxy-namespace", help="Namespace of the egress proxy, if not --namespace.")]
NamespaceDocOpt = Annotated[bool, typer.Option("--namespace-manifest/--no-namespace-manifest", help="Include the Namespace (restricted Pod Security).")]


def _say(message: str) -> None:
    from stockade.cli.output import errors

    errors.print(message, highlight=False, soft_wrap=True)


def _entries(names: list[str] | None, catalog_file: Path | None) -> list[CatalogEntry]:
    if catalog_file is None:
        from stockade.config import load_settings

        catalog_file = load_settings().catalog_file
    catalog = Catalog.load(catalog_file)
    return [catalog.get(n) for n in names] if names else list(catalog.servers)


def _render(
    entries: list[CatalogEntry],
    *,
    namespace: str,
    image_prefix: str,
    pull_policy: str,
    clients_namespace: str | None,
    egress_proxy_url: str | None,
    egress_proxy_namespace: str | None,
    include_namespace: bool,
    bootstraps: dict[str, dict[str, str]] | None,
    sealer: Sealer | None = None,
) -> list[dict[str, Any]]:
    from stockade.orchestrator.k8s import (
        OPEN_NETWORK_WARNING,
        bridge_token_context,
        default_deployment_id,
        egress_allowlist,
        image_for,
        render_namespace,
        render_server,
    )

    if egress_proxy_url is None:
        from stockade.config import load_settings

        egress_proxy_url = load_settings().k8s_egress_proxy_url
    manifests: list[dict[str, Any]] = [render_namespace(namespace)] if include_namespace else []
    for entry in entries:
        slug = entry.name
        deployment_id = default_deployment_id(namespace, slug)
        bootstrap = None
        if bootstraps is not None and sealer is not None:
            token = sealer.derive_token(bridge_token_context(namespace, slug, deployment_id))
            bootstrap = {"token": token, **bootstraps[slug]}
        manifests += render_server(
            entry,
            slug=slug,
            namespace=namespace,
            image=image_for(entry, image_prefix),
            deployment_id=deployment_id,
            clients_namespace=clients_namespace,
            egress_proxy_url=egress_proxy_url,
            egress_proxy_namespace=egress_proxy_namespace,
            image_pull_policy=pull_policy,
            bootstrap=bootstrap,
        )
        if entry.network is NetworkProfile.open:
            _say(f"[bold red]WARNING[/bold red] {slug}: {OPEN_NETWORK_WARNING}")
        if entry.mounts:
            _say(f"[yellow]note[/yellow] {slug}: its mounts are subPaths of the claim {('mcp-' + slug)}-data, not host directories")
    allow = egress_allowlist(entries)
    if allow:
        _say(
            "[yellow]note[/yellow] the shared egress proxy must allow (Helm value egressProxy.allowedDestinations): "
            + ", ".join(allow)
            + " — every egress server can reach all of them; per-server allowlists are not enforced on Kubernetes"
        )
    return manifests


def _read_bootstraps(directory: Path, entries: list[CatalogEntry]) -> dict[str, dict[str, str]]:
    """`<slug>.json` files of variable values: {"env": {"NAME": "value"}}."""
    found: dict[str, dict[str, str]] = {}
    missing = []
    for entry in entries:
        path = directory / f"{entry.name}.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            document = json.loads(path.read_text())
            env = document.get("env") or {}
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
                raise ValueError("env must map names to strings")
        except (OSError, ValueError, AttributeError) as exc:  # never echo the content
            raise ConfigError(f"{path}: not a bootstrap document ({type(exc).__name__})", hint='expected {"env": {...}}') from None
        if "token" in document:
            raise ConfigError(f"{path}: bridge tokens are derived from the master key, not given",
                              hint='remove the "token" key; keep {"env": {...}}')
        found[entry.name] = env
    if missing:
        raise ConfigError(f"no bootstrap file for: {', '.join(missing)}", hint='write {"env": {...}} per server, mode 0600')
    return found


@app.command()
def render(
    entries: EntriesArg = None,
    namespace: NamespaceOpt = "stockade-servers",
    image_prefix: PrefixOpt = "",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the YAML here instead of stdout.")] = None,
    catalog: CatalogOpt = None,
    pull_policy: PullOpt = "IfNotPresent",
    clients_namespace: ClientsNsOpt = None,
    egress_proxy_url: ProxyUrlOpt = None,
    egress_proxy_namespace: ProxyNsOpt = None,
    namespace_manifest: NamespaceDocOpt = True,
) -> None:
    """Print multi-document YAML for catalog entries. No cluster needed; Secrets hold placeholders only."""
    from stockade.orchestrator.k8s import to_yaml

    manifests = _render(
        _entries(entries, catalog),
        namespace=namespace,
        image_prefix=image_prefix,
        pull_policy=pull_policy,
        clients_namespace=clients_namespace,
        egress_proxy_url=egress_proxy_url,
        egress_proxy_namespace=egress_proxy_namespace,
        include_namespace=namespace_manifest,
        bootstraps=None,
    )
    text = to_yaml(manifests)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        _say(f"wrote {len(manifests)} manifests to {output}")
    _say("[dim]bootstrap Secrets are placeholders: `stockade k8s apply` needs real values (--bootstrap-dir)[/dim]")


@app.command()
def apply(
    entries: EntriesArg = None,
    namespace: NamespaceOpt = "stockade-servers",
    image_prefix: PrefixOpt = "",
    bootstrap_dir: Annotated[Path, typer.Option("--bootstrap-dir", help="Directory of <slug>.json bootstrap files (variable values).")] = Path("bootstrap"),
    kubeconfig: Annotated[Path | None, typer.Option("--kubeconfig", help="Kubeconfig file (default: in-cluster, KUBECONFIG, ~/.kube/config).")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")] = None,
    catalog: CatalogOpt = None,
    pull_policy: PullOpt = "IfNotPresent",
    clients_namespace: ClientsNsOpt = None,
    egress_proxy_url: ProxyUrlOpt = None,
    egress_proxy_namespace: ProxyNsOpt = None,
    namespace_manifest: NamespaceDocOpt = True,
) -> None:
    """Render and server-side apply catalog entries to a cluster (never tested against a real one here).

    Needs the gateways' master key (STOCKADE_MASTER_KEY, the key file or the keyring, as configured):
    each server's bridge token is derived from it, so gateways find it without reading any Secret.
    """
    from stockade.config import load_settings
    from stockade.orchestrator.k8s import apply as apply_manifests

    chosen = _entries(entries, catalog)
    bootstraps = _read_bootstraps(bootstrap_dir, chosen)
    sealer = Sealer(load_master_key(load_settings(), create=False))
    manifests = _render(
        chosen,
        namespace=namespace,
        image_prefix=image_prefix,
        pull_policy=pull_policy,
        clients_namespace=clients_namespace,
        egress_proxy_url=egress_proxy_url,
        egress_proxy_namespace=egress_proxy_namespace,
        include_namespace=namespace_manifest,
        bootstraps=bootstraps,
        sealer=sealer,
    )
    for applied in apply_manifests(manifests, namespace=namespace, kubeconfig=kubeconfig, context=context):
        _say(f"applied {applied}")
