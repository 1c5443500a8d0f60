"""Many clients, one backend: answers, progress, notifications and server-to-client requests
reach exactly the client they belong to, however the clients' ids collide."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import mcp_types as types

from .clients import run, sdk_client, text_of
from .conftest import Bridge
from .rawmcp import initialize, messages_of, modern_headers, modern_request, session_headers


def test_concurrent_sessions_with_colliding_ids_never_cross(fixture_bridge: Bridge) -> None:
    """Ten SDK clients (both eras; each numbers its requests from the same start) call concurrently."""

    async def one_client(index: int, mode: str, failures: list[str]) -> None:
        seen_tokens: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen_tokens.append(progress)

        async with sdk_client(fixture_bridge, mode) as client:
            async def call(j: int) -> None:
                text = f"client-{index}-call-{j}"
                result = await client.call_tool("echo", {"text": text})
                if text_of(result) != text:
                    failures.append(f"{text} got {text_of(result)}")

            async with anyio.create_task_group() as tg:
                for j in range(8):
                    tg.start_soon(call, j)
            steps = 3 + index
            result = await client.call_tool("progress", {"steps": steps}, progress_callback=on_progress)
            if text_of(result) != f"done {steps}" or seen_tokens != list(range(1, steps + 1)):
                failures.append(f"client {index}: progress {seen_tokens} / {text_of(result)}")

    async def scenario() -> list[str]:
        failures: list[str] = []
        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(one_client, index, "legacy" if index % 2 else "auto", failures)
        return failures

    assert run(scenario) == []


def test_same_request_id_in_two_sessions_answered_in_reverse_order(fixture_bridge: Bridge, tmp_path: Path) -> None:
    """Both sessions use id 1; the second one's call finishes first; each gets its own answer."""
    gate_a, gate_b = tmp_path / "a", tmp_path / "b"
    results: dict[str, dict] = {}
    with fixture_bridge.client() as http:
        session_a, session_b = initialize(http), initialize(http)

    started = {"a": threading.Event(), "b": threading.Event()}

    def post(session_id: str, gate: Path, key: str) -> None:
        with fixture_bridge.client() as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "wait_for_file", "arguments": {"path": str(gate)}, "_meta": {"progressToken": 1}}}
            messages = []
            with http.stream("POST", "/mcp", json=body, headers=session_headers(session_id)) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        messages.append(json.loads(line[5:]))
                        started[key].set()
            results[key] = {"messages": messages}

    threads = [threading.Thread(target=post, args=(session_a, gate_a, "a")),
               threading.Thread(target=post, args=(session_b, gate_b, "b"))]
    for thread in threads:
        thread.start()
    # Both are in flight at the backend once each has received its "started" progress.
    assert started["a"].wait(60) and started["b"].wait(60)
    gate_b.write_text("go")
    threads[1].join(timeout=60)
    assert "b" in results and "a" not in results
    gate_a.write_text("go")
    threads[0].join(timeout=60)
    for key, gate in (("a", gate_a), ("b", gate_b)):
        messages = results[key]["messages"]
        final = messages[-1]
        assert final["id"] == 1
        assert final["result"]["content"][0]["text"] == f"found {gate}"
        for message in messages[:-1]:
            assert message["method"] == "notifications/progress"
            assert message["params"]["progressToken"] == 1


def test_server_requests_and_notifications_reach_the_right_session(fixture_bridge: Bridge) -> None:
    calls: dict[str, list[str]] = {"a-sampling": [], "b-sampling": [], "a-log": [], "b-log": []}

    def sampler(name: str):
        async def callback(ctx, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            calls[f"{name}-sampling"].append(getattr(params.messages[0].content, "text", ""))
            return types.CreateMessageResult(role="assistant", model="m",
                                             content=types.TextContent(type="text", text=f"from {name}"))
        return callback

    def logger(name: str):
        async def callback(params: types.LoggingMessageNotificationParams) -> None:
            calls[f"{name}-log"].append(str(params.data))
        return callback

    async def scenario() -> None:
        async with sdk_client(fixture_bridge, "legacy", sampling_callback=sampler("a"), logging_callback=logger("a")) as a, \
                sdk_client(fixture_bridge, "legacy", sampling_callback=sampler("b"), logging_callback=logger("b")) as b:
            assert text_of(await a.call_tool("sample", {"prompt": "for a"})) == "model said: from a"
            assert text_of(await b.call_tool("sample", {"prompt": "for b"})) == "model said: from b"
            assert text_of(await a.call_tool("log", {"message": "log for a"})) == "logged"
            assert text_of(await b.call_tool("log", {"message": "log for b"})) == "logged"
            await anyio.lowlevel.checkpoint()  # notifications are delivered before the answer on the same stream

    run(scenario)
    assert calls["a-sampling"] == ["for a"] and calls["b-sampling"] == ["for b"]
    assert calls["a-log"] == ["log for a"] and calls["b-log"] == ["log for b"]


def test_modern_client_gets_input_required_and_continues_the_same_call(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        capabilities = {"elicitation": {"form": {}}}
        body = modern_request(1, "tools/call", {"name": "elicit", "arguments": {"question": "colour?"},
                                                "_meta": {"io.modelcontextprotocol/clientCapabilities": capabilities}})
        first = messages_of(http.post("/mcp", json=body, headers=modern_headers("tools/call", "elicit")))[-1]
        result = first["result"]
        assert result["resultType"] == "input_required"
        (key, request), = result["inputRequests"].items()
        assert request["method"] == "elicitation/create"
        assert request["params"]["message"] == "colour?"
        retry = modern_request(2, "tools/call", {
            "name": "elicit", "arguments": {"question": "colour?"},
            "inputResponses": {key: {"action": "accept", "content": {"answer": "green"}}},
            "requestState": result["requestState"],
            "_meta": {"io.modelcontextprotocol/clientCapabilities": capabilities}})
        final = messages_of(http.post("/mcp", json=retry, headers=modern_headers("tools/call", "elicit")))[-1]
        assert final["id"] == 2
        assert final["result"]["content"][0]["text"] == "user said: green"
        again = http.post("/mcp", json=dict(retry, id=3), headers=modern_headers("tools/call", "elicit"))
        assert again.status_code == 400  # the requestState was used up
        assert "requestState" in again.json()["error"]["message"]


def test_modern_client_without_the_capability_gets_missing_capability_error(fixture_bridge: Bridge) -> None:
    """2026-07-28: the backend's request for a capability the client did not declare fails the
    client's call with -32021 (HTTP 400) naming it; declared, the same call asks for the input."""
    with fixture_bridge.client() as http:
        body = modern_request(1, "tools/call", {"name": "sample", "arguments": {"prompt": "x"}})
        response = http.post("/mcp", json=body, headers=modern_headers("tools/call", "sample"))
        assert response.status_code == 400, response.text
        answer = response.json()
        assert answer["id"] == 1
        assert answer["error"]["code"] == -32021
        assert answer["error"]["data"] == {"requiredCapabilities": {"sampling": {}}}

        declared = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
        body = modern_request(2, "tools/call", {"name": "sample", "arguments": {"prompt": "x"}, "_meta": declared})
        result = messages_of(http.post("/mcp", json=body, headers=modern_headers("tools/call", "sample")))[-1]["result"]
        (key, request), = result["inputRequests"].items()
        assert request["method"] == "sampling/createMessage"
        retry = modern_request(3, "tools/call", {
            "name": "sample", "arguments": {"prompt": "x"}, "_meta": declared, "requestState": result["requestState"],
            "inputResponses": {key: {"role": "assistant", "model": "m", "content": {"type": "text", "text": "hi"}}}})
        final = messages_of(http.post("/mcp", json=retry, headers=modern_headers("tools/call", "sample")))[-1]
        assert final["result"]["content"][0]["text"] == "model said: hi"


def test_concurrent_server_requests_come_back_in_one_input_required_result(fixture_bridge: Bridge) -> None:
    """A legacy backend asking three things at once (one call): one InputRequiredResult with all three."""
    everything = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "elicitation": {}, "roots": {}}}
    params = {"name": "test_input_required_result_multiple_inputs", "arguments": {}, "_meta": everything}
    headers = modern_headers("tools/call", "test_input_required_result_multiple_inputs")
    with fixture_bridge.client() as http:
        first = messages_of(http.post("/mcp", json=modern_request(1, "tools/call", params), headers=headers))[-1]
        requests = first["result"]["inputRequests"]
        assert sorted(request["method"] for request in requests.values()) == [
            "elicitation/create", "roots/list", "sampling/createMessage"]
        answers = {"elicitation/create": {"action": "accept", "content": {"name": "Ada"}},
                   "roots/list": {"roots": [{"uri": "file:///a"}, {"uri": "file:///b"}]},
                   "sampling/createMessage": {"role": "assistant", "model": "m", "content": {"type": "text", "text": "hi"}}}
        retry = modern_request(2, "tools/call", dict(params, requestState=first["result"]["requestState"], inputResponses={
            key: answers[request["method"]] for key, request in requests.items()}))
        final = messages_of(http.post("/mcp", json=retry, headers=headers))[-1]
        assert final["result"]["content"][0]["text"] == "name=Ada roots=2"


def test_a_parked_call_does_not_take_other_clients_requests(fixture_bridge: Bridge) -> None:
    """A call parked on an InputRequiredResult is blocked on its answers: while it waits, another
    client's sampling request is attributed to that client, not refused as ambiguous."""
    declared = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
    with fixture_bridge.client() as http:
        body = modern_request(1, "tools/call", {"name": "elicit", "arguments": {"question": "q"}, "_meta": declared})
        parked = messages_of(http.post("/mcp", json=body, headers=modern_headers("tools/call", "elicit")))[-1]
        assert parked["result"]["resultType"] == "input_required"

        async def other_client() -> str:
            async with sdk_client(fixture_bridge, "legacy") as client:
                return text_of(await client.call_tool("sample", {"prompt": "mine"}))

        assert run(other_client) == "model said: echo:mine"
        (key, _), = parked["result"]["inputRequests"].items()
        retry = modern_request(2, "tools/call", {
            "name": "elicit", "arguments": {"question": "q"}, "_meta": declared,
            "requestState": parked["result"]["requestState"],
            "inputResponses": {key: {"action": "accept", "content": {"answer": "late"}}}})
        final = messages_of(http.post("/mcp", json=retry, headers=modern_headers("tools/call", "elicit")))[-1]
        assert final["result"]["content"][0]["text"] == "user said: late"
