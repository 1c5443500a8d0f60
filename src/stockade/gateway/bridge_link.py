"""The gateway's HTTP/1.1 keep-alive connections to the bridges it forwards to.

Every call through the gateway crosses this hop, so an HTTP client's own cost is paid on every
call. It is written by hand on asyncio's Protocol/Transport API, with httptools (llhttp, in C: the
parser uvicorn already runs in this process) reading the answers, because no library does just
this cheaply: a client library's per-request machinery (URL objects, header multidicts, cookie jar,
trace hooks, a timer per phase) costs more than the hop's own work. Measured on this 2-core
machine, CPU per request: httpx2 1.4-1.9 ms, aiohttp about 0.32 ms, bare asyncio streams 0.10-0.13
ms. In a sequential benchmark against a local uvicorn (uvloop, 3000 requests, alternating rounds)
aiohttp took 0.17-0.28 ms and this module 0.07-0.13 ms (bare streams 0.04-0.08 ms), the ranges
following the machine's load. The code's footprint counts as well: on this VM caches are cold and a
large library runs several times slower per call than its micro-benchmark shows; aiohttp brings
109 modules into the process, this module no library at all.

What it leaves out, the hop does not need: TLS, redirects, proxies, cookies, decompression (bodies
are relayed byte for byte), pipelining. Everything else that speaks HTTP (OIDC discovery, the CLI,
readiness probes) keeps `httpx2`. This module's errors are the gateway's own and name only the
kind of failure: requests carry bearer tokens, so no header value or URL is ever put in one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import cast
from urllib.parse import quote

import httptools

CONNECT_TIMEOUT = 5.0
# Bounds every wait for the next bytes (the headers, a body, the next SSE event), not a whole
# response: a stream that keeps delivering may stay open as long as its client wants it.
READ_TIMEOUT = 300.0
# A stream read more slowly than the bridge writes it stops the socket being read past this much,
# so a bridge cannot fill the gateway's memory; the bridge's own writes then wait.
BUFFER_LIMIT = 1024 * 1024

Origin = tuple[str, int]

_URL = re.compile(r"http://([^/?#]*)([^#]*)(?:#.*)?", re.DOTALL)
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a value may hold tabs, never a line break
_TARGET_UNSAFE = re.compile(r"[^A-Za-z0-9._~!$&'()*+,;=:@/?%-]")
_TARGET_SAFE = "/?:@!$&'()*+,;=%~"
# The link frames each request itself; a caller's own framing fields would contradict it.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class LinkError(Exception):
    """The bridge could not be reached or broke off; `str()` names the kind, never a secret."""


class Unreachable(LinkError):
    """No connection was made (refused or timed out): the request certainly never reached the bridge."""


class _Stale(Exception):
    """A kept-alive connection ended before a byte of its answer: the bridge had closed it, or died."""


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing an answer the link will not accept."""


class Headers(Mapping[str, str]):
    """A response's header fields. Names match case-insensitively; a repeated field's values are
    joined with ", " (RFC 9110, 5.3). Its repr shows names only: a value may be a credential."""

    __slots__ = ("_fields",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        # Latin-1 maps bytes to text one to one, so the proxy's re-encoding relays them unchanged.
        fields: dict[str, tuple[str, str]] = {}
        for raw_name, raw_value in raw:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            key = name.lower()
            if key in fields:
                value = f"{fields[key][1]}, {value}"
                name = fields[key][0]
            fields[key] = (name, value)
        self._fields = fields

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._fields.values())

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


class UpstreamResponse:
    """A bridge's answer whose body has not been read yet; `close` releases the connection."""

    def __init__(self, connection: _Connection, status_code: int, headers: Headers) -> None:
        self._connection: _Connection | None = connection
        self._body: bytes | None = None
        self.status_code = status_code
        self.headers: Mapping[str, str] = headers

    async def read(self) -> bytes:
        """The whole body; the connection then goes back to the pool if both sides keep it."""
        if self._body is None:
            connection, parts = self._connection, []
            try:
                while connection is not None and (chunk := await connection.next_chunk()) is not None:
                    parts.append(chunk)
            finally:
                self._release()
            self._body = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._body

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces as received (not split at any boundary)."""
        connection = self._connection
        try:
            while connection is not None and (chunk := await connection.next_chunk()) is not None:
                yield chunk
        finally:
            self._release()

    async def close(self) -> None:
        self._release()

    def __del__(self) -> None:
        # The last resort for an answer its owner dropped unread (a response never sent, say): its
        # connection, and a stream the bridge keeps open on it, must not outlive it.
        if self._connection is not None and not self._connection.closing:
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                self._release()

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()


class _Connection(asyncio.Protocol):
    """One connection to a bridge, carrying one request at a time. The parser's callbacks record
    the answer and wake the one coroutine waiting for it (the caller of `send`, `read`, `iter_raw`)."""

    def __init__(self, link: BridgeLink, origin: Origin) -> None:
        self.origin = origin
        self._link = link
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self._busy = False
        self._head_only = False
        self._received = False  # any byte of this request's answer
        self._interim = False
        self._fields: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._headers: Headers | None = None
        self._framed = False  # Content-Length or chunked; otherwise the body ends with the connection
        self._keep = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._failure: str | None = None
        self._stale = False

    @property
    def closing(self) -> bool:
        return self.lost or self._transport is None or self._transport.is_closing()

    async def exchange(self, request: bytes, *, head_only: bool, reused: bool) -> UpstreamResponse:
        """Send `request`; return once the answer's head is in. Raises `_Stale` only if `reused`."""
        self._busy, self._head_only = True, head_only
        try:
            cast(asyncio.Transport, self._transport).write(request)
        except (RuntimeError, OSError):  # a transport that closed since it was pooled
            self._abort("connection closed")
            self._stale = True
        while self._headers is None:
            if self._failure is not None:
                if reused and self._stale:
                    raise _Stale
                raise LinkError(self._failure)
            await self._wait()
        return UpstreamResponse(self, self._status, self._headers)

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call; None once the answer has ended."""
        while not self._chunks:
            if self._complete:
                return None
            if self._failure is not None:
                raise LinkError(self._failure)
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def release(self) -> None:
        """Back to the pool if the answer was read to its end and both sides keep the connection."""
        if self._complete and not self._chunks and self._keep and not self.closing:
            if self._paused and self._transport is not None:
                self._transport.resume_reading()
            self._reset()
            self._link._pool(self)
        else:
            self._abort("answer left unread")

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                await waiter
        except TimeoutError as exc:
            self._abort("read timed out")
            raise LinkError("read timed out") from exc
        except BaseException:
            # Cancelled (or worse) mid-answer: what is left of it would be read as the next one's.
            self._abort("abandoned")
            raise
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _abort(self, reason: str) -> None:
        self._keep = False
        if self._failure is None:
            self._failure = reason
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Each request is one write and then a wait for the answer: Nagle's algorithm would
            # only hold the write back. (asyncio and uvloop set it today, but do not promise to.)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # A bridge has nothing to say between requests: the connection can no longer be trusted.
            self._abort("data between answers")
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._abort("the bridge switched protocols")
        except httptools.HttpParserError as exc:
            # Only the kind: llhttp's reason is fixed text, but the link never relays what it read.
            refusal = exc.__context__
            self._abort(str(refusal) if isinstance(refusal, _Refusal) else f"malformed answer ({type(exc).__name__})")

    def eof_received(self) -> bool:
        return False  # the transport closes itself; `connection_lost` settles the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._link._forget(self)
        if self._busy and not self._complete and self._failure is None:
            if self._headers is not None and not self._framed and exc is None:
                self._complete = True  # an HTTP/1.0-style body ends where the connection does
            else:
                self._failure = "connection closed" if exc is None else type(exc).__name__
                self._stale = not self._received
        self._wake()

    # -- httptools' callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            raise _Refusal("bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _Refusal("the bridge switched protocols")
            self._interim, self._fields = True, []  # 100 Continue, 103 Early Hints: the answer follows
            return
        headers = self._headers = Headers(self._fields)
        self._status = status
        self._framed = "content-length" in headers or headers.get("transfer-encoding", "").lower().endswith("chunked")
        self._keep = self._parser.should_keep_alive() and self._parser.get_http_version() == "1.1"
        if self._head_only:
            # llhttp cannot be told that an answer to HEAD has no body: it would wait for one.
            self._complete, self._keep = True, False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > BUFFER_LIMIT and not self._paused and not self.closing:
            self._paused = True
            cast(asyncio.Transport, self._transport).pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._wake()


class BridgeLink:
    """Pooled connections to bridges; owned (opened and closed) by the gateway's lifespan."""

    def __init__(self) -> None:
        self._open = False
        self._idle: dict[Origin, list[_Connection]] = {}
        self._connections: set[_Connection] = set()

    async def __aenter__(self) -> BridgeLink:  # noqa: PYI034 - a final class in practice
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        for connection in list(self._connections):
            connection._abort("the gateway's link was closed")
        self._idle.clear()

    async def send(self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None) -> UpstreamResponse:
        """Send a request and return once the response's headers have arrived."""
        if not self._open:
            raise RuntimeError("the bridge link is not open")
        origin, request = _encode(method, url, headers, body)
        head_only = method == "HEAD"
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: the others may age out at the bridge
            if connection.closing:
                continue
            try:
                return await connection.exchange(request, head_only=head_only, reused=True)
            except _Stale:
                # A kept-alive connection the bridge had closed while it sat idle (its keep-alive
                # ended, it drained, or it was killed): the request met a closed socket. Once more
                # on a new connection, which a dead bridge refuses (`Unreachable`: another replica
                # may take the call). The same is seen when a bridge dies while working on a
                # request sent on a reused connection; the call then runs elsewhere, as a client's
                # retry would.
                break
        connection = await self._connect(origin)
        return await connection.exchange(request, head_only=head_only, reused=False)

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, connection = await loop.create_connection(lambda: _Connection(self, origin), *origin)
        except TimeoutError as exc:
            raise Unreachable("connect timed out") from exc
        except OSError as exc:
            raise Unreachable(type(exc).__name__) from exc
        if not self._open:  # closed while connecting
            connection._abort("the gateway's link was closed")
            raise LinkError("the gateway's link was closed")
        self._connections.add(connection)
        return connection

    def _pool(self, connection: _Connection) -> None:
        if self._open:
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            connection._abort("the gateway's link was closed")

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)


def _encode(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> tuple[Origin, bytes]:
    """The origin to connect to and the request's bytes. Refuses (ValueError) what would not frame
    as one well-formed request; the messages name a header at most, never a value or a URL."""
    match = _URL.fullmatch(url)
    if match is None:
        raise ValueError("a bridge URL is plain http://host[:port]/path")
    authority, target = match.groups()
    origin = _origin(authority)
    if not target.startswith("/"):
        target = "/" + target
    if _TARGET_UNSAFE.search(target):
        target = quote(target, safe=_TARGET_SAFE)
    if not _TOKEN.fullmatch(method):
        raise ValueError("an HTTP method is a token")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError("a header name is not an HTTP token")
        if name.lower() in _FRAMING:
            raise ValueError(f"the link sets {name} itself")
        if _CONTROL.search(value):
            raise ValueError(f"the value of header {name} holds a control character")
        lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    try:
        head = "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("header values must be Latin-1 text") from None
    return origin, head + body if body else head


@functools.lru_cache(maxsize=256)
def _origin(authority: str) -> Origin:
    if "@" in authority:
        raise ValueError("a bridge URL must not carry credentials")
    match = _AUTHORITY.fullmatch(authority)
    port = int(match[2] or 80) if match is not None else 0
    if match is None or not 0 < port < 65536:
        raise ValueError("a bridge URL's host or port is not valid")
    return match[1].strip("[]"), port
