"""Stateless gateways: one control plane and two gateway processes sharing one database.

On PostgreSQL (STOCKADE_TEST_DATABASE=postgresql) rate limits are shared by the gateways; on
SQLite each gateway process keeps its own buckets (a single machine runs one gateway).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx2
import pytest

from tests.conftest import (
    TEST_DATABASE,
    RunningPlatform,
    _wait_healthy,
    free_port,
    remove_deployments,
    start_platform,
    stop_platform,
)

pytestmark = pytest.mark.docker


@pytest.fixture()
def fleet(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[tuple[RunningPlatform, list[str]]]:
    control = start_platform(tmp_path, STOCKADE_RATE_LIMIT_PER_MINUTE="1", STOCKADE_RATE_LIMIT_BURST="6")
    gateways, processes = [], []
    try:
        for n in range(2):
            port = free_port()
            env = dict(control.env, STOCKADE_GATEWAY_PORT=str(port))
            log = tmp_path / f"gateway-{n}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([sys.executable, "-m", "stockade.cli", "gateway"], env=env, stdout=out,
                                           stderr=subprocess.STDOUT)
            processes.append(process)
            _wait_healthy(f"http://127.0.0.1:{port}", process, log)
            gateways.append(f"http://127.0.0.1:{port}")
        yield control, gateways
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        remove_deployments(control)
        stop_platform(control)


def tools(gateway: str, token: str) -> int:
    return httpx2.get(f"{gateway}/api/v1/tools", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code


def test_two_gateways_share_revocation_and_limits(fleet: tuple[RunningPlatform, list[str]]) -> None:
    control, gateways = fleet
    with control.api() as api:
        assert api.post("/deployments", json={"server": "time", "slug": "shared"}).status_code == 201
        api.post("/members", json={"name": "roamer", "role": "member"})
        minted = api.post("/members/roamer/tokens", json={}).json()
    token = minted["token"]
    call = {"timezone": "UTC"}
    for gateway in gateways:  # a server deployed through the control plane is found by every gateway
        answer = httpx2.post(f"{gateway}/api/v1/servers/shared/tools/get_current_time:call",
                             headers={"Authorization": f"Bearer {token}"}, json=call, timeout=30)
        assert answer.status_code == 200, answer.text
    # burst 6 in all, 2 already spent above
    statuses = [tools(gateways[i % 2], token) for i in range(6)]
    if TEST_DATABASE == "postgresql":
        assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429]
    else:
        assert statuses == [200] * 6  # each process has its own bucket: 3 of its 6 spent
    with control.api() as api:
        assert api.delete(f"/tokens/{minted['id']}").status_code == 200
    # the very next request through any gateway is refused
    assert [tools(gateway, token) for gateway in gateways] == [401, 401]


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    platform = start_platform(tmp_path, STOCKADE_RATE_LIMIT_PER_MINUTE="6", STOCKADE_RATE_LIMIT_BURST="3")
    try:
        with platform.api() as api:
            api.post("/members", json={"name": "eager", "role": "member"})
            token = api.post("/members/eager/tokens", json={}).json()["token"]
        responses = [httpx2.get(f"{platform.gateway_url}/api/v1/tools", headers={"Authorization": f"Bearer {token}"})
                     for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert int(responses[-1].headers["retry-after"]) >= 1
        assert responses[-1].json()["error"] == "rate_limited"
        with platform.api() as api:  # another member has a bucket of its own
            api.post("/members", json={"name": "patient", "role": "member"})
            other = api.post("/members/patient/tokens", json={}).json()["token"]
        assert tools(platform.gateway_url, other) == 200
    finally:
        stop_platform(platform)
