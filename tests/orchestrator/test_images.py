"""Offline, cached image builds: base and the `time` server image, labels, the second run, hardening."""

from __future__ import annotations

import docker
import docker.errors
import pytest

from stockade.catalog import CatalogEntry
from stockade.errors import ImageBuildError
from stockade.orchestrator.images import BuiltImage, ImageBuilder

from .conftest import PROGRESS


def test_base_image_is_local_and_labelled(engine: docker.DockerClient, base_tag: str) -> None:
    image = engine.images.get(base_tag)
    assert image.labels.get("io.stockade.managed") == "true"
    assert not image.attrs.get("RepoDigests")  # imported, never pulled from a registry


def test_time_image_labels(time_image: BuiltImage, base_tag: str, engine: docker.DockerClient) -> None:
    labels = engine.images.get(time_image.tag).labels
    assert labels["io.stockade.managed"] == "true"
    assert labels["io.stockade.package"] == "mcp-server-time"
    assert labels["io.stockade.version"] == "2026.10.19"
    assert labels["io.stockade.ecosystem"] == "pypi"
    assert labels["io.stockade.bridge-version"]
    assert len(labels["io.stockade.build-hash"]) == 64
    assert labels["io.stockade.base-image"].startswith(base_tag + "@sha256:")
    assert time_image.tag.endswith(":" + labels["io.stockade.build-hash"][:16])
    assert time_image.labels == labels


def test_second_ensure_builds_nothing(builder: ImageBuilder, time_image: BuiltImage, time_entry: CatalogEntry) -> None:
    PROGRESS.clear()
    again = builder.ensure_server_image(time_entry)
    assert again.built is False
    assert again.tag == time_image.tag and again.image_id == time_image.image_id
    assert any("up to date" in line for line in PROGRESS)
    assert builder.ensure_base() == builder.base_tag()


def test_image_runs_as_nobody_with_the_bridge_entrypoint(engine: docker.DockerClient, time_image: BuiltImage) -> None:
    config = engine.images.get(time_image.tag).attrs["Config"]
    assert config["User"] == "65534:65534"
    assert config["Entrypoint"][-2:] == ["-m", "stockade.bridge"]
    assert config["Entrypoint"][0].endswith("python3")
    assert not any(e.startswith("PYTHONPATH=") and "/opt/stockade/app" in e for e in config["Env"])


def _run(engine: docker.DockerClient, image: str, *command: str, entrypoint: str) -> str:
    container = engine.containers.create(image, list(command), entrypoint=[entrypoint], network_mode="none",
                                         cap_drop=["ALL"], read_only=True, security_opt=["no-new-privileges:true"])
    try:  # a missing entrypoint fails at start: the created container is removed all the same
        container.start()
        container.wait(timeout=120)
        return container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)


def test_server_and_bridge_are_installed(engine: docker.DockerClient, time_image: BuiltImage) -> None:
    python = engine.images.get(time_image.tag).attrs["Config"]["Entrypoint"][0]
    script = (
        "import os, shutil, stockade.bridge, uvicorn, starlette;"
        "print(shutil.which('mcp-server-time'));"
        "print(os.getuid(), os.getgid())"
    )
    lines = _run(engine, time_image.tag, "-c", script, entrypoint=python).split()
    assert lines[0].startswith("/opt/stockade/") and lines[0].endswith("/mcp-server-time")
    assert lines[1:] == ["65534", "65534"]


def test_final_image_has_no_shell_and_no_package_manager(engine: docker.DockerClient, time_image: BuiltImage) -> None:
    for program in ("/bin/sh", "/bin/bash", "/usr/bin/apt-get", "/usr/bin/dpkg"):
        with pytest.raises(docker.errors.APIError):
            _run(engine, time_image.tag, entrypoint=program)
    python = engine.images.get(time_image.tag).attrs["Config"]["Entrypoint"][0]
    check = "import os; print([p for p in ('/bin/sh','/usr/bin/apt','/usr/bin/dpkg','/usr/bin/pip') if os.path.exists(p)])"
    assert _run(engine, time_image.tag, "-c", check, entrypoint=python).strip() == "[]"


def test_prebuilt_image_must_exist_locally_and_is_never_pulled(builder: ImageBuilder) -> None:
    entry = CatalogEntry.model_validate({
        "name": "prebuilt", "image": "stockade-test/not-here-anywhere:1", "command": ["x"],
    })
    with pytest.raises(ImageBuildError, match="never pulls"):
        builder.ensure_server_image(entry)


def test_prebuilt_image_digest_is_checked(
    engine: docker.DockerClient, builder: ImageBuilder, time_image: BuiltImage,
) -> None:
    local_id = engine.images.get(time_image.tag).id
    ok = CatalogEntry.model_validate({
        "name": "prebuilt", "image": time_image.tag, "image_digest": local_id, "command": ["x"],
    })
    result = builder.ensure_server_image(ok)
    assert result.built is False and result.image_id == local_id
    wrong = CatalogEntry.model_validate({
        "name": "prebuilt", "image": time_image.tag, "image_digest": "sha256:" + "0" * 64, "command": ["x"],
    })
    with pytest.raises(ImageBuildError, match="not the catalog"):
        builder.ensure_server_image(wrong)
