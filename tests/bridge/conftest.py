"""Fixtures for the bridge tests: the bridge as a real subprocess on a free loopback port, in front
of real stdio MCP servers (the SDK fixture in tests/fixtures, mcp-server-time, server-everything)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "fixture_server.py"
PYTHON = sys.executable
EVERYTHING_VERSION = "2026.8.31"
CACHE = Path(os.environ.get("STOCKADE_TEST_CACHE", Path.home() / ".cache" / "stockade-tests"))

FIXTURE_COMMAND = [PYTHON, str(FIXTURE)]
TIME_COMMAND = [PYTHON, "-m", "mcp_server_time", "--local-timezone", "UTC"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Bridge:
    process: subprocess.Popen[bytes]
    port: int
    token: str | None
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: object) -> httpx2.Client:
        return httpx2.Client(base_url=self.base, headers=self.headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=self.headers, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        with self.client() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"bridge exited with {self.process.returncode}:\n{self.log()}")
                try:
                    response = http.get("/ready", timeout=2)
                    last = response.json()
                    if response.status_code == 200:
                        return last
                except httpx2.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"bridge not ready within {timeout} s: {last}\n{self.log()}")

    def wait_status(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        with self.client() as http:
            while time.monotonic() < deadline:
                try:
                    last = http.get("/ready", timeout=2).json()
                    if predicate(last):
                        return last
                except httpx2.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"status never matched: {last}\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        return self.process.returncode


def start_bridge(
    tmp: Path,
    command: list[str],
    *,
    token: str | None = "test-token-0123456789",
    env: dict[str, str] | None = None,
    bridge_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    mode: str = "bootstrap",
    wait_healthy: bool = True,
) -> Bridge:
    port = free_port()
    log_path = tmp / f"bridge-{port}.log"
    own_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    own_env.update(bridge_env or {})
    argv = [PYTHON, "-m", "stockade.bridge", "--host", "127.0.0.1", "--port", str(port), "--log-level", "debug",
            "--ready-timeout", "60", *(args or [])]
    if mode == "bootstrap":
        argv.append("--bootstrap-stdin")
    elif mode == "token-env":
        own_env["BRIDGE_TEST_TOKEN"] = token or ""
        argv += ["--token-env", "BRIDGE_TEST_TOKEN"]
    elif mode == "no-auth":
        argv.append("--no-auth-loopback")
        token = None
    argv += ["--", *command]
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=own_env,
                                   cwd=str(REPO))
    assert process.stdin is not None
    if mode == "bootstrap":
        process.stdin.write(json.dumps({"token": token, "env": env or {}}).encode() + b"\n")
        process.stdin.flush()  # stdin stays open, as it does under `docker attach`
    bridge = Bridge(process, port, token, log_path)
    if wait_healthy:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"bridge exited with {process.returncode}:\n{bridge.log()}")
            try:
                if httpx2.get(f"{bridge.base}/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"bridge did not answer /health:\n{bridge.log()}")
    return bridge


@pytest.fixture()
def bridge_factory(tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    started: list[Bridge] = []

    def factory(command: list[str], **kwargs: object) -> Bridge:
        bridge = start_bridge(tmp_path, command, **kwargs)  # type: ignore[arg-type]
        started.append(bridge)
        return bridge

    yield factory
    for bridge in started:
        bridge.stop()


@pytest.fixture(scope="module")
def fixture_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """One bridge in front of the SDK fixture server, shared by a module's tests."""
    bridge = start_bridge(tmp_path_factory.mktemp("bridge"), FIXTURE_COMMAND,
                          env={"FIXTURE_SECRET": "hunter2-secret"})
    bridge.wait_ready()
    yield bridge
    bridge.stop()


def npm_install(name: str, spec: str, executable: str) -> Path:
    """`spec` npm-installed once into CACHE/`name`; the path of its `node_modules/.bin/executable`.

    Installed into a staging directory renamed into place, so an interrupted install is never used.
    Fails (never skips) when npm or the registry is not there: these tests are part of the suite."""
    path = CACHE / name / "node_modules" / ".bin" / executable
    if path.exists():
        return path
    npm = shutil.which("npm")
    assert npm, f"npm is needed to install {spec} (scripts/bootstrap installs it)"
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(staging), spec],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"npm install {spec} failed:\n{result.stderr[-3000:]}"
    try:
        staging.rename(CACHE / name)
    except OSError:  # another run got there first
        shutil.rmtree(staging, ignore_errors=True)
    assert path.exists(), f"npm install {spec} did not provide {executable}"
    return path


@pytest.fixture(scope="session")
def everything_command() -> list[str]:
    """`@modelcontextprotocol/server-everything`, npm-installed once into a cache directory."""
    executable = npm_install(f"server-everything-{EVERYTHING_VERSION}",
                             f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}", "mcp-server-everything")
    return [str(executable), "stdio"]
