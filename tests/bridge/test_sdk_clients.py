"""The official `mcp` SDK client through the bridge, both eras, against three real servers."""

from __future__ import annotations

import json

import pytest

from .clients import run, sdk_client, text_of
from .conftest import FIXTURE_COMMAND, TIME_COMMAND, Bridge

MODES = ["legacy", "auto"]


@pytest.mark.parametrize("mode", MODES)
def test_fixture_tools_progress_sampling_elicitation_roots(fixture_bridge: Bridge, mode: str) -> None:
    async def scenario() -> None:
        async with sdk_client(fixture_bridge, mode) as client:
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            assert client.server_info is not None and client.server_info.name == "stockade-fixture"
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"echo", "progress", "sample", "elicit", "slow", "crash"} <= names
            assert text_of(await client.call_tool("echo", {"text": "héllo ✓"})) == "héllo ✓"

            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            result = await client.call_tool("progress", {"steps": 4}, progress_callback=on_progress)
            assert text_of(result) == "done 4"
            assert seen == [1, 2, 3, 4]
            assert text_of(await client.call_tool("sample", {"prompt": "ping"})) == "model said: echo:ping"
            assert text_of(await client.call_tool("elicit", {"question": "colour?"})) == "user said: blue"
            assert json.loads(text_of(await client.call_tool("roots", {}))) == ["file:///tmp/root-a"]
            prompt = await client.get_prompt("greet", {"name": "Ada"})
            assert "Ada" in str(prompt.messages[0].content)
            resource = await client.read_resource("fixture://greeting")
            assert "hello from the fixture" in str(resource.contents[0])

    run(scenario)


@pytest.mark.parametrize("mode", MODES)
def test_server_time_both_eras(bridge_factory, mode: str) -> None:
    bridge: Bridge = bridge_factory(TIME_COMMAND)
    status = bridge.wait_ready()
    assert status["protocol"] in ("2025-11-25", "2025-06-18", "2025-03-26")

    async def scenario() -> None:
        async with sdk_client(bridge, mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "get_current_time" in names
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert "UTC" in text_of(result)
            converted = await client.call_tool("convert_time", {
                "source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"})
            assert "Europe/Paris" in text_of(converted)

    run(scenario)


@pytest.mark.parametrize("mode", MODES)
def test_server_everything_both_eras(bridge_factory, everything_command: list[str], mode: str) -> None:
    bridge: Bridge = bridge_factory(everything_command)
    bridge.wait_ready()

    async def scenario() -> None:
        async with sdk_client(bridge, mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "echo" in names
            echoed = await client.call_tool("echo", {"message": "through the bridge"})
            assert "through the bridge" in text_of(echoed)
            prompts = await client.list_prompts()
            assert prompts.prompts
            resources = await client.list_resources()
            assert resources.resources
            first = resources.resources[0]
            read = await client.read_resource(str(first.uri))
            assert read.contents

    run(scenario)


def test_no_auth_loopback_mode(bridge_factory) -> None:
    bridge: Bridge = bridge_factory(FIXTURE_COMMAND, mode="no-auth")
    bridge.wait_ready()

    async def scenario() -> None:
        async with sdk_client(bridge, "auto") as client:
            assert text_of(await client.call_tool("echo", {"text": "open"})) == "open"

    run(scenario)


def test_sdk_listen_receives_list_changed(fixture_bridge: Bridge) -> None:
    import anyio

    async def scenario() -> str:
        async with sdk_client(fixture_bridge, "auto") as listener, sdk_client(fixture_bridge, "auto") as other, \
                listener.listen(tools_list_changed=True) as subscription:
            assert subscription.honored.tools_list_changed is True
            await other.call_tool("change_tools", {})
            with anyio.fail_after(30):
                async for event in subscription:
                    return type(event).__name__
        return "no event"

    assert run(scenario) == "ToolsListChanged"
