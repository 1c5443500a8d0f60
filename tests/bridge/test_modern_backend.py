"""A 2026-07-28-only stdio backend (answers `server/discover`, refuses `initialize`) behind the
bridge: clients of both eras are served; what cannot be translated fails as the README says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import run, sdk_client, text_of
from .conftest import FIXTURE_COMMAND, Bridge, start_bridge
from .rawmcp import ACCEPT_BOTH, initialize, messages_of, modern_headers, modern_request, session_headers

MODERN_ONLY = [*FIXTURE_COMMAND, "--modern-only"]


@pytest.fixture(scope="module")
def modern_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    bridge = start_bridge(tmp_path_factory.mktemp("modern"), MODERN_ONLY)
    bridge.wait_ready()
    yield bridge
    bridge.stop()


def test_backend_is_initialized_with_server_discover(modern_bridge: Bridge) -> None:
    status = modern_bridge.wait_ready()
    assert status["protocol"] == "2026-07-28"
    assert status["server"] == {"name": "stockade-fixture", "version": "1.0.0"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_clients_of_both_eras(modern_bridge: Bridge, mode: str) -> None:
    async def scenario() -> None:
        async with sdk_client(modern_bridge, mode) as client:
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            assert client.server_info is not None and client.server_info.name == "stockade-fixture"
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"echo", "progress", "ask_colour"} <= names
            assert text_of(await client.call_tool("echo", {"text": "héllo ✓"})) == "héllo ✓"
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            assert text_of(await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)) == "done 3"
            assert seen == [1, 2, 3]
            prompt = await client.get_prompt("greet", {"name": "Ada"})
            assert "Ada" in str(prompt.messages[0].content)
            resource = await client.read_resource("fixture://greeting")
            assert "hello from the fixture" in str(resource.contents[0])

    run(scenario)


def test_modern_client_input_required_passes_through(modern_bridge: Bridge) -> None:
    """The backend's own InputRequiredResult reaches the client; its retry reaches the backend."""
    async def scenario() -> str:
        async with sdk_client(modern_bridge, "auto") as client:
            return text_of(await client.call_tool("ask_colour", {}))

    assert run(scenario) == "colour: blue"


def test_legacy_initialize_is_answered_from_discover(modern_bridge: Bridge) -> None:
    with modern_bridge.client() as http:
        answer = http.post("/mcp", json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}},
            headers={"accept": ACCEPT_BOTH}).json()["result"]
        assert answer["protocolVersion"] == "2025-06-18"
        assert answer["serverInfo"] == {"name": "stockade-fixture", "version": "1.0.0"}
        assert "tools" in answer["capabilities"]
        discover = http.post("/mcp", json=modern_request(2, "server/discover"),
                             headers=modern_headers("server/discover")).json()["result"]
        assert discover["supportedVersions"] == ["2026-07-28"]


def test_legacy_client_cannot_answer_input_required(modern_bridge: Bridge) -> None:
    """Not translated (README): a legacy client gets the backend's InputRequiredResult as is."""
    with modern_bridge.client() as http:
        session = initialize(http, capabilities={"elicitation": {}})
        response = http.post("/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                           "params": {"name": "ask_colour", "arguments": {}}},
                             headers=session_headers(session))
        result = messages_of(response)[-1]["result"]
        assert result["resultType"] == "input_required"
        assert [request["method"] for request in result["inputRequests"].values()] == ["elicitation/create"]


def test_backend_server_requests_fail_as_errors_not_hangs(modern_bridge: Bridge) -> None:
    """A 2026-07-28 backend has no server-to-client requests: a tool that tries one fails at once."""
    with modern_bridge.client() as http:
        session = initialize(http, capabilities={"sampling": {}})
        response = http.post("/mcp", json={"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                                           "params": {"name": "sample", "arguments": {"prompt": "x"}}},
                             headers=session_headers(session))
        answer = messages_of(response)[-1]
        assert "back-channel" in str(answer.get("error") or answer.get("result")), answer


def test_a_restarted_modern_backend_is_rediscovered(tmp_path: Path) -> None:
    bridge = start_bridge(tmp_path, MODERN_ONLY)
    try:
        bridge.wait_ready()
        with bridge.client() as http:
            http.post("/mcp", json=modern_request(1, "tools/call", {"name": "crash", "arguments": {"code": 3}}),
                      headers=modern_headers("tools/call", "crash"))
        status = bridge.wait_status(lambda s: s.get("status") == "ready" and s.get("restarts") == 1)
        assert status["protocol"] == "2026-07-28"
    finally:
        bridge.stop()
