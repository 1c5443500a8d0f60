"""A local OpenID Connect issuer for tests: real HTTP on 127.0.0.1, real keys, real signatures.

It serves a discovery document and a JWKS from a uvicorn server in a background thread, counts the
requests it answers, can rotate keys, and signs tokens itself with `cryptography` (not with the
JOSE library under test, so a bug there cannot hide behind a matching bug here).

For sign-in tests it is also an authorization server: `/authorize` shows a tiny login form (a user
name, no password) for the users added with `add_user`, and redirects back with a code; `/token`
exchanges that code once, for a registered client (`register_client`), checking the redirect URI,
client authentication (HTTP Basic or public) and PKCE S256, and answers with a signed ID token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus, urlencode

import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

KeyKind = Literal["RSA", "EC"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
AUDIENCE = "https://gateway.test/mcp"
CODE_TTL_SECONDS = 60
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
                    "code_challenge_method")


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


@dataclass(frozen=True)
class Client:
    secret: str | None  # None: a public client (PKCE alone)
    redirect_uri: str


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: str
    expires: float


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class LocalIssuer(TokenSigner):
    """Discovery + JWKS (+ authorize and token endpoints) on loopback; `sign`/`token` mint tokens with its keys.

    `host` is the name in its URL (the socket is always on 127.0.0.1): "localhost" makes it another
    site than a dashboard on 127.0.0.1, as a real identity provider is.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        super().__init__(f"http://{host}:{self.port}")
        self.requests: Counter[str] = Counter()
        self.status = 200
        self.discovery_issuer: str | None = None
        self.clients: dict[str, Client] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self._codes: dict[str, _Grant] = {}
        app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
                Route("/authorize", self._authorize, methods=["GET", "POST"]),
                Route("/token", self._token, methods=["POST"]),
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
            self.clients.clear()
            self.users.clear()
            self._codes.clear()
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

    # -- sign-in ----------------------------------------------------------------------------

    def register_client(self, client_id: str, redirect_uri: str, secret: str | None = None) -> None:
        with self._lock:
            self.clients[client_id] = Client(secret, redirect_uri)

    def add_user(self, name: str, **claims: Any) -> None:
        """A user who can sign in by name; `claims` go into their ID tokens (e.g. groups, email)."""
        with self._lock:
            self.users[name] = {"sub": f"sub-{name}", **claims}

    def _client_error(self, params: dict[str, str]) -> str | None:
        """Why an authorization request cannot be redirected back at all (RFC 6749 §4.1.2.1)."""
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return "unknown client_id"
        if params.get("redirect_uri") != client.redirect_uri:
            return "redirect_uri is not the registered one"
        return None

    def _request_error(self, params: dict[str, str]) -> str | None:
        if params.get("response_type") != "code":
            return "unsupported_response_type"
        if "openid" not in params.get("scope", "").split():
            return "invalid_scope"
        if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) != 43:
            return "invalid_request"  # this issuer requires PKCE with S256
        return None

    async def _authorize(self, request: Request) -> Response:
        source = await request.form() if request.method == "POST" else request.query_params
        params = {name: str(source.get(name, "")) for name in (*AUTHORIZE_PARAMS, "username")}
        with self._lock:
            self.requests["authorize"] += 1
            problem = self._client_error(params)
        if problem:
            return HTMLResponse(f"<h1>Bad request</h1><p>{problem}</p>", status_code=400)
        back = params["redirect_uri"]
        error = self._request_error(params)
        if error:
            return RedirectResponse(f"{back}?{urlencode({'error': error, 'state': params['state']})}", status_code=302)
        if request.method == "GET" or params["username"] not in self.users:
            return self._login_form(params, failed=request.method == "POST")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Grant(params["client_id"], back, params["code_challenge"], params["nonce"] or None,
                                       params["username"], time.monotonic() + CODE_TTL_SECONDS)
        return RedirectResponse(f"{back}?{urlencode({'code': code, 'state': params['state']})}", status_code=302)

    def _login_form(self, params: dict[str, str], *, failed: bool) -> Response:
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">' for name in AUTHORIZE_PARAMS
        )
        error = '<p role="alert">Unknown user.</p>' if failed else ""
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Local issuer: sign in</title></head>'
            f"<body><h1>Local issuer</h1>{error}"
            f'<form method="post" action="/authorize">{hidden}'
            '<label for="username">User name</label> <input id="username" name="username" autocomplete="off">'
            ' <button type="submit">Continue</button></form></body></html>'
        )
        return HTMLResponse(page, status_code=401 if failed else 200)

    def _authenticate_client(self, request: Request, form: dict[str, str]) -> str | None:
        """The client id of a token request, authenticated (HTTP Basic), or a public client's."""
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                raw_id, _, raw_secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            client = self.clients.get(client_id)
            if client is None or client.secret is None or not hmac.compare_digest(client.secret, secret):
                return None
            return client_id
        client = self.clients.get(form.get("client_id", ""))
        return form["client_id"] if client is not None and client.secret is None else None

    async def _token(self, request: Request) -> Response:
        form = {name: str(value) for name, value in (await request.form()).items()}
        with self._lock:
            self.requests["token"] += 1
            if self.status != 200:
                return JSONResponse({"error": "temporarily_unavailable"}, status_code=self.status)
            client_id = self._authenticate_client(request, form)
            if client_id is None:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = self._codes.pop(form.get("code", ""), None)  # a code is good once, whatever happens next
            user = self.users.get(grant.user) if grant is not None else None
        if form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if (
            grant is None
            or user is None
            or grant.expires < time.monotonic()
            or grant.client_id != client_id
            or grant.redirect_uri != form.get("redirect_uri")
            or not hmac.compare_digest(s256(form.get("code_verifier", "")), grant.challenge)
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        claims = self.claims(aud=client_id, scope=None, nonce=grant.nonce, auth_time=int(time.time()), **user)
        id_token = self.sign(claims, kid=self.kid("RSA"), header={"typ": "JWT"})
        return JSONResponse(
            {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300, "id_token": id_token},
            headers={"Cache-Control": "no-store"},
        )
