"""Dashboard sign-in through the platform's OpenID Connect issuer.

The OAuth 2.0 authorization code flow (RFC 6749 §4.1) with PKCE `S256` (RFC 7636), `state` and
`nonce` (OpenID Connect Core §3.1), as a confidential client (client secret, sent with HTTP Basic)
or a public one (PKCE alone):

1. `start` keeps a state, a nonce and a PKCE verifier server-side under a random login id (the
   browser holds only that id, in a short-lived cookie) and returns the issuer's authorization URL.
2. `finish` takes that entry once, compares the returned `state` in constant time, exchanges the
   code (with the verifier) at the token endpoint, and validates the ID token with the gateway's
   own `OidcVerifier`: the same discovery, JWKS cache, algorithm allowlist, signature, `iss`, `exp`
   and claim -> role mapping as bearer tokens, with the audience set to this client's id. The nonce
   and `azp` are checked here.

No OAuth client library: authlib's client is built on `httpx` (Stockade uses `httpx2`) and brings a
second JOSE stack next to PyJWT, which would duplicate the ID-token validation in `gateway/oidc.py`;
oauthlib (already installed) refuses plain-http endpoints through a process-wide environment switch,
and the project's rule is "https, or http on loopback" per URL. What remains after reusing the
verifier is two URL encodings, one hash (the S256 challenge) and a JSON check.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import anyio
import httpx2

from stockade.config import Settings
from stockade.errors import AuthenticationError, BackendError, ConfigError
from stockade.gateway.oidc import OidcConfig, OidcIdentity, OidcVerifier

LOGIN_TTL_SECONDS = 10 * 60  # time allowed at the identity provider
MAX_PENDING = 1000
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
HTTP_TIMEOUT = 10.0
CALLBACK_PATH = "/ui/auth/callback"
_ERROR_CODE = frozenset("abcdefghijklmnopqrstuvwxyz_")


@dataclass(frozen=True)
class OidcClient:
    """This dashboard as a client of the issuer (from `oidc_client_*` settings)."""

    client_id: str
    client_secret: str | None
    redirect_uri: str
    scopes: str

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcClient | None:
        if not settings.oidc_client_id:
            return None
        if not settings.oidc:
            raise ConfigError("oidc_client_id is set but no OIDC issuer is configured",
                              hint="set STOCKADE_OIDC (issuer, role_map) or unset STOCKADE_OIDC_CLIENT_ID")
        redirect_uri = settings.oidc_redirect_uri or settings.control_url + CALLBACK_PATH
        parts = urlsplit(redirect_uri)
        loopback = parts.hostname in {"localhost", "::1"} or (parts.hostname or "").startswith("127.")
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise ConfigError(f"oidc_redirect_uri {redirect_uri!r} must be an https URL (http on loopback only)",
                              hint=f"set STOCKADE_OIDC_REDIRECT_URI to the dashboard's public URL + {CALLBACK_PATH}")
        if not parts.path.endswith(CALLBACK_PATH):
            raise ConfigError(f"oidc_redirect_uri must end with {CALLBACK_PATH}, where the dashboard answers")
        if "openid" not in settings.oidc_scopes.split():
            raise ConfigError("oidc_scopes must include openid")
        secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
        return cls(settings.oidc_client_id, secret or None, redirect_uri, " ".join(settings.oidc_scopes.split()))


@dataclass(frozen=True)
class _Pending:
    state: str
    nonce: str
    verifier: str
    next_path: str
    created: float


class _PendingLogins:
    """Sign-ins under way, keyed by the SHA-256 of the browser's login id; each is taken once."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(login_id: str) -> str:
        return hashlib.sha256(login_id.encode()).hexdigest()

    def add(self, pending: _Pending) -> str:
        login_id = secrets.token_urlsafe(32)
        with self._lock:
            self._entries[self._key(login_id)] = pending
            while len(self._entries) > MAX_PENDING:
                self._entries.popitem(last=False)
        return login_id

    def take(self, login_id: str | None) -> _Pending | None:
        if not login_id or len(login_id) > 128:
            return None
        with self._lock:
            pending = self._entries.pop(self._key(login_id), None)
        if pending is None or time.monotonic() - pending.created > LOGIN_TTL_SECONDS:
            return None
        return pending


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def _form_basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _error_code(value: object) -> str | None:
    """An OAuth error code fit to repeat on a page (the issuer's free-text description never is)."""
    if isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _ERROR_CODE:
        return value
    return None


class OidcLogin:
    """The dashboard's OIDC sign-in. Serve inside `running()` (it owns the HTTP client)."""

    def __init__(self, client: OidcClient, trust: OidcConfig) -> None:
        self.client = client
        # The gateway's trust settings (issuer, algorithms, claims, role_map), but ID tokens are
        # addressed to this client, and scopes are an access-token matter.
        self.config = trust.model_copy(update={"audience": client.client_id, "required_scopes": ()})
        self._pending = _PendingLogins()
        self._http: httpx2.AsyncClient | None = None
        self._verifier: OidcVerifier | None = None

    @property
    def issuer_name(self) -> str:
        """How the sign-in button names the issuer: its host (and port)."""
        return urlsplit(self.config.issuer).netloc

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with httpx2.AsyncClient(follow_redirects=False, timeout=HTTP_TIMEOUT) as http:
            self._http, self._verifier = http, OidcVerifier(self.config, http)
            try:
                yield
            finally:
                self._http = self._verifier = None

    def _ready(self) -> tuple[httpx2.AsyncClient, OidcVerifier]:
        if self._http is None or self._verifier is None:
            raise BackendError("single sign-on is not running in this process", hint="restart the control plane")
        return self._http, self._verifier

    async def _endpoint(self, name: str) -> str:
        _, verifier = self._ready()
        try:
            return await verifier.endpoint(name)
        except AuthenticationError as exc:  # the issuer is down or misconfigured: not the user's fault
            raise BackendError(exc.message, hint=exc.hint) from None

    async def start(self, next_path: str) -> tuple[str, str]:
        """(login id for the browser's cookie, the issuer URL to send the browser to)."""
        authorize = await self._endpoint("authorization_endpoint")
        pending = _Pending(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                           verifier=secrets.token_urlsafe(64), next_path=next_path, created=time.monotonic())
        login_id = self._pending.add(pending)
        query = urlencode({
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.client.redirect_uri,
            "scope": self.client.scopes,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": s256(pending.verifier),
            "code_challenge_method": "S256",
        })
        return login_id, f"{authorize}?{query}"

    async def finish(self, login_id: str | None, params: Mapping[str, str]) -> tuple[OidcIdentity, str]:
        """The verified identity of a callback, and where the user was going."""
        pending = self._pending.take(login_id)
        if pending is None:
            raise AuthenticationError("this sign-in is unknown to this browser or has expired",
                                      hint="start again from the sign-in page (a sign-in must finish within "
                                           f"{LOGIN_TTL_SECONDS // 60} minutes, in the browser that began it)")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise AuthenticationError("the identity provider's answer does not belong to this sign-in (state mismatch)",
                                      hint="start again from the sign-in page")
        if "error" in params:
            code = _error_code(params.get("error"))
            raise AuthenticationError(f"the identity provider did not sign you in ({code or 'unknown error'})",
                                      hint="start again, or ask the identity provider's admins")
        code = params.get("code", "")
        if not code or len(code) > 2048:
            raise AuthenticationError("the identity provider's answer has no authorization code",
                                      hint="start again from the sign-in page")
        id_token = await self._exchange(code, pending.verifier)
        _, verifier = self._ready()
        identity, claims = await verifier.verify_claims(id_token)
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), pending.nonce.encode()):
            raise AuthenticationError("the ID token was not issued for this sign-in (nonce mismatch)",
                                      hint="start again from the sign-in page")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (azp is not None or len(audiences) > 1) and azp != self.client.client_id:
            raise AuthenticationError("the ID token was issued to another client (azp)")
        return identity, pending.next_path

    async def _exchange(self, code: str, verifier: str) -> str:
        """The ID token the token endpoint gives for the code."""
        http, _ = self._ready()
        url = await self._endpoint("token_endpoint")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.client.redirect_uri,
                "code_verifier": verifier}
        headers = {"accept": "application/json"}
        if self.client.client_secret:
            headers["authorization"] = _form_basic(self.client.client_id, self.client.client_secret)
        else:
            form["client_id"] = self.client.client_id
        body = bytearray()
        try:
            with anyio.fail_after(HTTP_TIMEOUT):
                async with http.stream("POST", url, data=form, headers=headers, timeout=HTTP_TIMEOUT) as response:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                            raise BackendError("the identity provider's token response is too large")
                    status = response.status_code
        except TimeoutError:
            raise BackendError("identity provider unreachable: its token endpoint took too long") from None
        except httpx2.HTTPError as exc:
            raise BackendError(f"identity provider unreachable: its token endpoint failed ({type(exc).__name__})",
                               hint="retry shortly; if this persists, check the provider's status") from None
        try:
            document: Any = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise BackendError(f"identity provider's token endpoint answered HTTP {status} without a JSON object",
                               hint="retry shortly; if this persists, check the provider's status")
        if status != 200:
            if status >= 500 or "error" not in document:
                raise BackendError(f"identity provider's token endpoint answered HTTP {status}",
                                   hint="retry shortly; if this persists, check the provider's status")
            code_name = _error_code(document.get("error")) or "unknown error"
            raise AuthenticationError(f"the identity provider refused the sign-in ({code_name})",
                                      hint="start again from the sign-in page; if it repeats, check the dashboard's "
                                           "client id, secret and redirect URI at the identity provider")
        id_token = document.get("id_token")
        if not isinstance(id_token, str) or str(document.get("token_type", "")).lower() != "bearer":
            raise BackendError("identity provider's token response has no ID token (is `openid` among the scopes?)")
        return id_token
