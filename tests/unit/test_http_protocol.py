"""The HTTP protocol the gateway and the bridge serve with, on a real uvicorn on loopback.

Every byte the protocol hands the socket's transport is recorded (the transport itself is real and
still sends them), so the tests can say how many writes a response took. The tests run on
asyncio's own loop and on uvloop (the gateway's and the bridge's loop in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stockade.http_protocol import OneWriteHttpProtocol

pytestmark = pytest.mark.anyio

LARGE = bytes(range(256)) * 4096  # 1 MiB, past what the transport holds back


@pytest.fixture(params=[pytest.param(("asyncio", {}), id="asyncio"),
                        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]


class RecordedTransport:
    """A real transport whose writes are also appended to `writes`."""

    def __init__(self, inner: asyncio.Transport, writes: list[bytes]) -> None:
        self._inner = inner
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Served:
    """A Starlette app on uvicorn with the protocol under test, and every write it made."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.second_chunk_allowed = anyio.Event()
        self.url = ""

    def app(self) -> Starlette:
        async def small(request: Request) -> Response:
            return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": {"ok": True}})

        async def large(request: Request) -> Response:
            return Response(LARGE, media_type="application/octet-stream")

        async def closing(request: Request) -> Response:
            return JSONResponse({"bye": True}, headers={"connection": "close"})

        async def failing(request: Request) -> Response:
            raise RuntimeError("the app failed")

        async def stream(request: Request) -> Response:
            async def chunks() -> AsyncIterator[bytes]:
                yield b"data: one\n\n"
                with anyio.fail_after(10):
                    await self.second_chunk_allowed.wait()
                yield b"data: two\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")

        return Starlette(routes=[Route("/small", small), Route("/large", large), Route("/closing", closing),
                                 Route("/failing", failing), Route("/stream", stream)])

    def protocol(self) -> type[asyncio.Protocol]:
        writes = self.writes

        class Recorded(OneWriteHttpProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(RecordedTransport(transport, writes))  # type: ignore[arg-type]

        return Recorded


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner keeps its own signal handlers


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    served = Served()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    served.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = uvicorn.Config(served.app(), http=served.protocol(), lifespan="off", log_config=None, access_log=False)
    server = _QuietServer(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [listener])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        yield served
        server.should_exit = True


async def test_each_response_is_one_write(served: Served) -> None:
    async with httpx2.AsyncClient(base_url=served.url) as client:
        for _ in range(3):
            response = await client.get("/small")
            assert response.json() == {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}
    assert len(served.writes) == 3
    for write in served.writes:
        assert write.startswith(b"HTTP/1.1 200 OK\r\n")
        assert write.endswith(b'\r\n\r\n{"jsonrpc":"2.0","id":1,"result":{"ok":true}}')


async def test_a_stream_is_not_held_back(served: Served) -> None:
    # The second chunk is only produced once the client has read the first: a transport holding
    # bytes back until the response ended would never deliver it, and the test would time out.
    received = []
    async with httpx2.AsyncClient(base_url=served.url) as client, client.stream("GET", "/stream") as response:
        with anyio.fail_after(10):
            async for chunk in response.aiter_raw():
                received.append(chunk)
                served.second_chunk_allowed.set()
    assert b"".join(received) == b"data: one\n\ndata: two\n\n"
    assert served.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert served.writes[0].endswith(b"\r\n\r\nb\r\ndata: one\n\n\r\n")  # the head went out with the first chunk


async def test_a_large_body_arrives_whole(served: Served) -> None:
    async with httpx2.AsyncClient(base_url=served.url) as client:
        response = await client.get("/large")
    assert response.status_code == 200
    assert response.content == LARGE


async def test_what_is_held_goes_out_before_the_connection_closes(served: Served) -> None:
    # uvicorn closes the transport in the same turn as it writes the body of a `connection: close`
    # response; the bytes still held must reach the client first.
    host, port = served.url.removeprefix("http://").split(":")
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(b"GET /closing HTTP/1.1\r\nhost: test\r\n\r\n")
            answer = b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    answer += await stream.receive()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'\r\n\r\n{"bye":true}')


async def test_an_apps_failure_is_still_answered(served: Served) -> None:
    async with httpx2.AsyncClient(base_url=served.url) as client:
        response = await client.get("/failing")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
