"""Fixtures shared by the whole suite: a real platform process on loopback, on the real engine.

Nothing here skips: if the Docker engine or an image cannot be had, the tests that need them fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx2
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningPlatform:
    data_dir: Path
    gateway_url: str
    control_url: str
    admin_token: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def api(self) -> httpx2.Client:
        return httpx2.Client(base_url=f"{self.control_url}/api/v1", headers=self.admin_headers, timeout=300)

    def cli(self, *args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, STOCKADE_TOKEN=token if token is not None else self.admin_token)
        result = subprocess.run([sys.executable, "-m", "stockade.cli", *args], env=env, capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"stockade {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"platform exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"platform did not answer on {url} within {timeout} s:\n{log_path.read_text()}")


def start_platform(data_dir: Path, **extra_env: str) -> RunningPlatform:
    gateway_port, control_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
        "STOCKADE_DATA_DIR": str(data_dir),
        "STOCKADE_GATEWAY_PORT": str(gateway_port),
        "STOCKADE_CONTROL_PORT": str(control_port),
        "STOCKADE_LOG_LEVEL": "warning",
        **extra_env,
    }
    admin = subprocess.run([sys.executable, "-m", "stockade.cli", "admin-token", "--name", "tests"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert admin.returncode == 0, admin.stderr
    log_path = data_dir / "platform.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "stockade.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    platform = RunningPlatform(
        data_dir=data_dir,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        control_url=f"http://127.0.0.1:{control_port}",
        admin_token=admin.stdout.strip(),
        env=env,
        process=process,
        log_path=log_path,
    )
    _wait_healthy(platform.gateway_url, process, log_path)
    _wait_healthy(platform.control_url, process, log_path)
    return platform


def stop_platform(platform: RunningPlatform) -> None:
    if platform.process.poll() is None:
        platform.process.send_signal(signal.SIGTERM)
        try:
            platform.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            platform.process.kill()
            platform.process.wait()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env(version="auto")
    client.ping()  # fails the tests (never skips) when the engine is not running
    yield client
    client.close()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[RunningPlatform]:
    running = start_platform(tmp_path_factory.mktemp("platform"))
    try:
        yield running
    finally:
        with running.api() as api:
            for deployment in api.get("/deployments").json():
                api.delete(f"/deployments/{deployment['slug']}")
        stop_platform(running)
