import base64
import os
from pathlib import Path

import pytest

from stockade.config import Settings
from stockade.errors import SecretsError
from stockade.secrets import Sealer, load_master_key


def test_seal_round_trip_and_no_plaintext() -> None:
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal(b"planted-secret-value", context="deployment:1:API_KEY")
    assert b"planted-secret-value" not in sealed
    assert sealer.open(sealed, context="deployment:1:API_KEY") == b"planted-secret-value"
    assert sealer.seal(b"x", context="c") != sealer.seal(b"x", context="c")  # fresh data key and nonce


def test_wrong_key_or_moved_value_is_a_clear_error() -> None:
    sealed = Sealer(os.urandom(32)).seal(b"v", context="deployment:1:A")
    with pytest.raises(SecretsError, match="not the one it was sealed with"):
        Sealer(os.urandom(32)).open(sealed, context="deployment:1:A")
    key = os.urandom(32)
    sealed = Sealer(key).seal(b"v", context="deployment:1:A")
    with pytest.raises(SecretsError):
        Sealer(key).open(sealed, context="deployment:2:A")
    with pytest.raises(SecretsError, match="damaged"):
        Sealer(key).open(b"garbage", context="deployment:1:A")


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = load_master_key(settings)
    path = tmp_path / "master.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_master_key(settings) == key


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    load_master_key(settings)
    (tmp_path / "master.key").chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_master_key(settings)


def test_key_from_environment(tmp_path: Path) -> None:
    key = os.urandom(32)
    settings = Settings(data_dir=tmp_path, master_key=base64.b64encode(key).decode())
    assert load_master_key(settings) == key
    assert not (tmp_path / "master.key").exists()
    with pytest.raises(SecretsError, match="32 bytes"):
        load_master_key(Settings(data_dir=tmp_path, master_key=base64.b64encode(b"short").decode()))
    with pytest.raises(SecretsError, match="no master key"):
        load_master_key(Settings(data_dir=tmp_path / "none"), create=False)
