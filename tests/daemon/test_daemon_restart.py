"""The Docker daemon restarted under a running platform: servers come back, isolated again.

Run on its own (scripts/test runs this folder after everything else): stopping the daemon stops
every container on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import httpx2
import pytest

from tests.conftest import start_platform, stop_platform

pytestmark = pytest.mark.docker


def dockerd_pid() -> int:
    out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    assert out, "dockerd is not running"
    return int(out[0])


def test_servers_come_back_after_a_daemon_restart(tmp_path: Path) -> None:
    platform = start_platform(tmp_path)
    try:
        with platform.api() as api:
            assert api.post("/deployments", json={"server": "time", "slug": "survivor"}).status_code == 201
            token = api.post("/members/admin/tokens", json={"name": "daemon"}).json()["token"]
        os.kill(dockerd_pid(), signal.SIGTERM)
        deadline = time.monotonic() + 60
        while subprocess.run(["pidof", "dockerd"], capture_output=True).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        # the project's own engine start-up brings the daemon back (as scripts/test and `stockade up` do)
        subprocess.run([sys.executable, "-m", "stockade.cli", "engine"], env=platform.env, check=True, timeout=180)
        client = docker.from_env(version="auto")
        client.ping()
        deadline = time.monotonic() + 180
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = httpx2.post(f"{platform.gateway_url}/api/v1/servers/survivor/tools/get_current_time:call",
                                     headers={"Authorization": f"Bearer {token}"}, json={"timezone": "UTC"}, timeout=30)
                if answer.status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            time.sleep(1)
        assert answer is not None and answer.status_code == 200, answer.text if answer else "no answer"
        state = httpx2.get(f"{platform.control_url}/api/v1/deployments/survivor", headers=platform.admin_headers).json()
        assert state["status"] == "running" and state["restarts"] >= 1
    finally:
        with platform.api() as api:
            api.delete("/deployments/survivor")
        stop_platform(platform)
