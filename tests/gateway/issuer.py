"""A local OpenID Connect issuer for tests: real HTTP on 127.0.0.1, real keys, real signatures.

It serves a discovery document and a JWKS from a uvicorn server in a background thread, counts the
requests it answers, can rotate keys, and signs tokens itself with `cryptography` (not with the
JOSE library under test, so a bug there cannot hide behind a matching bug here).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections import Counter
from typing import Any, Literal

import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KeyKind = Literal["RSA", "EC"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
AUDIENCE = "https://gateway.test/mcp"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int, length: int | None = None) -> str:
    length = length or (value.bit_length() + 7) // 8
    return b64url(value.to_bytes(length, "big"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TokenSigner:
    """Keys of an issuer at `url`, and tokens signed with them (no server: see `LocalIssuer`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self.keys: dict[str, PrivateKey] = {}
        self.published: list[str] = []

    # -- keys -------------------------------------------------------------------------------

    def add_key(self, kind: KeyKind = "RSA", *, publish: bool = True) -> str:
        """A new key with a new kid; published in the JWKS unless `publish` is false."""
        key: PrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "RSA"
            else ec.generate_private_key(ec.SECP256R1())
        )
        kid = f"{kind.lower()}-{secrets.token_hex(4)}"
        with self._lock:
            self.keys[kid] = key
            if publish:
                self.published.append(kid)
        return kid

    def unpublish(self, kid: str) -> None:
        with self._lock:
            self.published.remove(kid)

    def kid(self, kind: KeyKind) -> str:
        """The first published key of a kind."""
        return next(kid for kid in self.published if kid.startswith(kind.lower()))

    def public_jwk(self, kid: str) -> dict[str, Any]:
        key = self.keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.public_key().public_numbers()
            return {
                "kty": "RSA",
                "kid": kid,
                "use": "sig",
                "alg": "RS256",
                "n": _uint(numbers.n),
                "e": _uint(numbers.e),
            }
        point = key.public_key().public_numbers()
        return {
            "kty": "EC",
            "kid": kid,
            "use": "sig",
            "crv": "P-256",
            "x": _uint(point.x, 32),
            "y": _uint(point.y, 32),
        }

    def public_pem(self, kid: str) -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    # -- tokens -----------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Claims of a valid access token; an override of None removes that claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": "user-1234",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "email": "ada@example.com",
            "email_verified": True,
            "groups": ["engineers"],
            "scope": "openid mcp:tools",
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, kid: str | None = None, *, alg: str | None = None, **overrides: Any) -> str:
        return self.sign(self.claims(**overrides), kid=kid or self.kid("RSA"), alg=alg)

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None,
        alg: str | None = None,
        header: dict[str, Any] | None = None,
        key_kid: str | None = None,
    ) -> str:
        """A compact JWS. `kid` goes in the header (None: no kid); `key_kid` names the signing key
        when it differs from the header's (defaults to `kid`)."""
        key = self.keys[key_kid or kid]  # type: ignore[index]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        protected = {"alg": alg, "typ": "at+jwt", **({"kid": kid} if kid else {}), **(header or {})}
        signing_input = (
            f"{b64url(json.dumps(protected).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        )
        if isinstance(key, rsa.RSAPrivateKey):
            digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[-3:]]
            pad = (
                padding.PSS(padding.MGF1(digest), digest.digest_size)
                if alg.startswith("PS")
                else padding.PKCS1v15()
            )
            signature = key.sign(signing_input, pad, digest)
        else:
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input.decode()}.{b64url(signature)}"

    def unsigned(self, claims: dict[str, Any], *, alg: str = "none", kid: str | None = None) -> str:
        """An `alg: none` token (empty signature)."""
        protected = {"alg": alg, **({"kid": kid} if kid else {})}
        return f"{b64url(json.dumps(protected).encode())}.{b64url(json.dumps(claims).encode())}."

    def hmac_signed(
        self, claims: dict[str, Any], secret: bytes, *, kid: str | None, alg: str = "HS256"
    ) -> str:
        """A token MACed with `secret` (the algorithm-confusion attack uses a public key here)."""
        protected = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
        signing_input = (
            f"{b64url(json.dumps(protected).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        )
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        return f"{signing_input.decode()}.{b64url(hmac.new(secret, signing_input, digest).digest())}"


class LocalIssuer(TokenSigner):
    """Discovery + JWKS on loopback; `sign`/`token` mint tokens with its keys."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.requests: Counter[str] = Counter()
        self.status = 200
        self.discovery_issuer: str | None = None
        app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio")
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    # -- server -----------------------------------------------------------------------------

    def start(self) -> LocalIssuer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("local issuer did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.keys.clear()
            self.published.clear()
            self.status = 200
            self.discovery_issuer = None
        self.add_key("RSA")
        self.add_key("EC")

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    async def _discovery(self, request: Request) -> Response:
        with self._lock:
            self.requests["discovery"] += 1
            if self.status != 200:
                return JSONResponse({"error": "unavailable"}, status_code=self.status)
            issuer = self.discovery_issuer or self.url
        return JSONResponse(
            {
                "issuer": issuer,
                "jwks_uri": f"{self.url}/jwks",
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        with self._lock:
            self.requests["jwks"] += 1
            if self.status != 200:
                return JSONResponse({"error": "unavailable"}, status_code=self.status)
            keys = [self.public_jwk(kid) for kid in self.published]
        return JSONResponse({"keys": keys})
