"""Latency and throughput of the bridge against a direct stdio baseline and mcp-proxy (a peer).

    .venv/bin/python benchmarks/bridge_bench.py [--server time|echo] [--calls 2000] [--concurrency 20]
        [--rounds 1] [--mcp-proxy PATH | --no-mcp-proxy] [--gateway URL --token TOKEN]
        [--container URL --container-token TOKEN]

`--server time` serves `mcp-server-time` (`get_current_time`); `--server echo` the fixture
server's trivial `echo` (bridge-only overhead). Each target is measured sequentially (one caller:
p50/p99 latency) and with `--concurrency` callers (calls/s). All targets run at once and their calls
alternate in short segments, so that the machine's drift over a run does not read as a difference
between them; `--rounds N` repeats everything N times (the machine is shared: report the range).
`--gateway` adds the full stack: a running Stockade gateway URL of a deployed `time` server and a
member token; `--container` the same server's bridge measured directly (its own token), the
baseline for what the gateway adds. Prints figures; asserts nothing. Loopback and the project's own containers only.

Where the CPU goes: while each target serves its concurrent callers, the CPU time (from /proc) of
every process on its path (`--gateway-pid`, `--container-pids` for the processes outside this
one's reach), of this client and of the whole machine, per call.

Against the targets: each round reads the speed targets of the bridge's and the gateway's issues
off its own figures (bridge +0.5 ms p50 and 3x mcp-proxy's calls/s, 40 MB idle; gateway +1 ms p50
over its bridge; full stack 2x mcp-proxy's calls/s; all with `--server time`) and says which it
met; with `--rounds` above 1, how many rounds met each, and the range.

The client is deliberately lean, so it measures the servers and not itself: raw HTTP/1.1 on one
keep-alive connection per caller, request bodies pre-encoded (only the id is spliced in), answers
checked by a byte search rather than parsed; the stdio baseline likewise writes pre-encoded lines
and reads the id with a byte search. mcp-proxy (PyPI, pins mcp<2) lives in its own virtualenv:
`--mcp-proxy PATH`, else it is pip-installed once into a cache directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
FIXTURE = [sys.executable, str(REPO / "tests" / "fixtures" / "fixture_server.py")]
CACHE = Path(os.environ.get("STOCKADE_TEST_CACHE", Path.home() / ".cache" / "stockade-tests"))
TOKEN = "bench-token-0123456789"
BRIDGE = "stockade bridge"
BRIDGE_IN_CONTAINER = "bridge in container"
FULL_STACK = "stockade full stack"
MCP_PROXY = "mcp-proxy (PyPI)"
INIT = (b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}')
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


class Server:
    """A stdio server to measure: its command and one pre-encoded tools/call (the id spliced in)."""

    def __init__(self, command: list[str], tool: str, arguments: bytes, expect: bytes) -> None:
        self.command, self.expect = command, expect
        self._head = b'{"jsonrpc":"2.0","id":'
        self._tail = b',"method":"tools/call","params":{"name":"%s","arguments":%s}}' % (tool.encode(), arguments)

    def call(self, request_id: int) -> bytes:
        return self._head + str(request_id).encode() + self._tail


SERVERS = {
    "echo": Server(FIXTURE, "echo", b'{"text":"bench"}', b'"text":"bench"'),
    "time": Server([sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"], "get_current_time",
                   b'{"timezone":"UTC"}', b"UTC"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(call: Callable[[int, int], Awaitable[None]], calls: int, concurrency: int) -> tuple[list[float], float]:
    """`calls` calls from `concurrency` callers (caller index, call number); latencies and elapsed."""
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker(caller: int) -> None:
        for i in counter:
            start = time.perf_counter()
            await call(caller, i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return latencies, time.perf_counter() - start


class StdioTarget:
    """The baseline: JSON-RPC lines on the server's own stdin/stdout, no HTTP."""

    name = "direct stdio"
    process: asyncio.subprocess.Process | None = None

    def __init__(self, server: Server) -> None:
        self.server = server

    async def __aenter__(self) -> StdioTarget:  # noqa: PYI034
        self.process = await asyncio.create_subprocess_exec(
            *self.server.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            limit=2**24)
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.reader = asyncio.create_task(self._read())
        self.next_id = 0
        await self._request(lambda _: INIT, 0)
        self.process.stdin.write(INITIALIZED + b"\n")  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        assert self.process is not None
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()

    async def _read(self) -> None:
        stdout = self.process.stdout  # type: ignore[union-attr]
        while line := await stdout.readline():
            start = line.find(b'"id":')
            if start < 0:
                continue
            end = start + 5
            while line[end:end + 1].isdigit():
                end += 1
            future = self.pending.pop(int(line[start + 5:end] or -1), None)
            if future is not None:
                future.set_result(line)

    async def _request(self, encode: Callable[[int], bytes], request_id: int) -> bytes:
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.process.stdin.write(encode(request_id) + b"\n")  # type: ignore[union-attr]
        return await asyncio.wait_for(future, 60)

    def processes(self) -> dict[str, list[int]]:
        return {"server": [self.process.pid]} if self.process is not None else {}

    async def call(self, caller: int, i: int) -> None:
        self.next_id += 1
        answer = await self._request(self.server.call, self.next_id)
        assert self.server.expect in answer, answer[:300]


class Connection:
    """One keep-alive HTTP/1.1 connection; answers are JSON or an SSE stream (chunked or not)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, head: bytes, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        self.writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")
            return status, headers, b"".join(chunks)
        return status, headers, await self.reader.read()


class HttpTarget:
    """A Streamable HTTP front (legacy session, JSON or SSE answers), started as a subprocess."""

    def __init__(self, name: str, argv: list[str], url: str, headers: dict[str, str], server: Server,
                 bootstrap: bool = False, role: str = "", outside: dict[str, list[int]] | None = None) -> None:
        self.name, self.argv, self.url, self.server, self.bootstrap = name, argv, url, server, bootstrap
        # `role`: what the started process is (its children are the server); `outside`: the
        # processes of a target this benchmark did not start, by role.
        self.role, self.outside = role, outside or {}
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.base_head = (f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
                          "accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n"
                          + "".join(f"{k}: {v}\r\n" for k, v in headers.items())).encode()
        self.connections: list[Connection] = []
        self.process: subprocess.Popen[bytes] | None = None

    async def _connect(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**24)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Connection(reader, writer)

    async def __aenter__(self) -> HttpTarget:  # noqa: PYI034
        if self.argv:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                                            stderr=subprocess.DEVNULL, start_new_session=True)
            assert self.process.stdin is not None
            if self.bootstrap:
                self.process.stdin.write(b'{"token": "%s", "env": {}}\n' % TOKEN.encode())
            self.process.stdin.flush()
        deadline = time.monotonic() + 60
        while True:
            try:
                first = await self._connect()
                status, headers, body = await first.post(self.base_head, INIT)
                if status == 200:
                    break
                first.writer.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            await asyncio.sleep(0.1)
        session = headers.get(b"mcp-session-id")
        version = b"2025-11-25" if b"2025-11-25" in body else b"2025-06-18"
        self.head = self.base_head + b"mcp-protocol-version: " + version + b"\r\n"
        if session:
            self.head += b"mcp-session-id: " + session + b"\r\n"
        await first.post(self.head, INITIALIZED)
        self.connections = [first]
        return self

    def processes(self) -> dict[str, list[int]]:
        if self.process is None:
            return self.outside
        return {self.role: [self.process.pid], "server": children(self.process.pid)}

    async def connections_for(self, count: int) -> None:
        while len(self.connections) < count:
            self.connections.append(await self._connect())

    async def call(self, caller: int, i: int) -> None:
        connection = self.connections[caller]
        if connection.reader.at_eof():  # the server closed it while idle (keep-alive timeout): reopen
            connection = self.connections[caller] = await self._connect()
        status, _, body = await connection.post(self.head, self.server.call(i + 1))
        assert status == 200 and self.server.expect in body, (status, body[:300])

    async def __aexit__(self, *exc: object) -> None:
        for connection in self.connections:
            connection.writer.close()
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(path: Path) -> list[str]:
    """The fields of a /proc/<pid>/stat file after the command name (which may hold spaces)."""
    return path.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) a process has used; 0 once it is gone."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Every descendant of a process."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(stat_fields(entry / "stat")[1])
            except OSError:
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, pending = [], list(parents.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending += parents.get(child, [])
    return found


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle, not waiting for I/O), all CPUs."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def client_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process (not its children), from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)


# The machine's speed drifts by a third over minutes (other tenants of the host): targets measured
# one after the other would show that drift as a difference between them. So every target runs at
# once and the calls alternate between them, in short segments.
SEQUENTIAL_SEGMENTS = 10
CONCURRENT_SEGMENTS = 5


@dataclass
class Figures:
    sequential: list[float] = field(default_factory=list)
    calls: int = 0
    elapsed: float = 0.0
    idle_mb: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds over the concurrent calls
    busy: float = 0.0  # the machine's busy CPU seconds over the same time

    def cpu_line(self) -> str:
        """CPU per call by role, at the concurrent calls; and the machine's busy CPUs."""
        parts = ", ".join(f"{role} {seconds / self.calls * 1e6:.0f}" for role, seconds in self.cpu.items())
        return f"{parts} µs a call; machine {self.busy / self.elapsed:.2f} of {os.cpu_count()} CPUs busy"

    @property
    def rate(self) -> float:
        """Calls/s at the concurrent calls."""
        return self.calls / self.elapsed

    @property
    def p50(self) -> float:
        return statistics.median(self.sequential) * 1000

    @property
    def p99(self) -> float:
        ordered = sorted(self.sequential)
        return ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


@dataclass(frozen=True)
class Goal:
    """A speed target of the bridge's and the gateway's issues, read off one round's figures."""

    name: str
    read_figures: Callable[[dict[str, Figures]], float | None]
    needs: tuple[str, ...]
    bound: float
    at_most: bool  # the figure must stay at or under the bound (else reach it)
    unit: str  # "ms" for added latency (shown with a sign), "MB", or "x" for a ratio of calls/s

    def read(self, figures: dict[str, Figures]) -> float | None:
        return self.read_figures(figures) if all(name in figures for name in self.needs) else None

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def shown(self, value: float) -> str:
        return {"ms": f"{value:+.2f} ms", "MB": f"{value:.1f} MB", "x": f"{value:.2f}x"}[self.unit]

    @property
    def bound_text(self) -> str:
        return f"{'at most' if self.at_most else 'at least'} {self.shown(self.bound)}"


GOALS = (
    Goal("bridge: added p50 over direct stdio", lambda f: f[BRIDGE].p50 - f[StdioTarget.name].p50,
         (BRIDGE, StdioTarget.name), 0.5, True, "ms"),
    Goal("bridge: calls/s against mcp-proxy's", lambda f: f[BRIDGE].rate / f[MCP_PROXY].rate,
         (BRIDGE, MCP_PROXY), 3.0, False, "x"),
    Goal("bridge: idle memory", lambda f: f[BRIDGE].idle_mb, (BRIDGE,), 40.0, True, "MB"),
    Goal("gateway: added p50 over its bridge", lambda f: f[FULL_STACK].p50 - f[BRIDGE_IN_CONTAINER].p50,
         (FULL_STACK, BRIDGE_IN_CONTAINER), 1.0, True, "ms"),
    Goal("full stack: calls/s against mcp-proxy's", lambda f: f[FULL_STACK].rate / f[MCP_PROXY].rate,
         (FULL_STACK, MCP_PROXY), 2.0, False, "x"),
)


async def measure(targets: list[StdioTarget | HttpTarget], calls: int, concurrency: int) -> dict[str, Figures]:
    """Sequential latency (up to 1000 calls) and calls/s (`calls` calls from `concurrency` callers)
    of every target, their calls interleaved. A target that fails is reported and left out."""
    figures: dict[str, Figures] = {}
    async with contextlib.AsyncExitStack() as stack:
        live: list[StdioTarget | HttpTarget] = []
        for target in targets:
            try:
                live.append(await stack.enter_async_context(target))
            except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
                print(f"{target.name:<24} failed to start: {exc!r}", flush=True)
        await asyncio.sleep(1)
        for target in live:
            figures[target.name] = Figures()
            if isinstance(target, HttpTarget):
                if target.process is not None and (rss := rss_mb(target.process.pid)) is not None:
                    figures[target.name].idle_mb = rss
                await target.connections_for(concurrency)
            await drive(target.call, min(300, calls), concurrency)  # warm-up
        for _ in range(SEQUENTIAL_SEGMENTS):
            for target in live:
                latencies, _ = await drive(target.call, min(1000, calls) // SEQUENTIAL_SEGMENTS, 1)
                figures[target.name].sequential += latencies
        for _ in range(CONCURRENT_SEGMENTS):
            for target in live:
                figure = figures[target.name]
                processes = target.processes()
                before = {role: sum(map(cpu_seconds, pids)) for role, pids in processes.items()}
                client, busy = client_seconds(), machine_busy_seconds()
                _, elapsed = await drive(target.call, calls // CONCURRENT_SEGMENTS, concurrency)
                for role, pids in processes.items():
                    figure.cpu[role] = figure.cpu.get(role, 0.0) + sum(map(cpu_seconds, pids)) - before[role]
                figure.cpu["client"] = figure.cpu.get("client", 0.0) + client_seconds() - client
                figure.busy += machine_busy_seconds() - busy
                figure.calls += calls // CONCURRENT_SEGMENTS
                figure.elapsed += elapsed
    return figures


def ensure_mcp_proxy() -> str:
    """mcp-proxy from PyPI in its own cached virtualenv (it pins mcp<2)."""
    venv = CACHE / "mcp-proxy-venv"
    executable = venv / "bin" / "mcp-proxy"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "mcp-proxy"],
                       check=True)
    return str(executable)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=sorted(SERVERS), default="time")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mcp-proxy", help="path to an mcp-proxy executable (default: installed into a cache)")
    parser.add_argument("--no-mcp-proxy", action="store_true", help="leave the peer out")
    parser.add_argument("--gateway", help="MCP URL of a deployed time server on a running gateway")
    parser.add_argument("--token", help="member token for --gateway")
    parser.add_argument("--container", help="MCP URL of the bridge (in its container) behind --gateway, measured directly")
    parser.add_argument("--container-token", help="that bridge's own token")
    parser.add_argument("--gateway-pid", type=int, help="the gateway's process, for where the CPU goes")
    parser.add_argument("--container-pids", default="",
                        help="the container's processes as role=pid,... (e.g. bridge=12,server=34)")
    args = parser.parse_args()
    server = SERVERS[args.server]
    in_container: dict[str, list[int]] = {}
    for pair in filter(None, args.container_pids.split(",")):
        role, _, pid = pair.partition("=")
        in_container.setdefault(role, []).append(int(pid))
    on_gateway = {"gateway": [args.gateway_pid]} if args.gateway_pid else {}
    mcp_proxy = None if args.no_mcp_proxy else (args.mcp_proxy or ensure_mcp_proxy())

    def targets() -> list[StdioTarget | HttpTarget]:
        bridge_port = free_port()
        chosen: list[StdioTarget | HttpTarget] = [
            StdioTarget(server),
            HttpTarget(BRIDGE, [sys.executable, "-m", "stockade.bridge", "--host", "127.0.0.1", "--port",
                                str(bridge_port), "--bootstrap-stdin", "--log-level", "warning", "--", *server.command],
                       f"http://127.0.0.1:{bridge_port}/mcp", {"authorization": f"Bearer {TOKEN}"}, server,
                       bootstrap=True, role="bridge"),
        ]
        if args.container and args.server == "time":
            chosen.append(HttpTarget(BRIDGE_IN_CONTAINER, [], args.container,
                                     {"authorization": f"Bearer {args.container_token}"}, server, outside=in_container))
        if args.gateway and args.server == "time":
            chosen.append(HttpTarget(FULL_STACK, [], args.gateway, {"authorization": f"Bearer {args.token}"}, server,
                                     outside={**on_gateway, **in_container}))
        if mcp_proxy:
            port = free_port()
            chosen.append(HttpTarget(MCP_PROXY, [mcp_proxy, "--host", "127.0.0.1", "--port", str(port),
                                                 "--pass-environment", "--", *server.command],
                                     f"http://127.0.0.1:{port}/mcp", {}, server, role="mcp-proxy"))
        return chosen

    print(f"tools/call {args.server}: sequential p50/p99 over up to 1000 calls; calls/s over {args.calls} calls "
          f"with {args.concurrency} concurrent callers (one keep-alive connection each); all targets run at once, "
          "their calls alternating in segments")
    print(f"{'target':<24} {'p50 ms':>8} {'p99 ms':>8} {'calls/s @' + str(args.concurrency):>12} {'idle RSS':>10}"
          f" {'added p50':>10}")
    # The targets are stated for `mcp-server-time`; the echo server shows the bridge's own overhead.
    goals = GOALS if args.server == "time" else ()
    readings: dict[Goal, list[float]] = {}
    for _ in range(args.rounds):
        figures = await measure(targets(), args.calls, args.concurrency)
        baseline = figures.get(StdioTarget.name)
        for name, figure in figures.items():
            added = "" if baseline is None or figure is baseline else f"{figure.p50 - baseline.p50:+.2f} ms"
            idle = "" if figure.idle_mb is None else f"{figure.idle_mb:.1f} MB"
            print(f"{name:<24} {figure.p50:8.2f} {figure.p99:8.2f} {figure.rate:12.0f} {idle:>10} {added:>10}", flush=True)
        print(f"where the CPU goes at {args.concurrency} concurrent:")
        for name, figure in figures.items():
            print(f"  {name:<22} {figure.cpu_line()}")
        if goals:
            print("against the targets:")
        for goal in goals:
            if (value := goal.read(figures)) is not None:
                readings.setdefault(goal, []).append(value)
                print(f"  {goal.name:<40} {goal.shown(value):>9}  ({goal.bound_text}: {'met' if goal.met(value) else 'NOT met'})")
    if args.rounds > 1 and readings:
        print(f"the targets over {args.rounds} rounds:")
        for goal, values in readings.items():
            print(f"  {goal.name:<40} met in {sum(map(goal.met, values))} of {len(values)}"
                  f" ({goal.shown(min(values))} to {goal.shown(max(values))})")


if __name__ == "__main__":
    asyncio.run(main())
