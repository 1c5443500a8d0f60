"""Fixtures of the verify tests: the real engine, the real `time` image, a temporary installation.

Nothing skips: without an engine (that we cannot install) or the image, these tests fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from stockade.catalog import Catalog, CatalogEntry
from stockade.config import Settings
from stockade.orchestrator.engine import connect_engine
from stockade.orchestrator.images import BuiltImage, ImageBuilder
from stockade.orchestrator.runtime import Orchestrator
from tests.conftest import fresh_database_url

PROGRESS: list[str] = []


def record(message: str) -> None:
    PROGRESS.append(message)


@pytest.fixture(scope="session")
def verify_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir: Path = tmp_path_factory.mktemp("verify-data")
    # ports nobody listens on are fine: they must be unreachable from inside either way
    return Settings(data_dir=data_dir, database_url=fresh_database_url(data_dir))


@pytest.fixture(scope="session")
def engine(verify_settings: Settings) -> Iterator[docker.DockerClient]:
    client = connect_engine(verify_settings, progress=record)
    yield client
    client.close()


@pytest.fixture(scope="session")
def time_entry() -> CatalogEntry:
    return Catalog.load().get("time")


@pytest.fixture(scope="session")
def time_image(engine: docker.DockerClient, verify_settings: Settings, time_entry: CatalogEntry) -> BuiltImage:
    return ImageBuilder(engine, verify_settings, progress=record).ensure_server_image(time_entry)


@pytest.fixture(scope="session")
def orchestrator(verify_settings: Settings, engine: docker.DockerClient) -> Orchestrator:
    return Orchestrator(verify_settings, client=engine, progress=record)
