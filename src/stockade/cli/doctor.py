"""`stockade doctor`: what is wrong with this installation, and the command that fixes each thing."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import httpx2
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from stockade.catalog import Catalog
from stockade.config import Settings
from stockade.errors import StockadeError
from stockade.orchestrator.engine import engine_url, probe_engine
from stockade.orchestrator.images import server_repository
from stockade.secrets import Sealer, load_master_key
from stockade.store.database import Database
from stockade.store.models import AuditRecord, KeyCheck


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def check_engine(settings: Settings) -> list[Finding]:
    url, _default = engine_url(settings)
    client = probe_engine(settings)
    if client is None:
        return [Finding("engine", False, f"no container engine answers at {url}",
                        "scripts/up (installs docker.io and starts dockerd on Debian), or set DOCKER_HOST")]
    version = client.version().get("Version", "?")
    findings = [Finding("engine", True, f"Docker {version} at {url}")]
    catalog = Catalog.load(settings.catalog_file)
    for entry in catalog.servers:
        if entry.image is not None:
            present = bool(client.images.list(name=entry.image))
            findings.append(Finding(f"image {entry.name}", present, entry.image if present else f"{entry.image} is missing",
                                    "" if present else f"docker load or build {entry.image} (Stockade never pulls)"))
            continue
        # Not a problem when not built yet: the first deploy builds it (`stockade images` ahead of time).
        tags = client.images.list(name=server_repository(entry.name))
        findings.append(Finding(f"image {entry.name}", True,
                                f"{len(tags)} local build(s)" if tags else
                                f"not built yet: the first deploy builds it, or `stockade images {entry.name}` now"))
    client.close()
    return findings


def check_tools() -> list[Finding]:
    findings = []
    for tool, why, package in (("iptables", "host firewall for every server", "iptables"),
                               ("debootstrap", "building the base image", "debootstrap"),
                               ("npm", "building npm servers", "npm")):
        path = shutil.which(tool)
        findings.append(Finding(f"tool {tool}", path is not None, path or f"missing ({why})",
                                "" if path else f"apt-get install -y {package}"))
    return findings


def check_database(settings: Settings) -> tuple[list[Finding], Database | None]:
    database = Database(settings.resolved_database_url)
    try:
        with database.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except Exception as exc:  # any driver error means "cannot open"; the message says which
        database.close()
        return [Finding("database", False, f"cannot open {database.engine.url.render_as_string(hide_password=True)}: "
                        f"{type(exc).__name__}", "check STOCKADE_DATABASE_URL and that the server runs")], None
    config = Config()
    config.set_main_option("script_location", str(resources.files("stockade.store") / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    if current != head:
        database.close()  # the other checks read tables this schema may not have yet
        return [Finding("database", False, f"schema at {current or 'none'}, code expects {head}",
                        "stockade serve (migrates on start)")], None
    return [Finding("database", True, f"schema {head}")], database


def check_master_key(settings: Settings, database: Database | None) -> list[Finding]:
    try:
        sealer = Sealer(load_master_key(settings, create=False))
    except StockadeError as exc:
        return [Finding("master key", False, exc.message, exc.hint or "")]
    if database is None:
        return [Finding("master key", True, "loads (database not checked)")]
    with database.session() as session:
        check = session.scalar(select(KeyCheck))
        if check is None:
            return [Finding("master key", True, "loads; no sealed values yet")]
        try:
            sealer.open(check.sealed, context="key-check")
        except StockadeError as exc:
            return [Finding("master key", False, exc.message, exc.hint or "")]
    return [Finding("master key", True, "opens this database's sealed values")]


def check_port(name: str, host: str, port: int) -> Finding:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return Finding(f"port {name}", True, f"{host}:{port} is free")
        except OSError:
            pass
    try:
        if httpx2.get(f"http://{host}:{port}/health", timeout=2).json().get("status") == "alive":
            return Finding(f"port {name}", True, f"{host}:{port} is served by a running Stockade")
    except (httpx2.HTTPError, ValueError):
        pass
    variable = "STOCKADE_GATEWAY_PORT" if name == "gateway" else "STOCKADE_CONTROL_PORT"
    return Finding(f"port {name}", False, f"{host}:{port} is taken by another program", f"export {variable}=<free port>")


def check_clock(database: Database | None) -> list[Finding]:
    now = datetime.now(UTC)
    if now.year < 2026:
        return [Finding("clock", False, f"system clock says {now:%Y-%m-%d}", "set the clock (e.g. enable NTP)")]
    if database is not None:
        with database.session() as session:
            latest = session.scalar(select(func.max(AuditRecord.ts)))
        if latest is not None and latest.replace(tzinfo=latest.tzinfo or UTC) > now:
            return [Finding("clock", False, f"the newest audit record ({latest:%Y-%m-%d %H:%M:%S}) is in the future: "
                            "the clock went backwards", "set the clock (e.g. enable NTP)")]
    return [Finding("clock", True, f"{now:%Y-%m-%d %H:%M:%S} UTC")]


def run_checks(settings: Settings) -> list[Finding]:
    findings: list[Finding] = []
    database_findings, database = check_database(settings)
    steps: list[Callable[[], list[Finding]]] = [
        lambda: check_engine(settings),
        check_tools,
        lambda: database_findings,
        lambda: check_master_key(settings, database),
        lambda: [check_port("gateway", settings.gateway_host, settings.gateway_port),
                 check_port("control", settings.control_host, settings.control_port)],
        lambda: check_clock(database),
    ]
    try:
        for step in steps:
            findings += step()
    finally:
        if database is not None:
            database.close()
    return findings
