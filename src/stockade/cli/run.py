"""`stockade up` / `serve`: bring the platform up in the foreground and say how to use it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import anyio
from rich.panel import Panel

from stockade.cli.output import console
from stockade.config import Settings
from stockade.control.platform import Platform, mint_admin_token
from stockade.errors import StockadeError


def run_platform(
    settings: Settings,
    *,
    deploy: list[str],
    progress: Callable[[str], None],
    gateway: bool = True,
    control: bool = True,
) -> None:
    platform = Platform(settings, control=control, progress=progress)
    for name in deploy:
        platform.catalog.get(name)  # unknown names fail before anything starts

    def prepare() -> list[str]:
        deployments = platform.deployments
        if deployments is None:
            return []
        for name in deploy:
            built = deployments.orchestrator.ensure_image(platform.catalog.get(name))
            progress(f"image for {name}: {built.tag} ({'built' if built.built else 'up to date, nothing rebuilt'})")
        actions = deployments.reconcile()
        existing = {d.slug for d in deployments.list()}
        for name in deploy:
            if name in existing:
                continue
            deployments.create(name, slug=name, env={})
            progress(f"deploying {name}…")
            deployments.start(name)
        return actions

    async def on_started() -> None:
        try:
            for action in await anyio.to_thread.run_sync(prepare):
                progress(action)
        except StockadeError as exc:
            console.print(f"[bold red]error:[/bold red] {exc}")
        lines = []
        if gateway:
            lines.append(f"Gateway:        {settings.gateway_url} (all your tools: {settings.gateway_url}/mcp)")
        if platform.deployments is not None:
            lines.append(f"Management API: {settings.control_url}/api/v1 (OpenAPI: {settings.control_url}/api/openapi.json)")
            lines += ["", "MCP endpoints (Streamable HTTP, header 'Authorization: Bearer <token>'):"]
            for d in platform.deployments.list():
                lines.append(f"  {d.slug:<12} {settings.gateway_url}/servers/{d.slug}/mcp   ({d.status})")
            minted = mint_admin_token(platform.database, name=f"up-{datetime.now():%Y%m%d-%H%M%S}")
            lines += ["", f"Admin token (shown once, expires {minted.expires_at:%Y-%m-%d}):", f"  {minted.secret}",
                      "", "export STOCKADE_TOKEN=<admin token> to use the CLI."]
        lines.append("Ctrl-C stops this process; server containers keep running and are adopted on the next start.")
        console.print(Panel("\n".join(lines), title="Stockade is up", expand=False), highlight=False)

    try:
        # uvloop (installed with uvicorn[standard]): every gateway call crosses the event loop
        # several times, and uvloop's loop costs a fraction of asyncio's own per crossing.
        anyio.run(lambda: platform.serve(gateway=gateway, on_started=on_started), backend_options={"use_uvloop": True})
    finally:
        platform.close()
