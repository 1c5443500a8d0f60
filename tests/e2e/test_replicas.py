"""Replicas on the real engine: N hardened instances behind the gateway, routed by health, each
restarted on its own, adopted after a control-plane restart, scaled down and removed cleanly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx2
import pytest

from stockade.orchestrator import firewall
from stockade.orchestrator.spec import owner_id, unit_name
from tests.conftest import RunningPlatform, cleaned_up, stop_platform, wait_for
from tests.e2e.probe_platform import (
    call,
    containers,
    deploy,
    networks,
    start_probe_platform,
    status,
    whoami,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[RunningPlatform]:
    with cleaned_up(start_probe_platform(tmp_path_factory.mktemp("replicas"))) as platform:
        yield platform


def session_calls(platform: RunningPlatform, token: str, slug: str, count: int) -> tuple[str, set[str]]:
    """A legacy (2025-11-25) MCP session on the server's own endpoint: its id and who answered its calls."""
    url = f"{platform.gateway_url}/servers/{slug}/mcp"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}
    with httpx2.Client(headers=headers, timeout=60) as http:
        init = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert init.status_code == 200, init.text
        session = init.headers["mcp-session-id"]
        answered = set()
        for i in range(count):
            response = http.post(url, headers={"Mcp-Session-Id": session, "Accept": "application/json"},
                                 json={"jsonrpc": "2.0", "id": 2 + i, "method": "tools/call",
                                       "params": {"name": "whoami", "arguments": {}}})
            assert response.status_code == 200, response.text
            answered.add(json.loads(response.json()["result"]["content"][0]["text"])["instance"])
    return session, answered


def test_replicas_share_the_calls_and_survive_a_killed_one(probed: RunningPlatform, docker_client: docker.DockerClient) -> None:
    token = deploy(probed, "twins", "replica-key", replicas=2)
    deployed = status(probed, "twins")
    assert deployed["replicas"] == 2 and deployed["status"] == "running"
    assert [(i["number"], i["status"]) for i in deployed["instances"]] == [(0, "running"), (1, "running")]

    # Each replica is its own hardened container on its own network.
    found = {c.labels["io.stockade.replica"]: c for c in containers(docker_client, probed, "twins")}
    assert set(found) == {"0", "1"}
    assert len({tuple(c.attrs["NetworkSettings"]["Networks"]) for c in found.values()}) == 2
    for container in found.values():
        assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"] and container.attrs["HostConfig"]["ReadonlyRootfs"]
        assert firewall.rules_for(f"{owner_id(probed.data_dir)}-{unit_name('twins', int(container.labels['io.stockade.replica']))}")

    with httpx2.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        answered = [whoami(http, probed, "twins")["instance"] for _ in range(20)]
        assert len(set(answered)) == 2, answered  # round-robin over both replicas

        # A legacy session stays on the replica that created it.
        session, session_answers = session_calls(probed, token, "twins", 6)
        assert len(session_answers) == 1 and session.split(".")[0] in {"0", "1"}
        stale = http.post(f"{probed.gateway_url}/servers/twins/mcp", headers={
            "Mcp-Session-Id": "7." + session.split(".", 1)[1], "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"},
            json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
        assert stale.status_code == 404  # no such replica: the client starts a new session

        # Kill one replica: calls keep succeeding on the other, the supervisor restarts it.
        found["1"].kill()
        after_kill = [call(http, probed, "twins", "whoami") for _ in range(20)]
        assert [r.status_code for r in after_kill] == [200] * 20
        restarted = wait_for(lambda: (d := status(probed, "twins"))["status"] == "running"
                             and [(i["number"], i["status"], i["restarts"] >= 1) for i in d["instances"]]
                             == [(0, "running", False), (1, "running", True)] and d,
                             "the supervisor to restart the killed replica")
        assert "exited with code 137" in restarted["instances"][1]["last_exit"]
        assert restarted["restarts"] >= 1 and restarted["instances"][0]["restarts"] == 0
        answered = [whoami(http, probed, "twins")["instance"] for _ in range(20)]
        assert len(set(answered)) == 2, answered
    cli = probed.cli("status", "twins")
    assert "Instances of twins" in cli.stdout and "137" in cli.stdout


def test_adopted_after_restart_scaled_down_and_removed_without_leftovers(
    tmp_path: Path, docker_client: docker.DockerClient,
) -> None:
    platform = start_probe_platform(tmp_path)
    try:
        token = deploy(platform, "trio", "replica-key", replicas=3)
        before = sorted(c.id for c in containers(docker_client, platform, "trio"))
        assert len(before) == 3
        stop_platform(platform)
        platform = start_probe_platform(tmp_path)
        adopted = wait_for(lambda: (d := status(platform, "trio"))["status"] == "running"
                           and [i["status"] for i in d["instances"]] == ["running"] * 3 and d, "adoption")
        assert sorted(c.id for c in containers(docker_client, platform, "trio")) == before
        assert adopted["restarts"] == 0

        scaled = json.loads(platform.cli("scale", "trio", "1", "--json").stdout)
        assert scaled["replicas"] == 1 and [i["number"] for i in scaled["instances"]] == [0]
        assert [c.labels["io.stockade.replica"] for c in containers(docker_client, platform, "trio")] == ["0"]
        assert len(networks(docker_client, platform, "trio")) == 1
        with httpx2.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            assert len({whoami(http, platform, "trio")["instance"] for _ in range(6)}) == 1

        scaled = json.loads(platform.cli("scale", "trio", "2", "--json").stdout)
        assert [(i["number"], i["status"]) for i in scaled["instances"]] == [(0, "running"), (1, "running")]
        assert len(containers(docker_client, platform, "trio")) == 2
        refused = platform.cli("scale", "trio", "0", check=False)
        assert refused.returncode != 0
    finally:
        with platform.api() as api:
            api.delete("/deployments/trio")
        stop_platform(platform)
    assert containers(docker_client, platform, "trio") == []
    assert networks(docker_client, platform, "trio") == []
    for number in range(3):
        assert not firewall.rules_for(f"{owner_id(platform.data_dir)}-{unit_name('trio', number)}")
