"""The gateway's HTTP/1.1 keep-alive connections to the bridges it forwards to.

Every call through the gateway crosses this hop, so it is the one place where an HTTP client's
own cost decides the gateway's latency. It is built on aiohttp rather than the project's
`httpx2`: measured on this 2-core machine, an httpx2 request costs 1.4-1.9 ms of CPU, an
aiohttp request 0.4 ms (README.md, "Benchmarks", has the figures). Everything else that speaks
HTTP (OIDC discovery, the CLI, readiness probes) keeps `httpx2`; this module's errors are the
gateway's own, so nothing above it depends on which client carries the bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

CONNECT_TIMEOUT = 5.0
# Bounds every wait for the next bytes (the headers, a body, the next SSE event), not a whole
# response: a stream that keeps delivering may stay open as long as its client wants it.
READ_TIMEOUT = 300.0


class LinkError(Exception):
    """The bridge could not be reached or broke off; `str()` names the kind, never a secret."""


class Unreachable(LinkError):
    """No connection was made (refused or timed out): the request certainly never reached the bridge."""


class UpstreamResponse:
    """A bridge's answer whose body has not been read yet; `close` releases the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LinkError(type(exc).__name__) from exc
        finally:
            self._response.release()

    async def iter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LinkError(type(exc).__name__) from exc

    async def close(self) -> None:
        self._response.close()


class BridgeLink:
    """Pooled connections to bridges; owned (opened and closed) by the gateway's lifespan."""

    def __init__(self) -> None:
        self._pooled: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BridgeLink:  # noqa: PYI034 - a final class in practice
        reuse = aiohttp.TraceConfig()
        reuse.on_connection_reuseconn.append(_note_reuse)
        self._pooled = _session(aiohttp.TCPConnector(limit=0, ttl_dns_cache=None), [reuse])
        self._fresh = _session(aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=True), [])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None

    async def send(self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None) -> UpstreamResponse:
        """Send a request and return once the response's headers have arrived."""
        if self._pooled is None or self._fresh is None:
            raise RuntimeError("the bridge link is not open")
        trace: dict[str, bool] = {"reused": False}
        try:
            response = await self._pooled.request(method, url, headers=headers, data=body, allow_redirects=False,
                                                  trace_request_ctx=trace)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) or not trace["reused"]:
                raise _link_error(exc) from exc
            # A kept-alive connection the bridge had closed while it sat idle (its keep-alive
            # ended, it drained, or it was killed): the request met a closed socket. Once more on
            # a new connection, which a dead bridge refuses (`Unreachable`: another replica may
            # take the call). The same is seen when a bridge dies while working on a request sent
            # on a reused connection; the call then runs elsewhere, as a client's retry would.
            try:
                response = await self._fresh.request(method, url, headers=headers, data=body, allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError) as retried:
                raise _link_error(retried) from retried
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _link_error(exc) from exc
        return UpstreamResponse(response)


def _session(connector: aiohttp.TCPConnector, traces: list[aiohttp.TraceConfig]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
        # Bodies are relayed byte for byte: no decompression, no cookies, no proxy from the environment.
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        trace_configs=traces,
    )


async def _note_reuse(_session: aiohttp.ClientSession, context: Any, _params: object) -> None:
    context.trace_request_ctx["reused"] = True


def _link_error(exc: BaseException) -> LinkError:
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return Unreachable(type(exc).__name__)
    return LinkError(type(exc).__name__)
