"""Where the master key comes from: an environment variable, the OS keyring, or a 0600 key file.

`STOCKADE_MASTER_KEY` (base64 of 32 bytes) suits containers and CI where a secret store injects
it; the OS keyring (`STOCKADE_MASTER_KEY_KEYRING=true`) suits a workstation with a desktop keyring,
where the key then never lies on disk unencrypted; the key file (created on first use, mode 0600,
in the data directory) suits a single headless machine.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

import keyring
import keyring.errors

from stockade.config import Settings
from stockade.errors import SecretsError

KEYRING_SERVICE = "stockade"


def keyring_entry_name(settings: Settings) -> str:
    """One entry per data directory, so two installations on one account keep separate keys."""
    return f"master-key:{settings.data_dir.resolve()}"


def load_master_key(settings: Settings, *, create: bool = True) -> bytes:
    if settings.master_key is not None:
        return _decode(settings.master_key.get_secret_value(), source="STOCKADE_MASTER_KEY")
    if settings.master_key_keyring:
        return _from_keyring(keyring_entry_name(settings), create=create)
    path = settings.resolved_master_key_file
    if not path.exists():
        if not create:
            raise SecretsError(
                f"no master key: {path} does not exist and STOCKADE_MASTER_KEY is not set",
                hint="run `stockade up` once to create it, or restore the key file from your backup",
            )
        return _create_key_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretsError(
            f"master key file {path} is readable by others (mode {mode:o})",
            hint=f"chmod 600 {path}",
        )
    return _decode(path.read_text().strip(), source=str(path))


def _from_keyring(entry: str, *, create: bool) -> bytes:
    source = f"the OS keyring ({KEYRING_SERVICE} / {entry})"
    try:
        stored = keyring.get_password(KEYRING_SERVICE, entry)
        if stored is not None:
            return _decode(stored, source=source)
        if not create:
            raise SecretsError(
                f"no master key in {source}",
                hint="run `stockade up` once to create it, or restore the entry from your backup",
            )
        key = os.urandom(32)
        keyring.set_password(KEYRING_SERVICE, entry, base64.b64encode(key).decode())
        return key
    except keyring.errors.KeyringError as exc:
        raise SecretsError(
            f"the OS keyring is not usable: {exc}",
            hint="unlock the desktop keyring (Secret Service, Keychain, Credential Locker) "
            "or unset STOCKADE_MASTER_KEY_KEYRING to use the key file",
        ) from None


def _create_key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
    return key


def _decode(text: str, *, source: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecretsError(f"master key from {source} is not valid base64") from None
    if len(key) != 32:
        raise SecretsError(f"master key from {source} must decode to 32 bytes, got {len(key)}")
    return key
