"""The gateway's link to bridges against real HTTP servers on loopback: no mocks.

Each test starts a scripted asyncio server on 127.0.0.1 whose answers are written byte by byte, so
that what goes over the wire (keep-alive, framing, broken-off answers, stalls) is exactly what the
test says. The tests run on asyncio's own loop and on uvloop (the gateway's loop in production).
Nothing waits for time to pass: the server and the test meet on events; the stalls only meet a
read timeout the test shortens.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from stockade.gateway import bridge_link
from stockade.gateway.bridge_link import BridgeLink, LinkError, Unreachable

pytestmark = pytest.mark.anyio

SECRET = "Bearer s3cr3t-planted"


@pytest.fixture(params=[pytest.param(("asyncio", {}), id="asyncio"),
                        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]


@dataclass
class Seen:
    """One request as the server parsed it, and the number of the connection it came on."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    request: Seen
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


# A script answers one request; it returns False to end the connection (closing it after).
Script = Callable[[Exchange], Awaitable[bool]]


@dataclass
class Bridge:
    scripts: dict[str, Script]
    server: asyncio.Server | None = None
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    ended: dict[int, asyncio.Event] = field(default_factory=dict)  # set when a connection's reader sees EOF

    def ended_event(self, number: int) -> asyncio.Event:
        return self.ended.setdefault(number, asyncio.Event())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                line, *fields = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ")
                headers = {name.strip().lower(): value.strip() for name, value in (f.split(":", 1) for f in fields)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(number, method, target, headers, body)
                self.requests.append(seen)
                script = self.scripts.get(target.split("?")[0]) or self.scripts["/any"]
                if not await script(Exchange(seen, reader, writer)):
                    break
        finally:
            self.ended_event(number).set()
            writer.close()

    def seen(self, target: str) -> list[Seen]:
        return [r for r in self.requests if r.target == target]


@asynccontextmanager
async def serve(**scripts: Script) -> AsyncIterator[Bridge]:
    """A bridge on a free loopback port; `scripts` are keyed by path (`_` for `/`), `any` for the rest."""
    bridge = Bridge({"/" + name.replace("_", "/"): script for name, script in scripts.items()})
    server = bridge.server = await asyncio.start_server(bridge.handle, "127.0.0.1", 0)
    bridge.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield bridge
    finally:
        server.close()
        # Handlers still waiting on their client are cancelled with the test's loop.


def answer(body: bytes, *, status: str = "200 OK", extra: str = "", content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def json_ok(exchange: Exchange) -> bool:
    await exchange.write(answer(b'{"ok":true}', extra="Mcp-Session-Id: abc\r\nX-Twice: 1\r\nX-Twice: 2\r\n"))
    return True


async def stall(exchange: Exchange) -> bool:
    """Answer nothing more until the client closes the connection."""
    await exchange.reader.read(1)
    return False


def secret_free(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)):
        assert "s3cr3t" not in text


# -- answers ------------------------------------------------------------------------------------
async def test_content_length_answer_and_the_request_as_sent() -> None:
    async with serve(mcp=json_ok) as bridge, BridgeLink() as link:
        response = await link.send("POST", f"{bridge.url}/mcp",
                                   headers={"Authorization": SECRET, "content-type": "application/json"},
                                   body=b'{"jsonrpc":"2.0"}')
        assert response.status_code == 200
        assert response.headers.get("content-type") == "application/json"
        assert response.headers.get("MCP-SESSION-ID") == "abc" and "mcp-session-id" in response.headers
        assert response.headers.get("x-twice") == "1, 2"
        assert response.headers.get("absent") is None and response.headers.get("absent", "") == ""
        assert {k.lower(): v for k, v in response.headers.items()}["content-length"] == "11"
        assert "abc" not in repr(response.headers)  # names only
        assert await response.read() == b'{"ok":true}'
        assert await response.read() == b'{"ok":true}'

        empty = await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"")
        await empty.read()
        bare = await link.send("GET", f"{bridge.url}/mcp", headers={})
        await bare.read()

    sent, with_empty_body, without_body = bridge.requests
    assert (sent.method, sent.target, sent.body) == ("POST", "/mcp", b'{"jsonrpc":"2.0"}')
    assert sent.headers["host"] == bridge.url.removeprefix("http://")
    assert sent.headers["content-length"] == "17" and sent.headers["authorization"] == SECRET
    # Nothing the caller did not ask for: no User-Agent, Accept-Encoding, Connection, cookies.
    assert set(sent.headers) == {"host", "authorization", "content-type", "content-length"}
    assert with_empty_body.headers["content-length"] == "0" and with_empty_body.body == b""
    assert "content-length" not in without_body.headers
    assert {r.connection for r in bridge.requests} == {1}


async def test_chunked_answer_is_read_whole_and_relayed_unchanged() -> None:
    async def chunked(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        await exchange.write(b"5\r\n[1,2,\r\n")
        await exchange.write(b"3\r\n3]\n\r\n0\r\n\r\n")
        return True

    async with serve(chunks=chunked) as bridge, BridgeLink() as link:
        response = await link.send("GET", f"{bridge.url}/chunks", headers={})
        assert await response.read() == b"[1,2,3]\n"
        again = await link.send("GET", f"{bridge.url}/chunks", headers={})
        assert b"".join([chunk async for chunk in again.iter_raw()]) == b"[1,2,3]\n"
    assert [r.connection for r in bridge.requests] == [1, 1]


async def test_an_answer_that_runs_until_the_connection_closes() -> None:
    async def until_close(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        return False

    async with serve(old=until_close) as bridge, BridgeLink() as link:
        for _ in range(2):
            response = await link.send("GET", f"{bridge.url}/old", headers={})
            assert await response.read() == b"all of it"
    assert [r.connection for r in bridge.requests] == [1, 2]


async def test_interim_answers_are_skipped() -> None:
    async def early_hints(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer(b"{}"))
        return True

    async with serve(hints=early_hints) as bridge, BridgeLink() as link:
        response = await link.send("GET", f"{bridge.url}/hints", headers={})
        assert response.status_code == 200 and "link" not in response.headers
        assert await response.read() == b"{}"


async def test_sse_events_arrive_as_they_are_sent() -> None:
    first_seen = asyncio.Event()

    async def stream(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await exchange.write(b"f\r\ndata: {\"n\":1}\n\n\r\n")
        await first_seen.wait()  # the second event is written only once the client has the first
        await exchange.write(b"f\r\ndata: {\"n\":2}\n\n\r\n0\r\n\r\n")
        return True

    async with serve(sse=stream) as bridge, BridgeLink() as link:
        response = await link.send("GET", f"{bridge.url}/sse", headers={"accept": "text/event-stream"})
        assert response.headers.get("content-type", "").startswith("text/event-stream")
        received = []
        with anyio.fail_after(10):
            async for chunk in response.iter_raw():
                received.append(chunk)
                first_seen.set()
        await response.close()
        assert received == [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n']
        await (await link.send("GET", f"{bridge.url}/sse", headers={})).read()
    assert [r.connection for r in bridge.requests] == [1, 1]  # a stream read to its end is reused


async def test_a_slow_stream_reader_stops_the_socket_being_read() -> None:
    total = 24 * 1024 * 1024
    piece = b"x" * 65536
    written = 0

    async def flood(exchange: Exchange) -> bool:
        nonlocal written
        await exchange.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        for _ in range(total // len(piece)):
            await exchange.write(piece)
            written += len(piece)
        return True

    async with serve(flood=flood) as bridge, BridgeLink() as link:
        response = await link.send("GET", f"{bridge.url}/flood", headers={})
        connection = response._connection
        assert connection is not None
        with anyio.fail_after(10):
            while not connection._paused:  # nobody reads: the link must stop reading the socket
                await anyio.sleep(0.01)
        assert connection._buffered <= bridge_link.BUFFER_LIMIT + 4 * len(piece)
        assert written < total  # the bridge's writes wait for the gateway's reader
        received = 0
        with anyio.fail_after(30):
            async for chunk in response.iter_raw():
                received += len(chunk)
        assert received == total


# -- keep-alive -------------------------------------------------------------------------------
async def test_keep_alive_reuses_one_connection() -> None:
    async with serve(mcp=json_ok) as bridge, BridgeLink() as link:
        for _ in range(3):
            await (await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"{}")).read()
    assert [r.connection for r in bridge.requests] == [1, 1, 1]


async def test_an_idle_connection_the_bridge_closes_leaves_the_pool() -> None:
    async def answer_then_close(exchange: Exchange) -> bool:
        await exchange.write(answer(b"{}"))  # no `Connection: close`: its keep-alive just ends
        return False

    async with serve(mcp=answer_then_close) as bridge, BridgeLink() as link:
        await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()
        with anyio.fail_after(10):
            while link._connections:  # noticed without a request having to fail on it
                await anyio.sleep(0.01)
        assert link._idle == {("127.0.0.1", int(bridge.url.rsplit(":", 1)[1])): []}


async def test_connection_close_from_the_bridge_is_honoured() -> None:
    async def closing(exchange: Exchange) -> bool:
        await exchange.write(answer(b"{}", extra="Connection: close\r\n"))
        return True  # and keeps its end open: the link must not reuse it all the same

    async with serve(bye=closing) as bridge, BridgeLink() as link:
        for _ in range(2):
            await (await link.send("GET", f"{bridge.url}/bye", headers={})).read()
        with anyio.fail_after(10):
            await bridge.ended_event(1).wait()
    assert [r.connection for r in bridge.requests] == [1, 2]


async def test_closing_an_unread_answer_does_not_pool_its_connection() -> None:
    async with serve(mcp=json_ok) as bridge, BridgeLink() as link:
        response = await link.send("GET", f"{bridge.url}/mcp", headers={})
        await response.close()
        with anyio.fail_after(10):
            await bridge.ended_event(1).wait()
        await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()
    assert [r.connection for r in bridge.requests] == [1, 2]


async def test_an_answer_dropped_unread_closes_its_connection() -> None:
    async def stream_forever(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        return await stall(exchange)

    async with serve(sse=stream_forever) as bridge, BridgeLink() as link:
        response = await link.send("GET", f"{bridge.url}/sse", headers={})
        del response  # its owner failed before reading or closing it
        with anyio.fail_after(10):
            await bridge.ended_event(1).wait()


async def test_a_caller_cancelled_mid_request_closes_the_connection() -> None:
    arrived = asyncio.Event()

    async def slow(exchange: Exchange) -> bool:
        arrived.set()
        return await stall(exchange)

    async with serve(slow=slow, mcp=json_ok) as bridge, BridgeLink() as link:
        await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()  # pools connection 1

        async def caller() -> None:
            await link.send("GET", f"{bridge.url}/slow", headers={"x": "1"})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(caller)
            with anyio.fail_after(10):
                await arrived.wait()
            tasks.cancel_scope.cancel()
        with anyio.fail_after(10):
            await bridge.ended_event(1).wait()  # the link closed it: its answer would be the next one's
        await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()
    assert [r.connection for r in bridge.requests] == [1, 1, 2]


async def test_closing_the_link_closes_pooled_connections() -> None:
    async with serve(mcp=json_ok) as bridge:
        async with BridgeLink() as link:
            await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()
        with anyio.fail_after(10):
            await bridge.ended_event(1).wait()
        with pytest.raises(RuntimeError):
            await link.send("GET", f"{bridge.url}/mcp", headers={})


# -- the one retry ----------------------------------------------------------------------------
async def test_a_request_meeting_an_idle_connection_the_bridge_closed_is_sent_again() -> None:
    close_now = asyncio.Event()

    async def then_close(exchange: Exchange) -> bool:
        await exchange.write(answer(b"first"))
        if exchange.request.connection == 1:
            await close_now.wait()  # the bridge's keep-alive ends just as the next request is sent
            exchange.writer.transport.abort()
            return False
        return True

    async with serve(mcp=then_close) as bridge, BridgeLink() as link:
        await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()
        close_now.set()
        # The request is written to the pooled connection before the loop runs the bridge's close.
        response = await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"second")
        assert await response.read() == b"first"
    assert [(r.connection, r.body) for r in bridge.requests] == [(1, b""), (2, b"second")]


async def test_a_kept_alive_connection_that_breaks_before_any_answer_is_retried_once() -> None:
    async def die_on_second(exchange: Exchange) -> bool:
        if exchange.request.connection == 1 and exchange.request.body == b"again":
            exchange.writer.transport.abort()  # got the request on the reused connection, then died
            return False
        await exchange.write(answer(b"ok"))
        return True

    async with serve(mcp=die_on_second) as bridge, BridgeLink() as link:
        await (await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"first")).read()
        response = await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"again")
        assert await response.read() == b"ok"
    assert [(r.connection, r.body) for r in bridge.requests] == [(1, b"first"), (1, b"again"), (2, b"again")]


async def test_a_kept_alive_connection_that_breaks_mid_answer_is_not_retried() -> None:
    async def break_off_second(exchange: Exchange) -> bool:
        if exchange.request.body == b"again":
            await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # the bridge was answering it
            return False
        await exchange.write(answer(b"ok"))
        return True

    async with serve(mcp=break_off_second) as bridge, BridgeLink() as link:
        await (await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"first")).read()
        with pytest.raises(LinkError) as broken:
            await link.send("POST", f"{bridge.url}/mcp", headers={}, body=b"again")
    assert not isinstance(broken.value, Unreachable)
    assert [(r.connection, r.body) for r in bridge.requests] == [(1, b"first"), (1, b"again")]


async def test_a_kept_alive_connection_whose_bridge_died_is_unreachable_on_retry() -> None:
    die = asyncio.Event()

    async def then_die(exchange: Exchange) -> bool:
        await exchange.write(answer(b"{}"))
        await die.wait()
        assert bridge.server is not None
        bridge.server.close()  # the bridge's process dies: nothing listens any more...
        exchange.writer.transport.abort()  # ...and its connections close
        return False

    async with serve(mcp=then_die) as bridge, BridgeLink() as link:
        await (await link.send("GET", f"{bridge.url}/mcp", headers={})).read()
        die.set()
        with pytest.raises(Unreachable):  # so that another replica may take the call
            await link.send("POST", f"{bridge.url}/mcp", headers={"authorization": SECRET}, body=b"{}")
    assert len(bridge.requests) == 1


async def test_a_new_connection_that_breaks_mid_answer_is_not_retried() -> None:
    async def partial_head(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
        return False

    async def partial_body(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"trunc")
        return False

    async def no_answer(exchange: Exchange) -> bool:
        return False

    async with serve(head=partial_head, body=partial_body, silent=no_answer) as bridge, BridgeLink() as link:
        headers = {"authorization": SECRET}
        with pytest.raises(LinkError) as head_error:
            await link.send("POST", f"{bridge.url}/head", headers=headers, body=b"{}")
        with pytest.raises(LinkError) as silent_error:
            await link.send("POST", f"{bridge.url}/silent", headers=headers, body=b"{}")
        response = await link.send("POST", f"{bridge.url}/body", headers=headers, body=b"{}")
        with pytest.raises(LinkError) as body_error:
            await response.read()
    for error in (head_error, silent_error, body_error):
        assert not isinstance(error.value, Unreachable)  # the request may have reached the bridge
        secret_free(error.value)
    assert [r.target for r in bridge.requests] == ["/head", "/silent", "/body"]  # each once


# -- unreachable, timeouts, secrets -------------------------------------------------------------
async def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with BridgeLink() as link:
        with pytest.raises(Unreachable) as refused:
            await link.send("GET", f"http://127.0.0.1:{port}/mcp", headers={"authorization": SECRET})
    assert "ConnectionRefused" in str(refused.value)
    secret_free(refused.value)


async def test_a_connect_that_times_out_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_link, "CONNECT_TIMEOUT", 0.2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        # Fill the accept queue (never accepted): the kernel then drops further connection attempts.
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        try:
            async with BridgeLink() as link:
                with pytest.raises(Unreachable) as timed_out:
                    await link.send("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/mcp", headers={})
        finally:
            for filler in fillers:
                filler.close()
    assert str(timed_out.value) == "connect timed out"


async def test_a_stalled_answer_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_link, "READ_TIMEOUT", 0.2)

    async def stalled_body(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n123")
        return await stall(exchange)

    async def stalled_stream(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"7\r\ndata:\n\n\r\n")
        return await stall(exchange)

    async with serve(head=stall, body=stalled_body, stream=stalled_stream) as bridge, BridgeLink() as link:
        headers = {"authorization": SECRET}
        with pytest.raises(LinkError) as head_timeout:
            await link.send("GET", f"{bridge.url}/head", headers=headers)
        response = await link.send("GET", f"{bridge.url}/body", headers=headers)
        with pytest.raises(LinkError) as body_timeout:
            await response.read()
        stream = await link.send("GET", f"{bridge.url}/stream", headers=headers)
        chunks = []
        with pytest.raises(LinkError) as stream_timeout:
            async for chunk in stream.iter_raw():
                chunks.append(chunk)
        assert chunks == [b"data:\n\n"]
        for number in (1, 2, 3):  # each stalled connection was closed, none pooled
            with anyio.fail_after(10):
                await bridge.ended_event(number).wait()
    for error in (head_timeout, body_timeout, stream_timeout):
        assert str(error.value) == "read timed out" and not isinstance(error.value, Unreachable)
        secret_free(error.value)


async def test_malformed_answers_and_requests_name_no_secret() -> None:
    async def garbage(exchange: Exchange) -> bool:
        await exchange.write(b"HTTP/1.1 2x0 " + SECRET.encode() + b"\r\n\r\n")
        return False

    async with serve(bad=garbage) as bridge, BridgeLink() as link:
        with pytest.raises(LinkError) as malformed:
            await link.send("GET", f"{bridge.url}/bad", headers={"authorization": SECRET})
        secret_free(malformed.value)
        port = bridge.url.rsplit(":", 1)[1]
        refusals: list[tuple[str, dict[str, str]]] = [
            (f"http://user:s3cr3t-planted@127.0.0.1:{port}/mcp", {}),
            (f"https://127.0.0.1:{port}/s3cr3t-planted", {}),
            (f"{bridge.url}/mcp", {"authorization": SECRET + "\r\nX-Injected: 1"}),
            (f"{bridge.url}/mcp", {"authorization": SECRET + "\u2603"}),
            (f"{bridge.url}/mcp", {SECRET: "x"}),
            (f"{bridge.url}/mcp", {"Content-Length": "5"}),
        ]
        for url, headers in refusals:
            with pytest.raises(ValueError) as refused:
                await link.send("GET", url, headers=headers)
            secret_free(refused.value)
    assert [r.target for r in bridge.requests] == ["/bad"]


async def test_targets_are_sent_percent_encoded() -> None:
    async with serve(tools=json_ok) as bridge, BridgeLink() as link:
        await (await link.send("GET", f"{bridge.url}/tools?a=1", headers={})).read()
    assert bridge.requests[0].target == "/tools?a=1"
    async with serve(any=json_ok) as bridge, BridgeLink() as link:
        await (await link.send("GET", f"{bridge.url}/tools/get t\u00e9", headers={})).read()
    assert bridge.requests[0].target == "/tools/get%20t%C3%A9"
