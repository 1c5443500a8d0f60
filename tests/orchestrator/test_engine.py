"""The engine: found, described, and a clear error when a configured one does not answer."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from stockade.config import Settings
from stockade.errors import EngineError
from stockade.orchestrator.engine import connect_engine, engine_summary
from stockade.orchestrator.packages import apt_mirror


def test_engine_answers_and_is_described(engine: docker.DockerClient) -> None:
    assert engine.ping()
    summary = engine_summary(engine)
    for key in ("engine", "version", "api version", "storage driver", "cgroup", "security options"):
        assert summary[key] and summary[key] != "?"
    assert "seccomp" in summary["security options"]


def test_configured_engine_that_does_not_answer_is_an_error_not_an_install(tmp_path: Path) -> None:
    missing = tmp_path / "no-engine.sock"
    settings = Settings(data_dir=tmp_path, docker_host=f"unix://{missing}")
    with pytest.raises(EngineError) as raised:
        connect_engine(settings)
    assert str(missing) in raised.value.message


def test_debian_mirror_comes_from_the_setting_or_apt() -> None:
    assert apt_mirror("http://mirror.example.test/debian") == "http://mirror.example.test/debian"
    found = apt_mirror(None)  # this machine's apt configuration
    assert found.startswith(("http://", "https://", "file:/")) and "security" not in found


def test_debian_mirror_parses_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://security.example.test/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://archive.example.test/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert apt_mirror(None, root=tmp_path) == "http://archive.example.test/debian"
    (tmp_path / "etc/apt/sources.list.d/debian.sources").unlink()
    (tmp_path / "etc/apt/sources.list").write_text(
        "# comment\ndeb [signed-by=/x.gpg] http://one-line.example.test/debian bookworm main\n"
    )
    assert apt_mirror(None, root=tmp_path) == "http://one-line.example.test/debian"
