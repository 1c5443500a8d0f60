"""Latency and throughput of the bridge and the full stack against a direct stdio baseline.

    .venv/bin/python benchmarks/bridge_bench.py [--server time|echo] [--calls 2000] [--concurrency 20]
        [--mcp-proxy PATH-TO-mcp-proxy-EXECUTABLE] [--gateway URL --token TOKEN]

`--server time` serves `mcp-server-time` (`get_current_time`); `--server echo` the fixture
server's trivial `echo` (bridge-only overhead). Each target is measured twice: sequentially (one
caller: p50/p99 latency) and with `--concurrency` callers (calls/s). `--gateway` adds the full
stack: a running Stockade gateway URL of a deployed `time` server (`.../servers/time/mcp`) and a
member token. Prints figures; asserts nothing. Loopback and the project's own containers only.
mcp-proxy (PyPI, pins mcp<2) must live in its own virtualenv: pass `--mcp-proxy PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[1]
FIXTURE = [sys.executable, str(REPO / "tests" / "fixtures" / "fixture_server.py")]
SERVERS = {
    # name: (stdio command, tool, arguments of call i, check of the answer text)
    "echo": (FIXTURE, "echo", lambda i: {"text": f"m{i}"}, lambda i, text: text == f"m{i}"),
    "time": ([sys.executable, "-m", "mcp_server_time"], "get_current_time", lambda i: {"timezone": "UTC"},
             lambda i, text: "UTC" in text),
}
SERVER = SERVERS["echo"]
TOKEN = "bench-token-0123456789"
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(call: Callable[[int], Awaitable[None]], calls: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


class StdioTarget:
    """The baseline: JSON-RPC over the server's own stdin/stdout, no HTTP."""

    name = "direct stdio"

    async def __aenter__(self) -> StdioTarget:  # noqa: PYI034
        self.process = await asyncio.create_subprocess_exec(
            *SERVER[0], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, limit=2**24)
        self.pending: dict[int, asyncio.Future[dict]] = {}
        self.reader = asyncio.create_task(self._read())
        self.next_id = 0
        await self.request("initialize", INIT)
        self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()

    def _write(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():  # type: ignore[union-attr]
            message = json.loads(line)
            future = self.pending.pop(message.get("id"), None)
            if future is not None:
                future.set_result(message)

    async def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        self._write({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(future, 60)

    async def call(self, i: int) -> None:
        answer = await self.request("tools/call", {"name": SERVER[1], "arguments": SERVER[2](i)})
        assert SERVER[3](i, answer["result"]["content"][0]["text"]), answer


class HttpTarget:
    """A Streamable HTTP front (legacy session, JSON or SSE answers) started as a subprocess."""

    def __init__(self, name: str, argv: list[str], url: str, headers: dict[str, str], env: dict[str, str]) -> None:
        self.name, self.argv, self.url, self.headers, self.env = name, argv, url, headers, env

    async def __aenter__(self) -> HttpTarget:  # noqa: PYI034
        self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                                        stderr=subprocess.DEVNULL, env=self.env, start_new_session=True) if self.argv else None
        if self.argv and "--bootstrap-stdin" in self.argv:
            self.process.stdin.write(json.dumps({"token": TOKEN, "env": {}}).encode() + b"\n")  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
        self.http = httpx2.AsyncClient(headers=self.headers, timeout=60,
                                       limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100))
        deadline = time.monotonic() + 60
        while True:
            try:
                response = await self.http.post(self.url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                                "params": INIT},
                                                headers={"accept": "application/json, text/event-stream"})
                if response.status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            await asyncio.sleep(0.1)
        self.session = response.headers.get("mcp-session-id")
        self.version = _messages(response)[-1]["result"]["protocolVersion"]
        await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                             headers=self._headers())
        return self

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": self.version}
        if self.session:
            headers["mcp-session-id"] = self.session
        return headers

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    async def call(self, i: int) -> None:
        response = await self.http.post(self.url, json={"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                                                        "params": {"name": SERVER[1], "arguments": SERVER[2](i)}},
                                        headers=self._headers())
        answer = _messages(response)[-1]
        assert SERVER[3](i, answer["result"]["content"][0]["text"]), answer


def _messages(response: httpx2.Response) -> list[dict]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    return [response.json()]


def bridge_rss_mb(target: HttpTarget) -> str:
    """Resident memory of the bridge process alone (not its server), from /proc."""
    if target.process is None:
        return ""
    try:
        status = Path(f"/proc/{target.process.pid}/status").read_text()
    except OSError:
        return ""
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return f"{kb / 1024:.1f} MB"


async def measure(target: StdioTarget | HttpTarget, calls: int, concurrency: int) -> str:
    async with target:
        idle = bridge_rss_mb(target) if isinstance(target, HttpTarget) and "bridge" in target.name else ""
        await drive(target.call, min(200, calls), concurrency)  # warm-up
        sequential, _ = await drive(target.call, min(500, calls), 1)
        _, elapsed = await drive(target.call, calls, concurrency)
    sequential.sort()
    p50 = statistics.median(sequential) * 1000
    p99 = sequential[max(0, int(len(sequential) * 0.99) - 1)] * 1000
    return f"{target.name:<28} {p50:9.2f} {p99:9.2f} {calls / elapsed:12.0f} {idle:>10}"


async def main() -> None:
    global SERVER
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=sorted(SERVERS), default="time")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--mcp-proxy", help="path to an mcp-proxy executable (own virtualenv)")
    parser.add_argument("--gateway", help="MCP URL of a deployed time server on a running gateway")
    parser.add_argument("--token", help="member token for --gateway")
    args = parser.parse_args()
    SERVER = SERVERS[args.server]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    bridge_port = free_port()
    targets: list[StdioTarget | HttpTarget] = [
        StdioTarget(),
        HttpTarget("stockade bridge", [sys.executable, "-m", "stockade.bridge", "--host", "127.0.0.1", "--port",
                                       str(bridge_port), "--bootstrap-stdin", "--log-level", "warning", "--",
                                       *SERVER[0]],
                   f"http://127.0.0.1:{bridge_port}/mcp", {"authorization": f"Bearer {TOKEN}"}, env),
    ]
    if args.gateway and args.server == "time":
        targets.append(HttpTarget("stockade full stack", [], args.gateway, {"authorization": f"Bearer {args.token}"}, env))
    if args.mcp_proxy:
        port = free_port()
        targets.append(HttpTarget("mcp-proxy (PyPI)", [args.mcp_proxy, "--host", "127.0.0.1", "--port", str(port),
                                                       "--pass-environment", *SERVER[0]],
                                  f"http://127.0.0.1:{port}/mcp", {}, env))
    print(f"tools/call {SERVER[1]}: sequential p50/p99 over up to 500 calls; calls/s over {args.calls} calls "
          f"with {args.concurrency} concurrent callers")
    print(f"{'target':<28} {'p50 ms':>9} {'p99 ms':>9} {'calls/s @' + str(args.concurrency):>12} {'idle RSS':>10}")
    for target in targets:
        try:
            print(await measure(target, args.calls, args.concurrency), flush=True)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
            print(f"{target.name:<28} failed: {exc!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
