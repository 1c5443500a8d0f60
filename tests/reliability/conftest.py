"""A platform with the probe server in its catalog (built from the time server's image recipe)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import RunningPlatform, remove_deployments, start_platform, stop_platform

PROBE_SOURCE = (Path(__file__).parent / "probe_server.py").read_text()


def catalog_yaml() -> str:
    return "version: 1\nservers:\n" + "".join(
        f"  - {json.dumps(entry)}\n" for entry in (
            {"name": "time", "build": {"pypi": "mcp-server-time==2026.10.19"}, "command": ["mcp-server-time"]},
            {"name": "probe", "build": {"pypi": "mcp-server-time==2026.10.19"}, "resources": "small",
             "command": ["python3", "-c", PROBE_SOURCE]},
        ))


@pytest.fixture(scope="module")
def reliable(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[RunningPlatform]:
    data_dir = tmp_path_factory.mktemp("reliability")
    (data_dir / "catalog.yaml").write_text(catalog_yaml())
    platform = start_platform(data_dir, STOCKADE_CATALOG_FILE=str(data_dir / "catalog.yaml"),
                              STOCKADE_RATE_LIMIT_PER_MINUTE="600000", STOCKADE_RATE_LIMIT_BURST="10000")
    try:
        yield platform
    finally:
        remove_deployments(platform)
        stop_platform(platform)
