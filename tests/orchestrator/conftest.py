"""Fixtures of the orchestrator tests: the real engine, images built once per run (cached).

Nothing skips: without an engine (that we cannot install) or without the images, tests fail.
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

PROGRESS: list[str] = []


def record(message: str) -> None:
    PROGRESS.append(message)


@pytest.fixture(scope="session")
def orch_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The cache (base rootfs, downloads) is shared between runs: settings.cache_dir's default.
    data_dir = tmp_path_factory.mktemp("orchestrator-data")
    return Settings(data_dir=data_dir)


@pytest.fixture(scope="session")
def engine(orch_settings: Settings) -> Iterator[docker.DockerClient]:
    client = connect_engine(orch_settings, progress=record)
    yield client
    client.close()


@pytest.fixture(scope="module")
def orchestrator(orch_settings: Settings, engine: docker.DockerClient) -> Orchestrator:
    return Orchestrator(orch_settings, client=engine, progress=record)


@pytest.fixture(scope="session")
def builder(engine: docker.DockerClient, orch_settings: Settings) -> ImageBuilder:
    return ImageBuilder(engine, orch_settings, progress=record)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="session")
def time_entry(catalog: Catalog) -> CatalogEntry:
    return catalog.get("time")


@pytest.fixture(scope="session")
def base_tag(builder: ImageBuilder) -> str:
    return builder.ensure_base()


@pytest.fixture(scope="session")
def time_image(builder: ImageBuilder, base_tag: str, time_entry: CatalogEntry) -> BuiltImage:
    return builder.ensure_server_image(time_entry)


@pytest.fixture(scope="session")
def data_dir(orch_settings: Settings) -> Path:
    return orch_settings.data_dir
