"""Wiring: settings -> database, sealer, catalog, orchestrator -> the gateway and management apps."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta

import anyio
import uvicorn
from sqlalchemy import select

from stockade.catalog import Catalog
from stockade.config import Settings
from stockade.control.api import create_control_app
from stockade.control.cluster_directory import ClusterDirectory
from stockade.control.deployments import Deployments
from stockade.control.directory import DeploymentDirectory
from stockade.control.supervisor import Supervisor
from stockade.gateway.app import Gateway, create_gateway_app
from stockade.gateway.identity import MintedToken, create_member, mint_token
from stockade.gateway.oidc import OidcConfig
from stockade.gateway.pins import ToolPins
from stockade.gateway.upstream import ServerDirectory
from stockade.http_protocol import OneWriteHttpProtocol
from stockade.logs import configure_logging
from stockade.orchestrator.k8s import load_api_client
from stockade.orchestrator.runtime import Orchestrator
from stockade.secrets import Sealer, load_master_key
from stockade.store.database import Database
from stockade.store.models import KeyCheck, Member, utcnow
from stockade.verify import run_verify

log = logging.getLogger(__name__)

ADMIN_MEMBER = "admin"
_KEY_CHECK_CONTEXT = "key-check"
_KEY_CHECK_VALUE = b"stockade master key check"


def open_sealer(settings: Settings, database: Database) -> Sealer:
    """The sealer for this database; a wrong master key fails here, before anything is written."""
    sealer = Sealer(load_master_key(settings))
    with database.session() as session:
        check = session.scalar(select(KeyCheck))
        if check is None:
            session.add(KeyCheck(id=1, sealed=sealer.seal(_KEY_CHECK_VALUE, context=_KEY_CHECK_CONTEXT)))
        else:
            sealer.open(check.sealed, context=_KEY_CHECK_CONTEXT)
    return sealer


def open_database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    database = Database(settings.resolved_database_url)
    database.migrate()
    return database


def mint_admin_token(database: Database, *, name: str, ttl: timedelta | None = timedelta(days=30)) -> MintedToken:
    """A new token for the built-in admin member (created on first use)."""
    with database.session() as session:
        member = session.scalar(select(Member).where(Member.name == ADMIN_MEMBER))
        if member is None:
            member = create_member(session, ADMIN_MEMBER, "admin")
        return mint_token(session, member, name=name, ttl=ttl)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Platform:
    """One Stockade process: the gateway, the control plane, or both (the embedded default).

    A gateway-only process needs no container engine: it finds servers through the database.
    """

    def __init__(
        self, settings: Settings, *, control: bool = True, progress: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = configure_logging(settings.data_dir / "logs", settings.log_level)
        self.database = open_database(settings)
        self.sealer = open_sealer(settings, self.database)
        self.catalog = Catalog.load(settings.catalog_file)
        self.directory = DeploymentDirectory(self.database, self.sealer, self.catalog)
        pins = ToolPins(self.database)
        oidc = OidcConfig.load({"audience": settings.gateway_url, **settings.oidc}) if settings.oidc else None
        self.gateway = Gateway(self.database, self._gateway_directory(), public_url=settings.gateway_url, oidc=oidc, pins=pins,
                               rate_per_minute=settings.rate_limit_per_minute, rate_burst=settings.rate_limit_burst)
        self.deployments: Deployments | None = None
        if control:
            orchestrator = Orchestrator(settings, progress=progress)
            self.deployments = Deployments(self.database, self.sealer, self.directory, orchestrator, pins)

    def _gateway_directory(self) -> ServerDirectory:
        """Where the gateway finds servers: the database's deployments, or on Kubernetes the Services."""
        namespace = self.settings.k8s_servers_namespace
        if namespace is None:
            return self.directory
        from kubernetes import client

        api_client = load_api_client(self.settings.k8s_kubeconfig)
        return ClusterDirectory(client.CoreV1Api(api_client), namespace, self.sealer, self.catalog)

    def _server(self, app: object, host: str, port: int) -> _Server:
        # No proxy headers: nothing reads a client's address, and that middleware runs on every call.
        config = uvicorn.Config(app, host=host, port=port, log_level=self.settings.log_level.lower(),
                                access_log=False, log_config=None, proxy_headers=False, http=OneWriteHttpProtocol)
        return _Server(config)

    async def serve(self, *, gateway: bool = True, on_started: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve the gateway and/or the management API until SIGINT/SIGTERM."""
        servers = []
        if gateway:
            servers.append(self._server(create_gateway_app(self.gateway), self.settings.gateway_host, self.settings.gateway_port))
        if self.deployments is not None:
            control_app = create_control_app(self.database, self.deployments, self.gateway, data_dir=self.settings.data_dir,
                                             verify=functools.partial(run_verify, self.settings))
            servers.append(self._server(control_app, self.settings.control_host, self.settings.control_port))

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    for server in servers:
                        server.should_exit = True
                    return

        async def announce() -> None:
            with anyio.fail_after(30):
                while not all(server.started for server in servers):
                    if any(server.should_exit for server in servers):
                        return
                    await anyio.sleep(0.05)
            if on_started is not None:
                await on_started()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stop_on_signal)
            tasks.start_soon(announce)
            if self.deployments is not None:
                tasks.start_soon(Supervisor(self.deployments, retention=self._apply_retention).run)
            async with anyio.create_task_group() as serving:
                for server in servers:
                    serving.start_soon(server.serve)
            tasks.cancel_scope.cancel()

    def _apply_retention(self) -> None:
        days = self.settings.audit_retention_days
        if days is not None:
            deleted = self.gateway.audit.prune(utcnow() - timedelta(days=days))
            if deleted:
                log.info("audit retention: removed %d records older than %d days", deleted, days)

    def close(self) -> None:
        if self.deployments is not None:
            self.deployments.close()
        self.database.close()
