"""`python3 -m stockade.bridge ... -- COMMAND [ARGS...]` (see options.py for the flags).

The server process starts first, as soon as the bootstrap is read, and the backend adopts it: the
server's own start-up (an interpreter importing its SDK, most of a second) then overlaps the
bridge's (importing uvicorn and starlette, starting them, binding the port). That is why the HTTP
side is imported in `_http_server`, after the server has started, and not at the top.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from stockade.errors import StockadeError

from .hub import Hub
from .options import Options, main_error, parse_args
from .process import ServerProcess

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("stockade.bridge")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except StockadeError as exc:
        main_error(str(exc))
        return 2
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(options))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (the server images), else asyncio's own loop."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


async def _serve(options: Options) -> int:
    hub = Hub(options)
    await _start_server(hub)
    try:
        server = _http_server(options, hub, asyncio.get_running_loop())
    except BaseException:
        await hub.backend.shutdown()  # the server must not outlive a bridge that never served
        raise
    await server.serve()
    return 0 if server.started else 1


async def _start_server(hub: Hub) -> None:
    """Start the server process and hand it to the backend, unless the backend would refuse to
    (a required variable is missing) or it cannot start: the backend then reports why itself."""
    if hub.options.missing_env:
        return
    try:
        process = await ServerProcess.launch(hub.options)
    except OSError:
        return  # the backend's own attempt fails the same way and names the reason on /ready
    hub.backend.adopt(process)


def _http_server(options: Options, hub: Hub, loop: asyncio.AbstractEventLoop) -> uvicorn.Server:
    import uvicorn

    from .http import create_app

    class BridgeServer(uvicorn.Server):
        """uvicorn, plus: on SIGTERM/SIGINT end the long-lived streams at once so in-flight calls drain."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                log.info("signal %d: draining in-flight calls (up to %g s)", sig, self.config.timeout_graceful_shutdown)
                loop.call_soon_threadsafe(lambda: loop.create_task(hub.shutdown()))
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after its shutdown; a drained bridge exits 0 instead.
            self._captured_signals.clear()

    config = uvicorn.Config(
        create_app(hub),
        host=options.host,
        port=options.port,
        lifespan="on",
        log_config=None,
        log_level=options.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(max(1, options.drain_timeout)),
        http=_http_protocol(),
    )
    return BridgeServer(config)


def _http_protocol() -> type[asyncio.Protocol] | str:
    """httptools, writing each response in one piece; h11 where httptools is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from stockade.http_protocol import OneWriteHttpProtocol

    return OneWriteHttpProtocol


if __name__ == "__main__":
    sys.exit(main())
