"""Deployments: what should run (the store) and making it so (the orchestrator).

Values for a deployment's variables are sealed before they are stored and reach the container only
through the bridge's bootstrap line, never its configuration.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx2
from sqlalchemy import select

from stockade import metrics
from stockade.catalog import SLUG_PATTERN
from stockade.control.directory import DeploymentDirectory, seal_context
from stockade.errors import ConflictError, DeploymentError, NotFoundError, StockadeError, ValidationFailed
from stockade.gateway.pins import ToolPins
from stockade.logs import REDACTOR
from stockade.secrets import Sealer
from stockade.store.database import Database
from stockade.store.models import Deployment, DeploymentVariable, utcnow

if TYPE_CHECKING:
    from stockade.orchestrator.runtime import InstanceStatus, Orchestrator, ResourceUse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploymentView:
    """A deployment as the API shows it: variable names and when they were set, never values."""

    slug: str
    entry: str
    status: str
    desired_state: str
    error: str | None
    restarts: int
    last_exit: str | None
    variables: dict[str, datetime]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Deployment) -> DeploymentView:
        return cls(
            slug=row.slug,
            entry=row.entry,
            status=row.status,
            desired_state=row.desired_state,
            error=row.error,
            restarts=row.restarts,
            last_exit=row.last_exit,
            variables={v.name: v.set_at for v in row.variables},
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def describe_exit(state: InstanceStatus) -> str:
    if state.oom_killed:
        return "out of memory (killed by the kernel's OOM killer)"
    if state.exit_code is not None:
        return f"exited with code {state.exit_code}" + (f": {state.error}" if state.error else "")
    return f"not running ({state.state})" + (f": {state.error}" if state.error else "")


class Deployments:
    def __init__(
        self,
        database: Database,
        sealer: Sealer,
        directory: DeploymentDirectory,
        orchestrator: Orchestrator,
        pins: ToolPins,
    ) -> None:
        self._db = database
        self._pins = pins
        self._sealer = sealer
        self._directory = directory
        self.catalog = directory.catalog
        self.orchestrator = orchestrator

    # -- tool approval -------------------------------------------------------------------------
    def current_tools(self, slug: str) -> list[dict[str, object]]:
        """The tool definitions the running server offers now (asked of its bridge directly)."""
        with self._db.session() as session:
            row = self._row(session, slug)
            if row.status != "running":
                raise ConflictError(f"{slug!r} is not running (status {row.status})")
            upstream = self._directory.upstream_of(row)
        try:
            response = httpx2.get(f"{upstream.endpoint}/tools", headers={"authorization": f"Bearer {upstream.token}"}, timeout=30)
            response.raise_for_status()
        except httpx2.HTTPError as exc:
            raise DeploymentError(f"could not list the tools of {slug!r}: {type(exc).__name__}: {exc}") from None
        tools = response.json().get("tools", [])
        return [tool for tool in tools if isinstance(tool, dict)]

    def approve_tools(self, slug: str, only: set[str] | None = None) -> list[str]:
        return self._pins.approve(slug, self.current_tools(slug), only=only)

    # -- lifecycle -----------------------------------------------------------------------------
    def list(self) -> list[DeploymentView]:
        with self._db.session() as session:
            return [DeploymentView.of(row) for row in session.scalars(select(Deployment).order_by(Deployment.slug))]

    def get(self, slug: str) -> DeploymentView:
        with self._db.session() as session:
            return DeploymentView.of(self._row(session, slug))

    @staticmethod
    def _row(session: object, slug: str) -> Deployment:
        row = session.scalar(select(Deployment).where(Deployment.slug == slug))  # type: ignore[attr-defined]
        if row is None:
            raise NotFoundError(f"no deployment named {slug!r}", hint="list them with `stockade servers`")
        return row

    def create(self, entry_name: str, *, slug: str | None, env: Mapping[str, str]) -> DeploymentView:
        """Record a deployment (validated up front) in state `pending`; `start` makes it run."""
        entry = self.catalog.get(entry_name)
        slug = slug or entry.name
        if not re.fullmatch(SLUG_PATTERN, slug):
            raise ValidationFailed(f"slug {slug!r} is not valid", hint="lowercase letters, digits and '-', starting with a letter")
        entry.check_variables(env)
        deployment_id = str(uuid.uuid4())
        secret_names = entry.secret_env_names
        with self._db.session() as session:
            if session.scalar(select(Deployment.id).where(Deployment.slug == slug)) is not None:
                raise ConflictError(f"a deployment named {slug!r} already exists", hint="choose another --slug or remove it")
            row = Deployment(
                id=deployment_id,
                slug=slug,
                entry=entry.name,
                status="pending",
                bridge_token=self._sealer.seal(secrets.token_urlsafe(32).encode(), context=seal_context(deployment_id, "bridge-token")),
            )
            row.variables = [
                DeploymentVariable(
                    name=name,
                    secret=int(name in secret_names),
                    sealed_value=self._sealer.seal(value.encode(), context=seal_context(deployment_id, name)),
                )
                for name, value in env.items()
            ]
            session.add(row)
            session.flush()
            return DeploymentView.of(row)

    def start(self, slug: str, *, status_on_failure: str = "failed") -> DeploymentView:
        """Run the deployment's container and wait until its bridge is ready (blocking).

        On failure the deployment is left in `status_on_failure` with the error: `failed` for a
        request a person made, `restarting` for the supervisor, which tries again with backoff.
        """
        with self._db.session() as session:
            row = self._row(session, slug)
            entry = self.catalog.get(row.entry)
            env = {v.name: self._sealer.open(v.sealed_value, context=seal_context(row.id, v.name)).decode() for v in row.variables}
            token = self._sealer.open(row.bridge_token, context=seal_context(row.id, "bridge-token")).decode()
            for value in [token, *(env[v.name] for v in row.variables if v.secret)]:
                REDACTOR.register(value)
            deployment_id = row.id
            row.status, row.desired_state, row.error = "deploying", "running", None
        self._directory.forget(slug)
        try:
            instance = self.orchestrator.deploy(
                entry, slug=slug, deployment_id=deployment_id, env=env, bridge_token=token
            )
        except StockadeError as exc:
            self._set_status(slug, status_on_failure, error=str(exc))
            raise
        except Exception as exc:  # an engine failure we did not anticipate must still be recorded
            self._set_status(slug, status_on_failure, error=f"{type(exc).__name__}: {exc}")
            raise DeploymentError(f"deploying {slug!r} failed: {type(exc).__name__}: {exc}") from exc
        with self._db.session() as session:
            row = self._row(session, slug)
            row.status, row.endpoint, row.container_id = "running", instance.endpoint, instance.container_id
            view = DeploymentView.of(row)
        if not self._pins.listing(slug):
            # First deployment of this server: its tools as offered now are the reviewed ones.
            self.approve_tools(slug)
        return view

    # -- supervision -----------------------------------------------------------------------------
    def dead_instances(self) -> list[tuple[str, str | None]]:
        """Deployments that should run but whose container does not: (slug, why it died).

        The reason is None for one already recorded and waiting for its restart.
        """
        with self._db.session() as session:
            rows = [(r.slug, r.status) for r in session.scalars(select(Deployment).where(Deployment.desired_state == "running"))]
        dead = []
        for slug, status in rows:
            if status == "restarting":
                dead.append((slug, None))
            elif status == "running":
                state = self.orchestrator.status(slug)
                if not state.running:
                    dead.append((slug, describe_exit(state)))
        return dead

    def bridge_reports(self) -> list[tuple[str, str, int, str | None]]:
        """What each running bridge says of its server process: (slug, container id, restarts, last exit)."""
        with self._db.session() as session:
            rows = [(r.slug, r.container_id, self._directory.upstream_of(r))
                    for r in session.scalars(select(Deployment).where(Deployment.status == "running"))]
        reports = []
        for slug, container_id, upstream in rows:
            try:
                response = httpx2.get(f"{upstream.endpoint}/ready", headers={"authorization": f"Bearer {upstream.token}"},
                                      timeout=2)
                body = response.json()
            except (httpx2.HTTPError, ValueError):
                continue  # the container check notices a dead server; a slow one is asked again later
            if isinstance(body, dict) and isinstance(body.get("restarts"), int):
                reports.append((slug, container_id or "", body["restarts"], body.get("last_exit")))
        return reports

    def record_process_restarts(self, slug: str, count: int, reason: str | None) -> None:
        """The bridge restarted the server process `count` more times; the last one because `reason`."""
        with self._db.session() as session:
            row = self._row(session, slug)
            row.restarts += count
            if reason:
                row.last_exit = reason
        metrics.RESTARTS.labels(slug).set(self.get(slug).restarts)

    def record_exit(self, slug: str, reason: str) -> None:
        self._directory.forget(slug)
        with self._db.session() as session:
            row = self._row(session, slug)
            row.status, row.restarts, row.last_exit = "restarting", row.restarts + 1, reason
        metrics.RESTARTS.labels(slug).set(self.get(slug).restarts)

    def mark_crash_loop(self, slug: str, reason: str, deaths: int, window: float) -> None:
        self._directory.forget(slug)
        with self._db.session() as session:
            row = self._row(session, slug)
            row.status, row.last_exit = "crash-loop", reason
            row.error = (f"died {deaths} times in {window / 60:.0f} minutes (last: {reason}); not restarted again. "
                         f"Fix the cause, then `stockade restart {slug}`")

    def _set_status(self, slug: str, status: str, *, error: str | None = None) -> None:
        with self._db.session() as session:
            row = self._row(session, slug)
            row.status, row.error = status, error

    # -- variables and secrets -------------------------------------------------------------------
    def set_variables(self, slug: str, values: Mapping[str, str]) -> DeploymentView:
        """Seal new values for declared variables; a running server gets them at its next start."""
        with self._db.session() as session:
            row = self._row(session, slug)
            entry = self.catalog.get(row.entry)
            entry.check_variables(values, partial=True)
            declared = {v.name: v for v in [*entry.required_env, *entry.optional_env]}
            empty = sorted(name for name, value in values.items() if not value and declared[name] in entry.required_env)
            if empty:
                raise ValidationFailed(f"required variables cannot be empty: {', '.join(empty)}")
            existing = {v.name: v for v in row.variables}
            for name, value in values.items():
                sealed = self._sealer.seal(value.encode(), context=seal_context(row.id, name))
                if name in existing:
                    existing[name].sealed_value, existing[name].set_at = sealed, utcnow()
                else:
                    row.variables.append(DeploymentVariable(name=name, secret=int(declared[name].secret), sealed_value=sealed))
                if declared[name].secret:
                    REDACTOR.register(value)
            session.flush()
            return DeploymentView.of(row)

    def rotate(self, slug: str, values: Mapping[str, str]) -> DeploymentView:
        """Set new values and move the server onto them (a fresh container started with them)."""
        self.set_variables(slug, values)
        return self.start(slug)

    def logs(self, slug: str, *, tail: int) -> str:
        """The server container's recent output, with every secret value of the deployment redacted."""
        with self._db.session() as session:
            row = self._row(session, slug)
            secrets = [self._sealer.open(v.sealed_value, context=seal_context(row.id, v.name)).decode()
                       for v in row.variables if v.secret]
            secrets.append(self._sealer.open(row.bridge_token, context=seal_context(row.id, "bridge-token")).decode())
        text = self.orchestrator.logs(slug, tail=tail)
        for value in sorted(secrets, key=len, reverse=True):
            if value:
                text = text.replace(value, "[redacted]")
        return REDACTOR.redact(text)

    def egress_denials(self, slug: str) -> int:
        """Requests the server's egress proxy refused (0 for servers without one)."""
        return self.orchestrator.egress_denials(slug)

    def resource_use(self, slug: str) -> ResourceUse | None:
        self.get(slug)  # unknown names are a NotFoundError, not "no data"
        return self.orchestrator.resource_use(slug)

    def stop(self, slug: str) -> DeploymentView:
        """Stop the server (container and network go; stored values stay for a later start)."""
        with self._db.session() as session:
            row = self._row(session, slug)
            row.desired_state, row.status, row.endpoint, row.container_id = "stopped", "stopped", None, None
        self._directory.forget(slug)
        self.orchestrator.remove(slug)
        return self.get(slug)

    def remove(self, slug: str) -> None:
        """Remove the containers, network and stored values of a deployment."""
        with self._db.session() as session:
            self._row(session, slug).desired_state = "removed"
        self._directory.forget(slug)
        self.orchestrator.remove(slug)
        self._pins.drop(slug)
        with self._db.session() as session:
            session.delete(self._row(session, slug))

    def reconcile(self) -> list[str]:
        """Make actual state match desired state after a restart; returns what was done."""
        actions: list[str] = []
        running = {instance.slug: instance for instance in self.orchestrator.instances()}
        with self._db.session() as session:
            rows = {row.slug: (row.desired_state, row.status, row.container_id) for row in session.scalars(select(Deployment))}
        for slug, instance in running.items():
            if slug not in rows or rows[slug][0] == "removed":
                self.orchestrator.remove(slug)
                actions.append(f"removed orphaned container of {slug}")
        for slug, (desired, _status, container_id) in rows.items():
            if desired == "removed":
                with self._db.session() as session:
                    session.delete(self._row(session, slug))
                continue
            if desired != "running":
                continue
            instance = running.get(slug)
            if instance is not None and instance.container_id == container_id:
                with self._db.session() as session:
                    row = self._row(session, slug)
                    row.status, row.endpoint = "running", instance.endpoint
                actions.append(f"adopted running container of {slug}")
                continue
            if instance is not None:
                self.orchestrator.remove(slug)  # a half-finished deploy: replace, never guess
            try:
                self.start(slug)
                actions.append(f"restarted {slug}")
            except StockadeError as exc:
                log.error("could not restart %s: %s", slug, exc)
                actions.append(f"failed to restart {slug}: {exc.message}")
        return actions
