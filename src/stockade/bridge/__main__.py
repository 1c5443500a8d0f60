"""`python3 -m stockade.bridge ... -- COMMAND [ARGS...]` (see options.py for the flags)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from stockade.errors import StockadeError

from .http import create_app
from .hub import Hub
from .options import main_error, parse_args

log = logging.getLogger("stockade.bridge")


class BridgeServer(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT end the long-lived streams at once so in-flight calls drain."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is not None and not self.should_exit:
            log.info("signal %d: draining in-flight calls (up to %g s)", sig, self.config.timeout_graceful_shutdown)
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.hub.shutdown()))  # type: ignore[union-attr]
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after its shutdown; a drained bridge exits 0 instead.
        self._captured_signals.clear()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except StockadeError as exc:
        main_error(str(exc))
        return 2
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = Hub(options)
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
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
    )
    server = BridgeServer(config, hub)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
