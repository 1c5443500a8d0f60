"""Envelope encryption: each value gets its own AES-256-GCM data key, wrapped by the master key.

Wire format of a sealed value (version 1), all binary:
    b"S1" | wrapped data key (12-byte nonce + 32-byte key + 16-byte tag) | 12-byte nonce | ciphertext+tag
The `context` (e.g. "deployment:<id>:VAR") is bound as associated data to both layers, so a sealed
value copied into another row does not open.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stockade.errors import SecretsError

_MAGIC = b"S1"
_NONCE = 12
_WRAPPED = _NONCE + 32 + 16


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise SecretsError("the master key must be 32 bytes (256 bits)")
        self._master = AESGCM(master_key)
        self._derivation_key = master_key

    def derive_token(self, context: str) -> str:
        """A 256-bit secret for `context`, the same in every process holding this master key.

        For secrets that must be known to two processes that share no storage (a server rendered
        onto Kubernetes and the gateways that call it): each derives it, none stores or sends it.
        HKDF's info binds the purpose and context, so one context's token reveals nothing of another.
        """
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"stockade derived token v1:" + context.encode())
        return base64.urlsafe_b64encode(hkdf.derive(self._derivation_key)).rstrip(b"=").decode()

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        aad = context.encode()
        data_key = AESGCM.generate_key(bit_length=256)
        key_nonce, value_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
        wrapped = key_nonce + self._master.encrypt(key_nonce, data_key, aad)
        return _MAGIC + wrapped + value_nonce + AESGCM(data_key).encrypt(value_nonce, plaintext, aad)

    def open(self, sealed: bytes, *, context: str) -> bytes:
        if not sealed.startswith(_MAGIC) or len(sealed) < len(_MAGIC) + _WRAPPED + _NONCE + 16:
            raise SecretsError(f"sealed value for {context} is damaged (unknown format)")
        aad = context.encode()
        body = sealed[len(_MAGIC) :]
        wrapped, value_nonce, ciphertext = body[:_WRAPPED], body[_WRAPPED : _WRAPPED + _NONCE], body[_WRAPPED + _NONCE :]
        try:
            data_key = self._master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
            return AESGCM(data_key).decrypt(value_nonce, ciphertext, aad)
        except InvalidTag:
            raise SecretsError(
                f"cannot decrypt {context}: the master key is not the one it was sealed with",
                hint="restore the original master key (STOCKADE_MASTER_KEY or the key file); nothing was changed",
            ) from None
