"""The backend's life: early death, missing variables, hangs, crashes, restarts, noise, a clean
environment, and a bridge that drains on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from .clients import run, sdk_client, text_of
from .conftest import FIXTURE, FIXTURE_COMMAND, PYTHON, REPO, Bridge, free_port
from .rawmcp import ACCEPT_BOTH, initialize, session_headers

SECRET = "hunter2-very-secret-value"


def test_backend_dying_early_is_reported_with_exit_code_and_redacted_stderr(bridge_factory) -> None:
    bridge: Bridge = bridge_factory([*FIXTURE_COMMAND, "--die-at-start", "3"], env={"FIXTURE_SECRET": SECRET},
                                    args=["--max-restarts", "1"])
    status = bridge.wait_status(lambda s: s.get("status") == "failed")
    assert status["exit_code"] == 3
    assert "crash loop" in status["reason"]
    assert "exited with code 3" in status["reason"]
    assert any("FIXTURE_API_KEY is not set" in line for line in status["stderr"])
    assert any("[redacted]" in line for line in status["stderr"])
    assert SECRET not in json.dumps(status)
    assert SECRET not in bridge.log()
    with bridge.client() as http:
        response = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
            headers={"accept": ACCEPT_BOTH})
        assert response.status_code == 503
        assert "exited with code 3" in response.json()["error"]["message"]
        assert http.get("/ready").status_code == 503
        assert http.get("/tools").status_code == 503
        assert httpx2.get(f"{bridge.base}/health").status_code == 200


def test_missing_required_env_is_named(bridge_factory) -> None:
    bridge: Bridge = bridge_factory(FIXTURE_COMMAND, env={"OTHER": "x"},
                                    args=["--required-env", "FIXTURE_API_KEY", "--required-env", "OTHER"])
    status = bridge.wait_status(lambda s: s.get("status") == "failed")
    assert status["missing_env"] == ["FIXTURE_API_KEY"]
    assert "FIXTURE_API_KEY" in status["reason"]


def test_handshake_timeout_is_reported(bridge_factory) -> None:
    bridge: Bridge = bridge_factory([*FIXTURE_COMMAND, "--no-answer"], args=["--ready-timeout", "1",
                                                                            "--max-restarts", "0"])
    status = bridge.wait_status(lambda s: s.get("status") == "failed")
    assert "did not answer initialize within 1 s" in status["reason"]


def test_crash_mid_call_fails_that_call_and_the_server_restarts(bridge_factory) -> None:
    bridge: Bridge = bridge_factory(FIXTURE_COMMAND)
    bridge.wait_ready()

    async def crash() -> str:
        async with sdk_client(bridge, "legacy") as client:
            try:
                result = await client.call_tool("crash", {"code": 7})
            except MCPError as exc:
                return f"error: {exc}"
            return json.dumps(result.model_dump(mode="json"))

    failure = run(crash, timeout=60)
    assert failure.startswith("error:") and "exited with code 7" in failure, failure
    bridge.wait_ready()  # restarted

    async def after() -> str:
        async with sdk_client(bridge, "auto") as client:
            return text_of(await client.call_tool("echo", {"text": "alive again"}))

    assert run(after) == "alive again"


def test_server_gets_a_clean_environment(bridge_factory) -> None:
    bridge: Bridge = bridge_factory(FIXTURE_COMMAND, env={"FIXTURE_SECRET": SECRET, "API_TOKEN": "abc123"},
                                    bridge_env={"BRIDGE_PRIVATE": "do-not-leak", "AWS_SECRET_ACCESS_KEY": "nope"})
    bridge.wait_ready()
    with bridge.client() as http:
        keys = json.loads(http.post("/tools/env_keys/call", json={}).json()["content"][0]["text"])
        home = http.post("/tools/env_value/call", json={"name": "HOME"}).json()["content"][0]["text"]
        secret = http.post("/tools/env_value/call", json={"name": "FIXTURE_SECRET"}).json()["content"][0]["text"]
    allowed = {"PATH", "HOME", "LANG", "FIXTURE_SECRET", "API_TOKEN", "PYTHONPATH", "NODE_PATH", "PYTHONUTF8",
               "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "NODE_ENV", "TZ", "LC_CTYPE"}
    assert set(keys) <= allowed, set(keys) - allowed
    assert {"PATH", "HOME", "LANG", "FIXTURE_SECRET", "API_TOKEN"} <= set(keys)
    assert "BRIDGE_PRIVATE" not in keys and "AWS_SECRET_ACCESS_KEY" not in keys
    assert home == "/tmp"
    assert secret == SECRET
    assert bridge.token not in bridge.log()


def test_noise_on_stdout_is_skipped(bridge_factory) -> None:
    bridge: Bridge = bridge_factory([*FIXTURE_COMMAND, "--noise"])
    bridge.wait_ready()
    with bridge.client() as http:
        assert http.post("/tools/echo/call", json={"text": "clean"}).json()["content"][0]["text"] == "clean"
    log = bridge.log()
    assert "skipped non-JSON-RPC output" in log
    assert "longer than" in log
    assert "invalid UTF-8" in log


def test_sigterm_drains_in_flight_calls_then_stops_the_server(bridge_factory, tmp_path: Path) -> None:
    bridge: Bridge = bridge_factory(FIXTURE_COMMAND)
    bridge.wait_ready()
    match = re.search(r"started \S+ \(pid (\d+)\)", bridge.log())
    assert match
    server_pid = int(match.group(1))
    gate = tmp_path / "gate"

    with bridge.client() as http:
        session_id = initialize(http)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "wait_for_file", "arguments": {"path": str(gate)}, "_meta": {"progressToken": "p"}}}
        messages = []
        with http.stream("POST", "/mcp", json=body, headers=session_headers(session_id)) as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                messages.append(json.loads(line[5:]))
                if len(messages) == 1:  # the call is in flight: stop the bridge now
                    bridge.process.send_signal(signal.SIGTERM)
                    # the listener closes first (no new connections), in-flight calls go on
                    for _ in range(600):
                        try:
                            httpx2.get(f"{bridge.base}/health", timeout=1)
                        except httpx2.TransportError:
                            break
                        time.sleep(0.05)
                    else:
                        raise AssertionError("the bridge kept accepting connections after SIGTERM")
                    gate.write_text("go")
    assert messages[0]["method"] == "notifications/progress"
    assert messages[-1]["id"] == 1
    assert messages[-1]["result"]["content"][0]["text"] == f"found {gate}"
    assert bridge.process.wait(timeout=60) == 0
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(server_pid, 0)
            time.sleep(0.05)


def test_refuses_no_auth_on_a_public_address() -> None:
    result = subprocess.run(check=False, args=[PYTHON, "-m", "stockade.bridge", "--host", "0.0.0.0", "--port", str(free_port()),
                             "--no-auth-loopback", "--", *FIXTURE_COMMAND],
                            capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert result.returncode == 2
    assert "--no-auth-loopback refuses to listen on 0.0.0.0" in result.stderr


def test_bad_bootstrap_and_missing_command_are_refused() -> None:
    base = [PYTHON, "-m", "stockade.bridge", "--port", str(free_port())]
    no_command = subprocess.run(check=False, args=[*base, "--token-env", "X"], capture_output=True, text=True, timeout=60)
    assert no_command.returncode == 2 and "no server command" in no_command.stderr
    bad = subprocess.run(check=False, args=[*base, "--bootstrap-stdin", "--", sys.executable, str(FIXTURE)], input="not json\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "bootstrap is not JSON" in bad.stderr
    no_token = subprocess.run(check=False, args=[*base, "--bootstrap-stdin", "--", sys.executable, str(FIXTURE)],
                              input='{"env": {}}\n', capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and "no token" in no_token.stderr
