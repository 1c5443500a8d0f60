"""The gateway's view of deployments: which replicas of a server answer where, with which bridge token.

Only instances in state `running` are routed to: the supervisor takes a dead one out within a
pass, a rotation switches from old to new instances in one transaction.
"""

from __future__ import annotations

import time

import anyio
from sqlalchemy import select

from stockade.catalog import Catalog
from stockade.gateway.upstream import Replica, Upstream
from stockade.secrets import Sealer
from stockade.single_flight import SingleFlight
from stockade.store.database import Database
from stockade.store.models import Deployment, Instance

# Several processes may serve the gateway while another one redeploys: a short cache keeps the
# database off the hot path without serving a stale endpoint for long. Whoever takes an instance
# out of service waits this long (and a little) before stopping it.
CACHE_SECONDS = 1.0


def seal_context(deployment_id: str, name: str) -> str:
    return f"deployment:{deployment_id}:{name}"


class DeploymentDirectory:
    def __init__(self, database: Database, sealer: Sealer, catalog: Catalog) -> None:
        self._db = database
        self._sealer = sealer
        self.catalog = catalog
        self._cache: dict[str, tuple[float, Upstream | None]] = {}
        self._refreshes = SingleFlight(self._refresh)

    async def resolve(self, slug: str) -> Upstream | None:
        cached = self._cache.get(slug)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        return await self._refreshes(slug)

    def _refresh(self, slug: str) -> Upstream | None:
        # Timed from before the read: an answer is never served longer than CACHE_SECONDS after it.
        read_at = time.monotonic()
        upstream = self.load(slug)
        self._cache[slug] = (read_at, upstream)
        return upstream

    async def running(self) -> list[Upstream]:
        slugs = await anyio.to_thread.run_sync(self._running_slugs)
        return [upstream for slug in slugs if (upstream := await self.resolve(slug)) is not None]

    def forget(self, slug: str) -> None:
        self._cache.pop(slug, None)

    def _running_slugs(self) -> list[str]:
        with self._db.session() as session:
            serving = select(Instance.deployment_id).where(Instance.status == "running")
            return list(session.scalars(select(Deployment.slug).where(Deployment.id.in_(serving)).order_by(Deployment.slug)))

    def load(self, slug: str) -> Upstream | None:
        with self._db.session() as session:
            row = session.scalar(select(Deployment).where(Deployment.slug == slug))
            return self.upstream_of(row) if row is not None else None

    def upstream_of(self, row: Deployment) -> Upstream | None:
        """The deployment's running replicas, or None when none is."""
        replicas = tuple(Replica(i.number, i.endpoint) for i in row.instances if i.status == "running" and i.endpoint)
        if not replicas:
            return None
        return Upstream(slug=row.slug, token=self.bridge_token(row), replicas=replicas,
                        tool_allowlist=tuple(self.catalog.get(row.entry).tools))

    def bridge_token(self, row: Deployment) -> str:
        return self._sealer.open(row.bridge_token, context=seal_context(row.id, "bridge-token")).decode()
