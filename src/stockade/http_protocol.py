"""uvicorn's HTTP/1.1 protocol (httptools), sending each response's head and body in one write.

uvicorn writes a response's status line and headers as one socket write and its body as another.
The socket has TCP_NODELAY, so each write is its own segment: a send() here, and a wakeup and a
read() in the receiver. Every call through Stockade crosses two of these servers (the gateway and
the bridge), and under load the processes on a call's path share the machine's CPUs. Counted with
strace on the bridge over about 3,000 calls: 8,357 writes with uvicorn's protocol, 5,129 with this.

No option of uvicorn joins the two, and its protocol class writes to the transport directly, so
the join is made here, by hand, in the transport uvicorn is given: the bytes written during one turn
of the event loop go out together at the start of the next. A response written in one turn (the
head, then a whole body) becomes one write; a stream's later chunks go out each in its own turn,
as before. Nothing is held past the next turn of the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Bytes held past this go out at once: a producer that writes a lot without yielding still hands
# the kernel its data at the usual pace, and its flow control still sees it.
_HOLD_LIMIT = 64 * 1024


class _JoiningTransport(asyncio.Transport):
    """A transport that joins the writes of one event-loop turn into one write of `inner`."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))
        self._held_size += len(data)
        if self._held_size > _HOLD_LIMIT:
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        if not self._inner.is_closing():  # the peer went away meanwhile: there is no one to send to
            self._inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + self._held_size

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._held_size = 0
        self._inner.abort()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()


class OneWriteHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a transport that joins each turn's writes. Pass it as
    `uvicorn.Config(http=OneWriteHttpProtocol)`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_JoiningTransport(transport, self.loop))
