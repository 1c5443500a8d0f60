"""OIDC bearer tokens: verify JWT access tokens issued by an external identity provider.

The gateway accepts two kinds of bearer token: Stockade's own opaque `stk_…` tokens (see
`identity.py`) and JWTs signed by one configured OpenID Connect issuer. `looks_like_jwt` tells them
apart cheaply; `OidcVerifier.verify` turns a JWT into an `OidcIdentity` or raises
`AuthenticationError` naming the check that failed (never echoing the token or its claims).

What is checked, in order: the token's shape and size; its header `alg` against the configured
allowlist (asymmetric algorithms only: `none` and HS* are refused at configuration time and again
per token, so a public key can never be used as an HMAC secret); the signing key, looked up by
`kid` in the issuer's JWKS (found through `<issuer>/.well-known/openid-configuration`, whose
`issuer` must equal the configured one exactly); the signature, with the key bound to one
algorithm; `iss` (exact), `aud` (string or list, must contain the configured audience: RFC 8707),
`exp`, `nbf` and `iat` within `clock_skew_seconds`; the required claims `iss sub aud exp iat`; the
role mapping; the required scopes (a missing one raises `InsufficientScope`, a 403).

Keys are cached for `jwks_cache_seconds`. A token with an unknown `kid` makes the verifier fetch
the JWKS again (that is how key rotation is picked up), but no more often than once per
`jwks_min_refresh_seconds`, whatever the number of such tokens: an attacker minting random kids
cannot make the gateway hammer the issuer. One fetch runs at a time (an anyio lock); every network
wait is bounded. When a refresh fails but keys are cached, the cached keys stay in use (an outage
of the identity provider does not lock everyone out); with nothing cached, requests fail with
"identity provider unreachable" (a 401, not a 500), and the next attempt waits for the same
refresh interval.

JOSE library: PyJWT (with `cryptography`), not joserfc. Both are maintained; PyJWT is by far the
more widely deployed and audited (it is among the most downloaded Python packages), it already is
in Stockade's dependency tree (the `mcp` SDK requires it), and its security releases are prompt —
2.13.0 fixed the PyJWK allowlist bypass (GHSA-jq35-7prp-9v3f) that this module relies on being
fixed, hence the `>=2.13` floor. PyJWT's own `PyJWKClient` is not used: it fetches with blocking
urllib and has no refresh rate limit; fetching here goes through the project's `httpx2` client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stockade.errors import AuthenticationError, ConfigError, PermissionDenied
from stockade.gateway.identity import TOKEN_PREFIX, Principal
from stockade.gateway.policy import Rule

log = logging.getLogger(__name__)

# Algorithms a JWKS public key can verify, by key type. Symmetric (HS*) and `none` never appear.
_KTY_ALGORITHMS: dict[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset().union(*_KTY_ALGORITHMS.values())
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# Names it is safe to repeat in an error message (anything else in `alg` is attacker text).
_KNOWN_ALGORITHMS = ASYMMETRIC_ALGORITHMS | {"none", "HS256", "HS384", "HS512", "ES256K"}

REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat")
MAX_TOKEN_LENGTH = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024
MAX_CLAIM_LENGTH = 256
DISCOVERY_PATH = "/.well-known/openid-configuration"
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class InsufficientScope(PermissionDenied):
    """The token is valid but lacks a scope the gateway requires (RFC 6750 `insufficient_scope`)."""

    error = "insufficient_scope"

    def __init__(self, scope: str, missing: Iterable[str] = ()) -> None:
        missing = sorted(missing) or scope.split()
        super().__init__(
            f"token lacks required scope: {' '.join(missing)}",
            hint="ask the identity provider for a token with these scopes",
        )
        self.scope = scope
        self.missing = tuple(missing)

    def www_authenticate(self, resource_metadata: str | None = None) -> str:
        """The `WWW-Authenticate` value of the 403 answer (`scope` lists every required scope)."""
        parts = [f'error="{self.error}"', f'scope="{self.scope}"']
        if resource_metadata:
            parts.append(f'resource_metadata="{resource_metadata}"')
        return "Bearer " + ", ".join(parts)


def _is_loopback(host: str | None) -> bool:
    return host is not None and (host in _LOOPBACK_HOSTS or host.startswith("127."))


def _check_url(value: str, what: str) -> str:
    """https, or http on loopback only (a local test issuer); no query, fragment or credentials."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute https URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"{what} must use https (plain http is allowed on loopback only)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{what} must not carry a query, fragment or credentials")
    return value


def _no_blank(values: Iterable[str], what: str) -> None:
    for value in values:
        if not value or value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError(f"{what} must be non-empty and contain no whitespace: {value!r}")


class OidcConfig(BaseModel):
    """How the gateway trusts one OpenID Connect issuer. Build with `OidcConfig.load` for a `ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str
    audience: str = Field(description="the gateway's resource URL; tokens must name it in `aud` (RFC 8707)")
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    member_claim: str = "email"
    role_claim: str = Field("groups", description="a claim name, or a dotted path such as realm_access.roles")
    role_map: dict[str, str] = Field(
        description="claim value -> Stockade role; the first entry the token carries wins"
    )
    clock_skew_seconds: int = Field(60, ge=0, le=300)
    required_scopes: tuple[str, ...] = ()
    jwks_cache_seconds: int = Field(600, ge=1, le=86_400)
    jwks_min_refresh_seconds: float = Field(30.0, ge=1.0, le=3_600.0)
    http_timeout: float = Field(5.0, gt=0.0, le=60.0)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _check_url(value, "issuer")

    @field_validator("audience", "member_claim", "role_claim")
    @classmethod
    def _present(cls, value: str) -> str:
        _no_blank([value], "value")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is needed")
        for name in value:
            if name.lower() == "none" or name.upper().startswith("HS"):
                raise ValueError(f"{name!r} is never accepted: only asymmetric algorithms verify OIDC tokens")
            if name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"unsupported algorithm {name!r}; use some of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
                )
        return tuple(dict.fromkeys(value))

    @field_validator("role_map")
    @classmethod
    def _role_map(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("map at least one claim value to a Stockade role, or every token is refused")
        for claim_value, role in value.items():
            if not claim_value or not role or role != role.strip():
                raise ValueError(f"invalid role_map entry {claim_value!r}: {role!r}")
        return value

    @field_validator("required_scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _no_blank(value, "a scope")
        return tuple(dict.fromkeys(value))

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> OidcConfig:
        """Validate settings, turning pydantic's error into a `ConfigError` that names the fields."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'oidc'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid OIDC settings: {problems}") from None


@dataclass(frozen=True)
class OidcIdentity:
    """Who a verified OIDC token speaks for."""

    member: str
    role: str
    subject: str
    token_id: str
    expires_at: datetime
    scopes: frozenset[str]

    def principal(self, rules: tuple[Rule, ...] = ()) -> Principal:
        """The gateway's `Principal` for this caller (`rules` are the mapped role's rules)."""
        return Principal(member=self.member, role=self.role, token_id=self.token_id, rules=rules,
                         expires_at=self.expires_at)


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def looks_like_jwt(token: str | None) -> bool:
    """Whether a bearer credential is shaped like a compact JWS (so it goes to `OidcVerifier`).

    Cheap and signature-free: three base64url segments whose first decodes to a JSON object
    with an `alg`. Stockade's own `stk_` tokens never match.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or token.startswith(TOKEN_PREFIX):
        return False
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1] or len(parts[0]) > 4096:
        return False
    if not all(_B64URL.fullmatch(part) for part in parts):
        return False
    try:
        header = json.loads(_b64url_decode(parts[0].rstrip("=")))
    except (ValueError, binascii.Error, RecursionError):
        return False
    return isinstance(header, dict) and "alg" in header


def _clean_claim(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_CLAIM_LENGTH or not value.isprintable():
        return None
    return value


def _claim_at(claims: Mapping[str, Any], name: str) -> object:
    """A claim by name, or by dotted path into nested objects when no claim has that exact name."""
    if name in claims:
        return claims[name]
    node: object = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """`scope` (RFC 8693/9068: space-separated) and `scp` (a list or a string, as some IdPs send)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str) and item)
    return frozenset(found)


def _usable_keys(
    document: Mapping[str, Any], allowed: Iterable[str]
) -> dict[tuple[str | None, str], jwt.PyJWK]:
    """Signing keys of a JWKS, each bound to one allowed algorithm: {(kid, alg): key}."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise AuthenticationError("identity provider's JWKS has no `keys` list")
    allowed = set(allowed)
    usable: dict[tuple[str | None, str], jwt.PyJWK] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        candidates = _KTY_ALGORITHMS.get(jwk.get("kty", ""), frozenset()) & allowed
        declared = jwk.get("alg")
        if declared is not None:
            candidates &= {declared}
        if jwk.get("kty") == "EC":
            candidates = {alg for alg in candidates if _EC_CURVES[alg] == jwk.get("crv")}
        for alg in candidates:
            try:
                usable[(kid, alg)] = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                log.warning("skipping unusable %s key %r in the issuer's JWKS", alg, kid)
    return usable


class OidcVerifier:
    """Verifies JWT access tokens of one issuer. One per gateway; safe to share between tasks.

    `monotonic` is the clock of the key cache and refresh rate limit (injectable for tests);
    token times (`exp`, `nbf`, `iat`) are checked against the wall clock.
    """

    def __init__(
        self,
        config: OidcConfig,
        http: httpx2.AsyncClient,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._http = http
        self._clock = monotonic
        self._lock = anyio.Lock()
        self._jwks_uri: str | None = None
        self._discovery: dict[str, Any] | None = None
        self._discovered_at: float | None = None
        self._keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None

    # -- public -----------------------------------------------------------------------------

    async def verify(self, token: str) -> OidcIdentity:
        """The identity a token speaks for, or `AuthenticationError` / `InsufficientScope`."""
        identity, _ = await self.verify_claims(token)
        return identity

    async def verify_claims(self, token: str) -> tuple[OidcIdentity, dict[str, Any]]:
        """`verify`, also returning the verified claims (an ID token's `nonce` is checked by its caller)."""
        if not looks_like_jwt(token):
            raise AuthenticationError("bearer token is not a well-formed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("token header is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            named = f"{alg!r} " if isinstance(alg, str) and alg in _KNOWN_ALGORITHMS else ""
            raise AuthenticationError(
                f"token algorithm {named}is not allowed",
                hint=f"accepted: {', '.join(self.config.algorithms)}",
            )
        if "crit" in header or header.get("b64", True) is not True:
            raise AuthenticationError("token uses unsupported critical header parameters")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_CLAIM_LENGTH):
            raise AuthenticationError("token header has an invalid key id (kid)")

        key = await self._signing_key(kid, alg)
        claims = self._decode(token, key)
        return self._identity(token, claims), claims

    async def endpoint(self, name: str) -> str:
        """A URL named in the issuer's discovery document (e.g. `token_endpoint`), checked like the issuer's."""
        if self._discovery is None:
            await self._refresh(lambda: self._discovery is None)
        if self._discovery is None:
            raise AuthenticationError(
                f"identity provider unreachable; last attempt: {self._last_error or 'none yet'}",
                hint="retry shortly; if this persists, check the issuer URL and the provider's status",
            )
        value = self._discovery.get(name)
        if not isinstance(value, str):
            raise AuthenticationError(f"identity provider's discovery document has no {name}")
        try:
            return _check_url(value, name)
        except ValueError as exc:
            raise AuthenticationError(f"identity provider's discovery document: {exc}") from None

    async def refresh(self) -> None:
        """Fetch discovery and keys now (for example at start-up), ignoring the rate limit once."""
        self._last_attempt = None
        self._discovered_at = None
        await self._refresh(lambda: True)

    # -- keys -------------------------------------------------------------------------------

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get((kid, alg))
        matching = [key for (_, key_alg), key in self._keys.items() if key_alg == alg]
        return matching[0] if len(matching) == 1 else None

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self.config.jwks_cache_seconds

    async def _signing_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        if self._stale():
            await self._refresh(self._stale)
        key = self._find(kid, alg)
        if key is None:
            await self._refresh(lambda: self._find(kid, alg) is None)
            key = self._find(kid, alg)
        if key is not None:
            return key
        if self._fetched_at is None:
            raise AuthenticationError(
                f"identity provider unreachable; last attempt: {self._last_error or 'none yet'}",
                hint="retry shortly; if this persists, check the issuer URL and the provider's status",
            )
        what = (
            "no signing key matches the token's key id (kid)"
            if kid
            else "token has no key id (kid) and no single published key fits it"
        )
        if self._last_error:
            what += f"; refreshing keys failed: {self._last_error}"
        raise AuthenticationError(what)

    async def _refresh(self, needed: Callable[[], bool]) -> None:
        """Fetch keys if `needed()` still holds once the lock is held and the rate limit allows."""
        budget = 2 * self.config.http_timeout + 1.0
        try:
            with anyio.fail_after(budget):
                await self._lock.acquire()
        except TimeoutError:
            raise AuthenticationError(
                "identity provider unreachable: timed out waiting for a key refresh"
            ) from None
        try:
            if not needed():
                return  # another task refreshed meanwhile
            now = self._clock()
            if (
                self._last_attempt is not None
                and now - self._last_attempt < self.config.jwks_min_refresh_seconds
            ):
                return  # rate limited: the caller decides with what is cached
            self._last_attempt = now
            try:
                await self._fetch_keys(now)
            except AuthenticationError as exc:
                self._last_error = exc.message
                log.warning("OIDC key refresh from %s failed: %s", self.config.issuer, exc.message)
                if self._fetched_at is None:
                    raise
                # keep the cached keys: an identity-provider outage must not lock everyone out
            else:
                self._last_error = None
        finally:
            self._lock.release()

    async def _fetch_keys(self, now: float) -> None:
        if (
            self._jwks_uri is None
            or self._discovered_at is None
            or now - self._discovered_at >= self.config.jwks_cache_seconds
        ):
            discovery = await self._get_json(self.config.discovery_url, "discovery document")
            if discovery.get("issuer") != self.config.issuer:
                raise AuthenticationError(
                    f"identity provider's discovery document does not name the configured issuer "
                    f"{self.config.issuer!r} (the match must be exact)",
                )
            jwks_uri = discovery.get("jwks_uri")
            try:
                self._jwks_uri = _check_url(jwks_uri, "jwks_uri") if isinstance(jwks_uri, str) else None
            except ValueError as exc:
                raise AuthenticationError(f"identity provider's {exc}") from None
            if self._jwks_uri is None:
                raise AuthenticationError("identity provider's discovery document has no jwks_uri")
            self._discovery = discovery
            self._discovered_at = now
        keys = _usable_keys(await self._get_json(self._jwks_uri, "JWKS"), self.config.algorithms)
        if not keys:
            raise AuthenticationError(
                "identity provider publishes no signing key for the allowed algorithms",
                hint=f"accepted: {', '.join(self.config.algorithms)}",
            )
        self._keys = keys
        self._fetched_at = now
        log.info("fetched %d OIDC signing keys from %s", len(keys), self._jwks_uri)

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        timeout = self.config.http_timeout
        body = bytearray()
        try:
            with anyio.fail_after(timeout):
                async with self._http.stream(
                    "GET",
                    url,
                    headers={"accept": "application/json"},
                    timeout=timeout,
                    follow_redirects=False,
                ) as response:
                    if response.status_code != 200:
                        raise AuthenticationError(
                            f"identity provider answered HTTP {response.status_code} for its {what}"
                        )
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise AuthenticationError(f"identity provider's {what} is too large")
        except TimeoutError:
            raise AuthenticationError(f"identity provider unreachable: its {what} took too long") from None
        except httpx2.HTTPError as exc:
            raise AuthenticationError(
                f"identity provider unreachable: fetching its {what} failed ({type(exc).__name__})"
            ) from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise AuthenticationError(f"identity provider's {what} is not valid JSON") from None
        if not isinstance(document, dict):
            raise AuthenticationError(f"identity provider's {what} is not a JSON object")
        return document

    # -- claims -----------------------------------------------------------------------------

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        config = self.config
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.clock_skew_seconds,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            message = "token signature is invalid"
        except jwt.ExpiredSignatureError:
            message = "token has expired"
        except jwt.ImmatureSignatureError as exc:
            message = (
                "token was issued in the future (iat)"
                if "iat" in str(exc)
                else "token is not yet valid (nbf)"
            )
        except jwt.InvalidAudienceError:
            message = f"token audience (aud) does not include {config.audience!r}"
        except jwt.InvalidIssuerError:
            message = f"token issuer (iss) is not {config.issuer!r}"
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in REQUIRED_CLAIMS else "a claim"
            message = f"token lacks the required claim {claim!r}"
        except jwt.InvalidIssuedAtError:
            message = "token issued-at (iat) is not a number"
        except jwt.InvalidAlgorithmError:
            message = "token algorithm does not match its signing key"
        except jwt.InvalidKeyError:
            message = "issuer's signing key is unacceptable (too short or malformed)"
        except (jwt.InvalidSubjectError, jwt.InvalidJTIError):
            message = "token sub or jti claim is not a string"
        except jwt.PyJWTError:
            message = "token is malformed"
        raise AuthenticationError(message)

    def _identity(self, token: str, claims: dict[str, Any]) -> OidcIdentity:
        config = self.config
        subject = _clean_claim(claims.get("sub"))
        if subject is None:
            raise AuthenticationError("token subject (sub) is empty or unusable")

        member = None
        unverified_email = config.member_claim == "email" and claims.get("email_verified") is False
        if not unverified_email:
            member = _clean_claim(_claim_at(claims, config.member_claim))
        member = member or subject

        raw = _claim_at(claims, config.role_claim)
        if isinstance(raw, str):
            values = {raw}
        elif isinstance(raw, list):
            values = {value for value in raw if isinstance(value, str)}
        else:
            values = set()
        role = next((mapped for value, mapped in config.role_map.items() if value in values), None)
        if role is None:
            raise AuthenticationError(
                f"no value of the token's {config.role_claim!r} claim maps to a Stockade role",
                hint="ask an admin to add your group to the gateway's OIDC role_map",
            )

        scopes = _scopes(claims)
        missing = [scope for scope in config.required_scopes if scope not in scopes]
        if missing:
            raise InsufficientScope(" ".join(config.required_scopes), missing)

        jti = _clean_claim(claims.get("jti"))
        token_id = f"oidc:{jti}" if jti else "oidc:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        exp = claims["exp"]
        return OidcIdentity(
            member=member,
            role=role,
            subject=subject,
            token_id=token_id,
            expires_at=datetime.fromtimestamp(float(exp), UTC),
            scopes=scopes,
        )
