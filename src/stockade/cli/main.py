"""The `stockade` command line."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from stockade.cli import k8s
from stockade.cli.client import ApiClient
from stockade.cli.output import console, emit, errors
from stockade.cli.verify import verify_command
from stockade.config import Settings, load_settings
from stockade.errors import StockadeError

app = typer.Typer(no_args_is_help=True, help="Run MCP servers as governed, isolated infrastructure.")
members_app = typer.Typer(no_args_is_help=True, help="Members and their roles.")
tokens_app = typer.Typer(no_args_is_help=True, help="Bearer tokens (shown once, stored hashed).")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
catalog_app = typer.Typer(no_args_is_help=True, help="Approved MCP servers.")
app.add_typer(members_app, name="members")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(catalog_app, name="catalog")
secrets_app = typer.Typer(no_args_is_help=True, help="Deployment variables and secrets (values are never shown).")
app.add_typer(secrets_app, name="secrets")
app.add_typer(k8s.app, name="k8s", help="Render and apply Kubernetes manifests for catalog entries.")
app.command("verify")(verify_command)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def settings() -> Settings:
    return load_settings()


def api() -> ApiClient:
    return ApiClient(settings())


def progress(message: str) -> None:
    console.print(f"[dim]•[/dim] {message}", highlight=False)


# -- running the platform -------------------------------------------------------------------------
@app.command()
def up(
    servers: Annotated[
        str, typer.Option(help="Comma-separated bundled catalog entries to deploy ('' for none).")
    ] = "time,everything,filesystem",
) -> None:
    """Start the platform with embedded defaults, deploy the example servers, print how to connect."""
    from stockade.cli.run import run_platform

    run_platform(settings(), deploy=[s for s in servers.split(",") if s], progress=progress)


@app.command()
def serve() -> None:
    """Serve the gateway and the management API (deploys nothing new; adopts what runs)."""
    from stockade.cli.run import run_platform

    run_platform(settings(), deploy=[], progress=progress)


@app.command()
def gateway() -> None:
    """Serve only the gateway (stateless: several may share one PostgreSQL; needs no container engine)."""
    from stockade.cli.run import run_platform

    run_platform(settings(), deploy=[], progress=progress, control=False)


@app.command()
def control() -> None:
    """Serve only the management API and supervise deployments (gateways run as separate processes)."""
    from stockade.cli.run import run_platform

    run_platform(settings(), deploy=[], progress=progress, gateway=False)


@app.command("admin-token")
def admin_token(name: Annotated[str, typer.Option(help="A name for the token.")] = "cli") -> None:
    """Mint an admin token directly in the local database (needs access to the data directory)."""
    from stockade.control.platform import mint_admin_token, open_database

    database = open_database(settings())
    try:
        minted = mint_admin_token(database, name=name)
    finally:
        database.close()
    print(minted.secret)


@app.command()
def engine() -> None:
    """Find (or, on Debian as root, install and start) the container engine, and describe it."""
    from stockade.orchestrator.engine import connect_engine, engine_summary

    client = connect_engine(settings(), progress=progress)
    for key, value in engine_summary(client).items():
        console.print(f"{key}: {value}")


@app.command()
def doctor(as_json: JsonOption = False) -> None:
    """Check engine, images, tools, database, master key, ports and clock; print the fix for each problem."""
    from stockade.cli.doctor import run_checks

    findings = run_checks(settings())
    rows = [{"check": f.check, "status": "ok" if f.ok else "PROBLEM", "detail": f.detail, "fix": f.fix} for f in findings]
    emit(rows, as_json=as_json, columns=("check", "status", "detail", "fix"), title="stockade doctor")
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


@app.command()
def images(
    names: Annotated[list[str] | None, typer.Argument(help="Catalog entries (default: all).")] = None,
) -> None:
    """Build (offline, cached) the images of catalog entries."""
    from stockade.catalog import Catalog
    from stockade.orchestrator.engine import connect_engine
    from stockade.orchestrator.images import ImageBuilder

    current = settings()
    catalog = Catalog.load(current.catalog_file)
    builder = ImageBuilder(connect_engine(current, progress=progress), current, progress=progress)
    for entry in [catalog.get(n) for n in names] if names else catalog.servers:
        built = builder.ensure_server_image(entry)
        console.print(f"{entry.name}: {built.tag} ({'built' if built.built else 'up to date'})")


# -- deployments ------------------------------------------------------------------------------------
DEPLOYMENT_COLUMNS = ("slug", "entry", "status", "replicas", "restarts", "last_exit", "endpoint", "error")
INSTANCE_COLUMNS = ("number", "status", "restarts", "last_exit", "error")


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise StockadeError(f"--env {pair.split('=')[0]!r} must look like NAME=VALUE")
        env[name] = value
    return env


@app.command()
def deploy(
    server: Annotated[str, typer.Argument(help="Catalog entry to deploy.")],
    slug: Annotated[str | None, typer.Option(help="Deployment name (default: the entry name).")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE; repeat.")] = None,
    replicas: Annotated[int | None, typer.Option(help="Instances to run (default: the catalog entry's).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Deploy a catalog entry and wait until it answers."""
    body: dict[str, Any] = {"server": server, "env": _parse_env(env or [])}
    if slug:
        body["slug"] = slug
    if replicas is not None:
        body["replicas"] = replicas
    with console.status(f"deploying {slug or server}…"):
        result = api().request("POST", "/deployments", json=body)
    emit(result, as_json=as_json, columns=DEPLOYMENT_COLUMNS)
    if result.get("warning") and not as_json:
        errors.print(f"[bold red]{result['warning']}[/bold red]", highlight=False)


@app.command("servers")
def list_servers(as_json: JsonOption = False) -> None:
    """List deployments and their status."""
    emit(api().request("GET", "/deployments"), as_json=as_json, columns=DEPLOYMENT_COLUMNS, title="Servers")


@app.command()
def status(slug: str, as_json: JsonOption = False) -> None:
    """A deployment's status and the health of each of its instances."""
    result = api().request("GET", f"/deployments/{slug}")
    if as_json:
        emit(result, as_json=True)
        return
    emit(result, as_json=False, columns=DEPLOYMENT_COLUMNS)
    emit(result["instances"], as_json=False, columns=INSTANCE_COLUMNS, title=f"Instances of {slug}")


@app.command()
def scale(slug: str, replicas: Annotated[int, typer.Argument(help="How many instances to run.")],
          as_json: JsonOption = False) -> None:
    """Run this many instances of a server (new ones join once ready; surplus ones drain first)."""
    with console.status(f"scaling {slug} to {replicas}…"):
        result = api().request("POST", f"/deployments/{slug}/scale", json={"replicas": replicas})
    emit(result, as_json=as_json, columns=DEPLOYMENT_COLUMNS)


@app.command()
def stop(slug: str, as_json: JsonOption = False) -> None:
    """Stop a server; its stored variables stay for a later restart."""
    emit(api().request("POST", f"/deployments/{slug}/stop"), as_json=as_json, columns=DEPLOYMENT_COLUMNS)


@app.command()
def restart(slug: str, as_json: JsonOption = False) -> None:
    """Start a stopped server, or replace a running one with fresh containers (no call dropped)."""
    with console.status(f"restarting {slug}…"):
        result = api().request("POST", f"/deployments/{slug}/restart")
    emit(result, as_json=as_json, columns=DEPLOYMENT_COLUMNS)


@app.command()
def remove(slug: str) -> None:
    """Remove a deployment: its container, network and stored values."""
    api().request("DELETE", f"/deployments/{slug}")
    console.print(f"removed {slug}")


@app.command()
def logs(slug: str, tail: Annotated[int, typer.Option(help="How many recent lines.")] = 200) -> None:
    """A server's recent output, with its secret values redacted."""
    print(api().request("GET", f"/deployments/{slug}/logs", params={"tail": tail}, text=True), end="")


def _read_values(names: list[str], from_stdin: bool) -> dict[str, str]:
    """Values typed at a hidden prompt, or NAME=VALUE lines on stdin; never on the command line."""
    if from_stdin:
        values = _parse_env([line for line in sys.stdin.read().splitlines() if line.strip()])
        missing = sorted(set(names) - set(values))
        if missing:
            raise StockadeError(f"stdin has no value for: {', '.join(missing)}")
        return {name: values[name] for name in names}
    return {name: typer.prompt(f"{name}", hide_input=True) for name in names}


@secrets_app.command("list")
def secrets_list(slug: str, as_json: JsonOption = False) -> None:
    """Names of a deployment's variables and when they were set."""
    emit(api().request("GET", f"/deployments/{slug}/variables"), as_json=as_json,
         columns=("name", "secret", "set_at"), title=f"Variables of {slug}")


@secrets_app.command("set")
def secrets_set(
    slug: str,
    names: Annotated[list[str], typer.Argument(help="Variable names; values are asked for, hidden.")],
    from_stdin: Annotated[bool, typer.Option("--stdin", help="Read NAME=VALUE lines from stdin.")] = False,
) -> None:
    """Set values; the server gets them at its next start (use `rotate` to move it now)."""
    api().request("PUT", f"/deployments/{slug}/variables", json={"env": _read_values(names, from_stdin)})
    console.print(f"set {', '.join(names)} on {slug} (takes effect at the next start)")


@secrets_app.command("rotate")
def secrets_rotate(
    slug: str,
    names: Annotated[list[str], typer.Argument(help="Variable names; values are asked for, hidden.")],
    from_stdin: Annotated[bool, typer.Option("--stdin", help="Read NAME=VALUE lines from stdin.")] = False,
) -> None:
    """Set new values and move the server onto them now, without dropping calls in flight."""
    values = _read_values(names, from_stdin)
    with console.status(f"rotating {', '.join(names)} on {slug}…"):
        api().request("POST", f"/deployments/{slug}/variables:rotate", json={"env": values})
    console.print(f"rotated {', '.join(names)} on {slug}")


# -- members and tokens -------------------------------------------------------------------------
@members_app.command("add")
def members_add(name: str, role: Annotated[str, typer.Option(help="A role name (see the roles API).")] = "member",
                as_json: JsonOption = False) -> None:
    """Add a member with a role."""
    emit(api().request("POST", "/members", json={"name": name, "role": role}), as_json=as_json, columns=("name", "role", "created_at"))


@members_app.command("list")
def members_list(as_json: JsonOption = False) -> None:
    """List members and their roles."""
    emit(api().request("GET", "/members"), as_json=as_json, columns=("name", "role", "created_at"), title="Members")


@members_app.command("offboard")
def members_offboard(name: str, as_json: JsonOption = False) -> None:
    """Revoke every token of a member and close their open streams and sessions."""
    result = api().request("POST", f"/members/{name}/offboard")
    if as_json:
        emit(result, as_json=True)
    else:
        console.print(f"{name}: revoked {len(result['tokens_revoked'])} tokens "
                      f"({', '.join(result['tokens_revoked']) or 'none'}), closed {result['streams_closed']} streams "
                      f"and {result['sessions_closed']} sessions")


@members_app.command("remove")
def members_remove(name: str) -> None:
    """Remove a member after revoking all their tokens."""
    result = api().request("DELETE", f"/members/{name}")
    console.print(f"removed {name}; revoked {len(result['tokens_revoked'])} tokens")


@tokens_app.command("mint")
def tokens_mint(
    member: str,
    name: Annotated[str, typer.Option(help="A name for the token.")] = "default",
    days: Annotated[int, typer.Option(help="Days until it expires.")] = 90,
    as_json: JsonOption = False,
) -> None:
    """Mint a token; it is printed once and cannot be shown again."""
    result = api().request("POST", f"/members/{member}/tokens", json={"name": name, "expires_in_days": days})
    if as_json:
        emit(result, as_json=True)
    else:
        console.print(f"token {result['id']} for {result['member']} (expires {result['expires_at']}):")
        print(result["token"])


@tokens_app.command("list")
def tokens_list(member: Annotated[str | None, typer.Option()] = None, as_json: JsonOption = False) -> None:
    """List tokens (never their values)."""
    params = {"member": member} if member else {}
    emit(api().request("GET", "/tokens", params=params), as_json=as_json,
         columns=("id", "member", "name", "expires_at", "revoked_at"), title="Tokens")


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, as_json: JsonOption = False) -> None:
    """Revoke a token: the next request with it fails and its open streams close."""
    emit(api().request("DELETE", f"/tokens/{token_id}"), as_json=as_json, columns=("id", "member", "revoked_at"))


# -- audit and catalog ----------------------------------------------------------------------------
@audit_app.command("list")
def audit_list(
    member: Annotated[str | None, typer.Option()] = None,
    server: Annotated[str | None, typer.Option()] = None,
    tool: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: JsonOption = False,
) -> None:
    params = {k: v for k, v in dict(member=member, server=server, tool=tool, outcome=outcome, limit=limit).items() if v is not None}
    emit(api().request("GET", "/audit", params=params), as_json=as_json,
         columns=("id", "ts", "member", "server", "method", "tool", "latency_ms", "outcome", "error_code"), title="Audit")


@audit_app.command("export")
def audit_export(
    member: Annotated[str | None, typer.Option()] = None,
    server: Annotated[str | None, typer.Option()] = None,
    tool: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-01T00:00:00Z")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time")] = None,
) -> None:
    """Matching records as JSON Lines on stdout."""
    params = {k: v for k, v in dict(member=member, server=server, tool=tool, outcome=outcome, since=since,
                                    until=until).items() if v is not None}
    print(api().request("GET", "/audit/export", params=params, text=True), end="")


@audit_app.command("verify")
def audit_verify(as_json: JsonOption = False) -> None:
    """Check the hash chain; name every edited, inserted or deleted record. Exit 1 if broken."""
    result = api().request("GET", "/audit/verify")
    if as_json:
        emit(result, as_json=True)
    elif result["ok"]:
        console.print(f"audit chain intact ({result['records']} records)")
    else:
        emit(result["problems"], as_json=False, columns=("record_id", "problem"), title="Audit chain broken")
    if not result["ok"]:
        raise typer.Exit(1)


@catalog_app.command("list")
def catalog_list(as_json: JsonOption = False) -> None:
    emit(api().request("GET", "/catalog"), as_json=as_json, columns=("name", "resources", "network", "description"), title="Catalog")


@catalog_app.command("show")
def catalog_show(name: str) -> None:
    emit(api().request("GET", f"/catalog/{name}"), as_json=True)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit in this mode
    except StockadeError as exc:
        errors.print(f"[bold red]error:[/bold red] {exc.message}", highlight=False)
        if exc.hint:
            errors.print(f"[yellow]hint:[/yellow] {exc.hint}", highlight=False)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
