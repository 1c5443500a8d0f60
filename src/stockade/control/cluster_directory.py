"""The gateway's view of servers on Kubernetes: found through their Services.

There the cluster, not the database, knows which servers run and where: `stockade k8s apply`
renders each server with a Service labelled with its slug, catalog entry and deployment id. The
gateway lists those Services (its RBAC allows nothing else) and derives each bridge token from the
master key, as `apply` did, so no gateway reads a Secret or stores a token.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from stockade.catalog import Catalog
from stockade.errors import StockadeError
from stockade.gateway.upstream import Replica, Upstream
from stockade.orchestrator.k8s import DiscoveredServer, bridge_token_context, discover_servers
from stockade.secrets import Sealer
from stockade.single_flight import SingleFlight

log = logging.getLogger(__name__)

# Services change rarely; a short cache keeps the API server off every call's path while a new or
# removed server shows within seconds.
CACHE_SECONDS = 2.0


class ClusterDirectory:
    def __init__(self, core_v1_api: Any, namespace: str, sealer: Sealer, catalog: Catalog) -> None:
        self._api = core_v1_api
        self._namespace = namespace
        self._sealer = sealer
        self.catalog = catalog
        self._cache: tuple[float, dict[str, Upstream]] | None = None
        self._discoveries = SingleFlight(self._discover)

    async def resolve(self, slug: str) -> Upstream | None:
        return (await self._upstreams()).get(slug)

    async def running(self) -> list[Upstream]:
        return list((await self._upstreams()).values())

    async def _upstreams(self) -> dict[str, Upstream]:
        if self._cache is not None and time.monotonic() - self._cache[0] < CACHE_SECONDS:
            return self._cache[1]
        try:
            return await self._discoveries(self._namespace)
        except (ApiException, HTTPError, OSError) as exc:  # the API server away: keep routing to what was there
            if self._cache is not None:
                log.warning("server discovery failed (%s); using the last answer", type(exc).__name__)
                return self._cache[1]
            raise StockadeError(f"cannot list server Services in namespace {self._namespace!r}: {type(exc).__name__}",
                                hint="check the gateway's service account may list services there") from None

    def _discover(self, namespace: str) -> dict[str, Upstream]:
        listed_at = time.monotonic()
        found = discover_servers(self._api, namespace)
        upstreams = {server.slug: upstream for server in found if (upstream := self._upstream(server)) is not None}
        self._cache = (listed_at, upstreams)
        return upstreams

    def _upstream(self, server: DiscoveredServer) -> Upstream | None:
        known = {entry.name for entry in self.catalog.servers}
        if server.entry not in known or server.deployment_id is None:
            # Not rendered by Stockade from this catalog: no token to derive, nothing approved to call.
            log.warning("ignoring Service of %r: no approved catalog entry or deployment id", server.slug)
            return None
        token = self._sealer.derive_token(bridge_token_context(self._namespace, server.slug, server.deployment_id))
        return Upstream(
            slug=server.slug,
            token=token,
            replicas=(Replica(number=0, endpoint=server.endpoint),),  # the Service balances its pods
            tool_allowlist=tuple(self.catalog.get(server.entry).tools),
        )
