from pathlib import Path

import pytest

from stockade.config import PullPolicy, load_settings
from stockade.errors import ConfigError


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STOCKADE_GATEWAY_HOST", "STOCKADE_CONTROL_HOST", "STOCKADE_PULL_POLICY", "STOCKADE_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.gateway_host == "127.0.0.1" and settings.control_host == "127.0.0.1"
    assert settings.pull_policy is PullPolicy.never


def test_environment_beats_file_and_file_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "stockade.toml"
    config.write_text('gateway_port = 9100\ncontrol_port = 9101\ndata_dir = "/srv/stockade"\n')
    monkeypatch.setenv("STOCKADE_CONFIG_FILE", str(config))
    monkeypatch.setenv("STOCKADE_GATEWAY_PORT", "9200")
    settings = load_settings()
    assert settings.gateway_port == 9200
    assert settings.control_port == 9101
    assert settings.data_dir == Path("/srv/stockade")
    assert settings.resolved_database_url == "sqlite:////srv/stockade/stockade.db"


def test_invalid_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_GATEWAY_PORT", "seventy")
    with pytest.raises(ConfigError, match="gateway_port"):
        load_settings()
