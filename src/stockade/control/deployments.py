"""Deployments: what should run (the store) and making it so (the orchestrator).

Values for a deployment's variables are sealed before they are stored and reach the container only
through the bridge's bootstrap line, never its configuration.

A deployment runs as `replicas` instances, each its own hardened container (numbered; see
`Instance`). Starting, restarting and rotating are blue/green: new instances are started beside
the old ones, the gateway is switched to them once all are ready, and only then are the old ones
drained (their calls in flight finish) and removed. One lifecycle operation per deployment at a
time (`exclusive`); the supervisor skips a deployment while one is under way.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx2
from sqlalchemy import select
from sqlalchemy.orm import Session

from stockade import metrics
from stockade.catalog import MAX_REPLICAS, SLUG_PATTERN, CatalogEntry
from stockade.control.directory import CACHE_SECONDS, DeploymentDirectory, seal_context
from stockade.errors import ConflictError, DeploymentError, NotFoundError, StockadeError, ValidationFailed
from stockade.gateway.pins import ToolPins
from stockade.gateway.upstream import Upstream
from stockade.logs import REDACTOR
from stockade.secrets import Sealer
from stockade.store.database import Database
from stockade.store.models import Deployment, DeploymentVariable, Instance, utcnow

if TYPE_CHECKING:
    from stockade.orchestrator.runtime import InstanceStatus, Orchestrator, ResourceUse, ServerInstance

log = logging.getLogger(__name__)

# After the gateway is told to stop routing to an instance, every gateway process has dropped it
# from its directory cache within CACHE_SECONDS; the margin covers requests resolved just before.
SWITCH_GRACE = CACHE_SECONDS + 1.0
# Instances drained side by side when scaling down: below the engine client's connection pool (10),
# which the supervisor and the API share.
DRAIN_PARALLELISM = 6


@dataclass(frozen=True)
class InstanceView:
    """One replica as the API shows it."""

    number: int
    status: str  # starting | running | restarting | draining | crash-loop
    restarts: int
    last_exit: str | None
    error: str | None
    updated_at: datetime

    @classmethod
    def of(cls, row: Instance) -> InstanceView:
        return cls(number=row.number, status=row.status, restarts=row.restarts, last_exit=row.last_exit,
                   error=row.error, updated_at=row.updated_at)


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
    replicas: int
    instances: tuple[InstanceView, ...]

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
            replicas=row.replicas,
            instances=tuple(InstanceView.of(i) for i in row.instances),
        )


def describe_exit(state: InstanceStatus) -> str:
    if state.oom_killed:
        return "out of memory (killed by the kernel's OOM killer)"
    if state.exit_code is not None:
        return f"exited with code {state.exit_code}" + (f": {state.error}" if state.error else "")
    return f"not running ({state.state})" + (f": {state.error}" if state.error else "")


def check_replicas(count: int) -> int:
    if not 1 <= count <= MAX_REPLICAS:
        raise ValidationFailed(f"replicas must be between 1 and {MAX_REPLICAS}, not {count}",
                               hint="`stockade stop` stops a server; `stockade scale` changes how many instances run")
    return count


def free_numbers(taken: Iterable[int], count: int) -> list[int]:
    """The `count` smallest instance numbers not in `taken` (numbers name containers: keep them small)."""
    used, found, number = set(taken), [], 0
    while len(found) < count:
        if number not in used:
            found.append(number)
        number += 1
    return found


def _settle(row: Deployment) -> None:
    """The deployment's status from its instances': it serves while any instance does."""
    if row.desired_state != "running":
        return
    states = {i.status for i in row.instances}
    if "running" in states:
        row.status = "running"
    elif "restarting" in states:
        row.status = "restarting"
    elif "crash-loop" in states:
        row.status = "crash-loop"


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
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}
        # One client for every call to the bridges (each new client costs a TLS context, even for
        # plain HTTP); never routed through a proxy from the environment.
        self._http = httpx2.Client(timeout=30, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def fetch_tools(self, upstream: Upstream) -> list[dict[str, object]]:
        """The tool definitions a running server offers now, asked of one of its bridges directly."""
        try:
            response = self._http.get(f"{upstream.replicas[0].endpoint}/tools",
                                      headers={"authorization": f"Bearer {upstream.token}"})
            response.raise_for_status()
        except httpx2.HTTPError as exc:
            raise DeploymentError(f"could not list the tools of {upstream.slug!r}: {type(exc).__name__}: {exc}") from None
        tools = response.json().get("tools", [])
        return [tool for tool in tools if isinstance(tool, dict)]

    @contextlib.contextmanager
    def exclusive(self, slug: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the deployment's lifecycle lock; yields False (held by another) when not `wait`ing."""
        with self._guard:
            lock = self._locks.setdefault(slug, threading.RLock())
        acquired = lock.acquire(blocking=wait)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()

    # -- tool approval -------------------------------------------------------------------------
    def current_tools(self, slug: str) -> list[dict[str, object]]:
        """The tool definitions the running server offers now (asked of one of its bridges directly)."""
        with self._db.session() as session:
            row = self._row(session, slug)
            upstream = self._directory.upstream_of(row)
            if upstream is None:
                raise ConflictError(f"{slug!r} is not running (status {row.status})")
        return self.fetch_tools(upstream)

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
    def _row(session: Session, slug: str) -> Deployment:
        row = session.scalar(select(Deployment).where(Deployment.slug == slug))
        if row is None:
            raise NotFoundError(f"no deployment named {slug!r}", hint="list them with `stockade servers`")
        return row

    @staticmethod
    def _instance(row: Deployment, number: int) -> Instance:
        found = next((i for i in row.instances if i.number == number), None)
        if found is None:
            raise NotFoundError(f"{row.slug!r} has no instance {number}")
        return found

    def create(self, entry_name: str, *, slug: str | None, env: Mapping[str, str],
               replicas: int | None = None) -> DeploymentView:
        """Record a deployment (validated up front) in state `pending`; `start` makes it run."""
        entry = self.catalog.get(entry_name)
        slug = slug or entry.name
        if not re.fullmatch(SLUG_PATTERN, slug):
            raise ValidationFailed(f"slug {slug!r} is not valid", hint="lowercase letters, digits and '-', starting with a letter")
        count = check_replicas(replicas if replicas is not None else entry.replicas)
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
                replicas=count,
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
            row.instances = []
            session.add(row)
            session.flush()
            return DeploymentView.of(row)

    def start(self, slug: str) -> DeploymentView:
        """Run a fresh set of instances and move the gateway onto them (blocking, blue/green).

        New instances start beside whatever runs now; once every one is ready the gateway routes
        to them alone, then the old ones drain and go. On failure the new ones are removed and the
        old ones keep serving; with none serving the deployment is left `failed`.
        """
        with self.exclusive(slug):
            with self._db.session() as session:
                row = self._row(session, slug)
                old = [i.number for i in row.instances]
                numbers = free_numbers(old, row.replicas)
                row.desired_state, row.error = "running", None
                if not any(i.status == "running" for i in row.instances):
                    row.status = "deploying"
                row.instances += [Instance(number=n, status="starting") for n in numbers]
            started: list[ServerInstance] = []
            try:
                for number in numbers:
                    started.append(self._launch(slug, number))
            except StockadeError as exc:
                for number in numbers:
                    self.orchestrator.remove(slug, number)
                with self._db.session() as session:
                    row = self._row(session, slug)
                    row.instances = [i for i in row.instances if i.number not in numbers]
                    row.error = str(exc)
                    if not any(i.status == "running" for i in row.instances):
                        row.status = "failed"
                raise
            with self._db.session() as session:
                row = self._row(session, slug)
                for instance in started:
                    new = self._instance(row, instance.replica)
                    new.status, new.endpoint, new.container_id = "running", instance.endpoint, instance.container_id
                for number in old:
                    self._instance(row, number).status = "draining"
                _settle(row)
            self._directory.forget(slug)
            self._retire(slug, old)
            if not self._pins.listing(slug):
                # First deployment of this server: its tools as offered now are the reviewed ones.
                self.approve_tools(slug)
            return self.get(slug)

    def scale(self, slug: str, replicas: int) -> DeploymentView:
        """Run `replicas` instances: new ones are added once ready; surplus ones drain first."""
        check_replicas(replicas)
        with self.exclusive(slug):
            with self._db.session() as session:
                row = self._row(session, slug)
                row.replicas = replicas
                if row.desired_state != "running":
                    return DeploymentView.of(row)  # a stopped server starts with this many
                # Surplus: those not serving first, then the newest.
                surplus = sorted(row.instances, key=lambda i: (i.status == "running", -i.number))[:max(0, len(row.instances) - replicas)]
                for instance in surplus:
                    instance.status = "draining"
                _settle(row)
                retiring = [i.number for i in surplus]
                missing = free_numbers([i.number for i in row.instances], max(0, replicas - len(row.instances)))
            self._directory.forget(slug)
            self._retire(slug, retiring)
            for number in missing:
                self._add_instance(slug, number)
            return self.get(slug)

    def _add_instance(self, slug: str, number: int) -> None:
        with self._db.session() as session:
            row = self._row(session, slug)
            row.instances.append(Instance(number=number, status="starting"))
        try:
            instance = self._launch(slug, number)
        except StockadeError:
            self.orchestrator.remove(slug, number)
            with self._db.session() as session:
                row = self._row(session, slug)
                row.instances = [i for i in row.instances if i.number != number]
            raise
        with self._db.session() as session:
            row = self._row(session, slug)
            new = self._instance(row, number)
            new.status, new.endpoint, new.container_id = "running", instance.endpoint, instance.container_id
            _settle(row)
        self._directory.forget(slug)

    def _launch(self, slug: str, number: int) -> ServerInstance:
        """Run instance `number` of the deployment and wait until its bridge is ready."""
        with self._db.session() as session:
            row = self._row(session, slug)
            entry: CatalogEntry = self.catalog.get(row.entry)
            env = {v.name: self._sealer.open(v.sealed_value, context=seal_context(row.id, v.name)).decode() for v in row.variables}
            token = self._directory.bridge_token(row)
            for value in [token, *(env[v.name] for v in row.variables if v.secret)]:
                REDACTOR.register(value)
            deployment_id = row.id
        try:
            return self.orchestrator.deploy(entry, slug=slug, deployment_id=deployment_id, env=env, bridge_token=token,
                                            replica=number)
        except StockadeError:
            raise
        except Exception as exc:  # an engine failure we did not anticipate must still be recorded
            raise DeploymentError(f"deploying {slug!r} failed: {type(exc).__name__}: {exc}") from exc

    def _retire(self, slug: str, numbers: list[int]) -> None:
        """Drain and remove instances already marked `draining` (the gateway no longer routes to them)."""
        if not numbers:
            return
        time.sleep(SWITCH_GRACE)
        with ThreadPoolExecutor(max_workers=min(len(numbers), DRAIN_PARALLELISM)) as pool:
            list(pool.map(lambda number: self.orchestrator.drain(slug, number), numbers))
        with self._db.session() as session:
            row = self._row(session, slug)
            row.instances = [i for i in row.instances if i.number not in numbers]

    # -- supervision -----------------------------------------------------------------------------
    def supervised(self) -> list[str]:
        """Deployments that should be running."""
        with self._db.session() as session:
            return list(session.scalars(select(Deployment.slug).where(Deployment.desired_state == "running")))

    def dead_instances(self, slug: str, running: set[tuple[str, int]]) -> list[tuple[int, str | None]]:
        """Instances that should serve but whose container does not run: (number, why it died).

        `running` is the orchestrator's `running_units()` taken before: an instance found there
        runs; one missing is asked about on its own (it may have started since).
        The reason is None for one already recorded and waiting for its restart.
        """
        with self._db.session() as session:
            row = self._row(session, slug)
            rows = [(i.number, i.status) for i in row.instances] if row.desired_state == "running" else []
        dead: list[tuple[int, str | None]] = []
        for number, status in rows:
            if status == "restarting":
                dead.append((number, None))
            elif status == "running" and (slug, number) not in running:
                state = self.orchestrator.status(slug, number)
                if not state.running:
                    dead.append((number, describe_exit(state)))
        return dead

    def bridge_reports(self) -> list[tuple[str, int, str, int, str | None]]:
        """What each running bridge says of its server process: (slug, instance, container id, restarts, last exit)."""
        with self._db.session() as session:
            rows = [(row.slug, i.number, i.container_id or "", i.endpoint, self._directory.bridge_token(row))
                    for row in session.scalars(select(Deployment)) for i in row.instances if i.status == "running"]
        reports = []
        for slug, number, container_id, endpoint, token in rows:
            try:
                response = self._http.get(f"{endpoint}/ready", headers={"authorization": f"Bearer {token}"}, timeout=2)
                body = response.json()
            except (httpx2.HTTPError, ValueError):
                continue  # the container check notices a dead server; a slow one is asked again later
            if isinstance(body, dict) and isinstance(body.get("restarts"), int):
                reports.append((slug, number, container_id, body["restarts"], body.get("last_exit")))
        return reports

    def record_process_restarts(self, slug: str, number: int, count: int, reason: str | None) -> None:
        """The bridge of an instance restarted its server process `count` more times; the last one because `reason`."""
        with self._db.session() as session:
            row = self._row(session, slug)
            instance = self._instance(row, number)
            row.restarts += count
            instance.restarts += count
            if reason:
                row.last_exit = instance.last_exit = reason
            total = row.restarts
        metrics.RESTARTS.labels(slug).set(total)

    def record_exit(self, slug: str, number: int, reason: str) -> None:
        """An instance's container died: stop routing to it; the supervisor restarts it."""
        with self._db.session() as session:
            row = self._row(session, slug)
            instance = self._instance(row, number)
            instance.status, instance.restarts, instance.last_exit = "restarting", instance.restarts + 1, reason
            row.restarts, row.last_exit = row.restarts + 1, reason
            _settle(row)
            total = row.restarts
        self._directory.forget(slug)
        metrics.RESTARTS.labels(slug).set(total)

    def mark_crash_loop(self, slug: str, number: int, reason: str, deaths: int, window: float) -> None:
        with self._db.session() as session:
            row = self._row(session, slug)
            instance = self._instance(row, number)
            error = (f"died {deaths} times in {window / 60:.0f} minutes (last: {reason}); not restarted again. "
                     f"Fix the cause, then `stockade restart {slug}`")
            instance.status, instance.last_exit, instance.error = "crash-loop", reason, error
            row.last_exit, row.error = reason, error if len(row.instances) == 1 else f"instance {number} {error}"
            _settle(row)
        self._directory.forget(slug)

    def restart_instance(self, slug: str, number: int) -> None:
        """Replace a dead instance with a fresh container (same number); it serves again once ready."""
        try:
            instance = self._launch(slug, number)
        except StockadeError as exc:
            with self._db.session() as session:
                row = self._row(session, slug)
                self._instance(row, number).error = str(exc)
            raise
        with self._db.session() as session:
            row = self._row(session, slug)
            restarted = self._instance(row, number)
            restarted.status, restarted.endpoint, restarted.container_id = "running", instance.endpoint, instance.container_id
            restarted.error = None
            _settle(row)
        self._directory.forget(slug)

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
        """Set new values and move the server onto them without dropping calls (see `start`)."""
        self.set_variables(slug, values)
        return self.start(slug)

    def logs(self, slug: str, *, tail: int) -> str:
        """The recent output of the server's containers, with every secret value of the deployment redacted."""
        with self._db.session() as session:
            row = self._row(session, slug)
            secrets = [self._sealer.open(v.sealed_value, context=seal_context(row.id, v.name)).decode()
                       for v in row.variables if v.secret]
            secrets.append(self._directory.bridge_token(row))
            numbers = [i.number for i in row.instances]
        if len(numbers) <= 1:
            text = self.orchestrator.logs(slug, tail=tail, replica=numbers[0] if numbers else 0)
        else:
            text = "".join(f"==> instance {n} <==\n{self.orchestrator.logs(slug, tail=tail, replica=n)}" for n in numbers)
        for value in sorted(secrets, key=len, reverse=True):
            if value:
                text = text.replace(value, "[redacted]")
        return REDACTOR.redact(text)

    def egress_denials(self, slug: str) -> int:
        """Requests the server's egress proxies refused (0 for servers without one)."""
        return self.orchestrator.egress_denials(slug)

    def resource_use(self, slug: str) -> ResourceUse | None:
        """What the server's running instances use now, added up."""
        from stockade.orchestrator.runtime import ResourceUse

        with self._db.session() as session:
            numbers = [i.number for i in self._row(session, slug).instances if i.status == "running"]
        uses = [use for n in numbers if (use := self.orchestrator.resource_use(slug, n)) is not None]
        if not uses:
            return None
        return ResourceUse(memory_bytes=sum(u.memory_bytes for u in uses),
                           memory_limit_bytes=sum(u.memory_limit_bytes for u in uses),
                           cpu_percent=round(sum(u.cpu_percent for u in uses), 1), pids=sum(u.pids for u in uses))

    def stop(self, slug: str) -> DeploymentView:
        """Stop the server (containers and networks go; stored values stay for a later start)."""
        with self.exclusive(slug):
            with self._db.session() as session:
                row = self._row(session, slug)
                row.desired_state, row.status, row.instances = "stopped", "stopped", []
            self._directory.forget(slug)
            self.orchestrator.remove(slug)
            return self.get(slug)

    def remove(self, slug: str) -> None:
        """Remove the containers, networks and stored values of a deployment."""
        with self.exclusive(slug):
            with self._db.session() as session:
                row = self._row(session, slug)
                row.desired_state, row.instances = "removed", []
            self._directory.forget(slug)
            self.orchestrator.remove(slug)
            self._pins.drop(slug)
            with self._db.session() as session:
                session.delete(self._row(session, slug))

    def reconcile(self) -> list[str]:
        """Make actual state match desired state after a restart; returns what was done.

        Running instances recorded as serving are adopted (found by their labels); anything else
        of a deployment (a half-made instance, one a rotation was draining) is removed; missing
        instances are started.
        """
        actions: list[str] = []
        found: dict[str, dict[int, ServerInstance]] = {}
        for instance in self.orchestrator.instances():
            found.setdefault(instance.slug, {})[instance.replica] = instance
        with self._db.session() as session:
            rows = {row.slug: (row.desired_state, {i.number: (i.status, i.container_id) for i in row.instances})
                    for row in session.scalars(select(Deployment))}
        for slug in found:
            if slug not in rows or rows[slug][0] == "removed":
                self.orchestrator.remove(slug)
                actions.append(f"removed orphaned containers of {slug}")
        for slug, (desired, recorded) in rows.items():
            with self.exclusive(slug):  # the supervisor, already running, leaves it alone meanwhile
                actions += self._reconcile(slug, desired, recorded, found.get(slug, {}))
        return actions

    def _reconcile(self, slug: str, desired: str, recorded: dict[int, tuple[str, str | None]],
                   running: dict[int, ServerInstance]) -> list[str]:
        if desired == "removed":
            with self._db.session() as session:
                session.delete(self._row(session, slug))
            return []
        if desired != "running":
            return []
        keep = {n for n, (status, container_id) in recorded.items()
                if status == "running" and n in running and running[n].container_id == container_id}
        for number in self.orchestrator.replicas(slug):
            if number not in keep:
                self.orchestrator.remove(slug, number)  # half-made or being retired: replace, never guess
        with self._db.session() as session:
            row = self._row(session, slug)
            row.instances = [i for i in row.instances if i.number in keep]
            for instance in row.instances:
                instance.endpoint = running[instance.number].endpoint
            _settle(row)
            replicas = row.replicas
        self._directory.forget(slug)
        try:
            if not keep:
                self.start(slug)
                return [f"restarted {slug}"]
            actions = [f"adopted {len(keep)} running instance(s) of {slug}"]
            if len(keep) != replicas:
                self.scale(slug, replicas)
                actions.append(f"scaled {slug} back to {replicas} instance(s)")
            return actions
        except StockadeError as exc:
            log.error("could not restart %s: %s", slug, exc)
            return [f"failed to restart {slug}: {exc.message}"]
