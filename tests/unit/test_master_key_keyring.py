"""The master key kept in a real OS keyring: a private D-Bus session with gnome-keyring's Secret
Service, the backend the `keyring` library picks on a Linux desktop. Each step runs in its own
process, as `stockade` commands do, so nothing is shared through memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

LOAD = textwrap.dedent(
    """
    import base64, hashlib, json, sys
    import keyring
    from stockade.config import Settings
    from stockade.errors import StockadeError
    from stockade.secrets import Sealer, load_master_key

    settings = Settings()
    try:
        key = load_master_key(settings, create=sys.argv[1] == "create")
    except StockadeError as exc:
        print(json.dumps({"error": exc.message, "hint": exc.hint}))
        raise SystemExit(0)
    sealer = Sealer(key)
    out = {"backend": type(keyring.get_keyring()).__module__, "digest": hashlib.sha256(key).hexdigest()}
    if len(sys.argv) > 2:
        out["opened"] = sealer.open(base64.b64decode(sys.argv[2]), context="t").decode()
    out["sealed"] = base64.b64encode(sealer.seal(b"planted-value", context="t")).decode()
    print(json.dumps(out))
    """
)


@pytest.fixture
def secret_service(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A session bus and an unlocked gnome-keyring on it; yields the environment that reaches them."""
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert bus.stdout is not None
    env = {**os.environ, "HOME": str(tmp_path / "home"), "DBUS_SESSION_BUS_ADDRESS": bus.stdout.readline().strip()}
    Path(env["HOME"]).mkdir()
    daemon = subprocess.Popen(
        ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert daemon.stdin is not None and daemon.stdout is not None
    daemon.stdin.write(b"login-password")
    daemon.stdin.close()
    # The daemon prints its control socket once it serves the bus.
    assert daemon.stdout.readline().startswith(b"GNOME_KEYRING_CONTROL=")
    try:
        yield env
    finally:
        for process in (daemon, bus):
            process.terminate()
            process.wait(timeout=10)


def load(env: dict[str, str], data_dir: Path, *args: str) -> dict[str, str]:
    run_env = {**env, "STOCKADE_DATA_DIR": str(data_dir), "STOCKADE_MASTER_KEY_KEYRING": "true"}
    run_env.pop("STOCKADE_MASTER_KEY", None)
    done = subprocess.run(
        [sys.executable, "-c", LOAD, *args], env=run_env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def test_key_is_created_in_and_read_back_from_the_secret_service(
    secret_service: dict[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = load(secret_service, data_dir, "create")
    assert first["backend"] == "keyring.backends.SecretService"
    second = load(secret_service, data_dir, "existing", first["sealed"])
    assert second["digest"] == first["digest"]
    assert second["opened"] == "planted-value"
    # The key lives in the keyring only: no key file, and no copy of it anywhere in the data dir.
    assert not (data_dir / "master.key").exists()
    assert not data_dir.exists() or not any(path.is_file() for path in data_dir.rglob("*"))


def test_each_data_directory_has_its_own_key(secret_service: dict[str, str], tmp_path: Path) -> None:
    one = load(secret_service, tmp_path / "one", "create")
    other = load(secret_service, tmp_path / "other", "create")
    assert one["digest"] != other["digest"]


def test_missing_entry_is_a_clear_error_not_a_new_key(secret_service: dict[str, str], tmp_path: Path) -> None:
    answer = load(secret_service, tmp_path / "data", "existing")
    assert answer["error"].startswith("no master key in the OS keyring")
    assert "restore" in answer["hint"]


def test_no_keyring_is_a_clear_error(tmp_path: Path) -> None:
    # No session bus at all, as on a headless server.
    env = {key: value for key, value in os.environ.items() if key != "DBUS_SESSION_BUS_ADDRESS"}
    env["HOME"] = str(tmp_path)
    answer = load(env, tmp_path / "data", "create")
    assert answer["error"].startswith("the OS keyring is not usable")
    assert "STOCKADE_MASTER_KEY_KEYRING" in answer["hint"]
