"""The gateway's view of deployments: which server answers where, with which bridge token."""

from __future__ import annotations

import time

import anyio
from sqlalchemy import select

from stockade.catalog import Catalog
from stockade.gateway.upstream import Upstream
from stockade.secrets import Sealer
from stockade.store.database import Database
from stockade.store.models import Deployment

# Several processes may serve the gateway while another one redeploys: a short cache keeps the
# database off the hot path without serving a stale endpoint for long.
CACHE_SECONDS = 1.0


def seal_context(deployment_id: str, name: str) -> str:
    return f"deployment:{deployment_id}:{name}"


class DeploymentDirectory:
    def __init__(self, database: Database, sealer: Sealer, catalog: Catalog) -> None:
        self._db = database
        self._sealer = sealer
        self.catalog = catalog
        self._cache: dict[str, tuple[float, Upstream | None]] = {}

    async def resolve(self, slug: str) -> Upstream | None:
        cached = self._cache.get(slug)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        upstream = await anyio.to_thread.run_sync(self.load, slug)
        self._cache[slug] = (time.monotonic(), upstream)
        return upstream

    async def running(self) -> list[Upstream]:
        slugs = await anyio.to_thread.run_sync(self._running_slugs)
        return [upstream for slug in slugs if (upstream := await self.resolve(slug)) is not None]

    def forget(self, slug: str) -> None:
        self._cache.pop(slug, None)

    def _running_slugs(self) -> list[str]:
        with self._db.session() as session:
            return list(session.scalars(select(Deployment.slug).where(Deployment.status == "running").order_by(Deployment.slug)))

    def load(self, slug: str) -> Upstream | None:
        with self._db.session() as session:
            row = session.scalar(select(Deployment).where(Deployment.slug == slug))
            if row is None or row.status != "running" or row.endpoint is None:
                return None
            return self.upstream_of(row)

    def upstream_of(self, row: Deployment) -> Upstream:
        token = self._sealer.open(row.bridge_token, context=seal_context(row.id, "bridge-token")).decode()
        allowlist = tuple(self.catalog.get(row.entry).tools)
        return Upstream(slug=row.slug, endpoint=row.endpoint or "", token=token, tool_allowlist=allowlist)
