"""OIDC bearer-token verification against a real local issuer: real HTTP, real keys, no mocks.

The only stand-in is the verifier's monotonic clock (its key-cache and refresh-rate clock), which
the tests move by hand so that nothing depends on how long anything takes.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
import pytest

from stockade.errors import AuthenticationError, ConfigError, PermissionDenied
from stockade.gateway.identity import Principal
from stockade.gateway.oidc import (
    InsufficientScope,
    OidcConfig,
    OidcIdentity,
    OidcVerifier,
    looks_like_jwt,
)
from tests.gateway.issuer import AUDIENCE, LocalIssuer, TokenSigner, b64url, free_port

pytestmark = pytest.mark.anyio

ROLE_MAP = {"platform-admins": "admin", "engineers": "member"}


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(issuer_url: str, **overrides: Any) -> OidcConfig:
    return OidcConfig.load({"issuer": issuer_url, "audience": AUDIENCE, "role_map": ROLE_MAP, **overrides})


def verifier(
    issuer: LocalIssuer, http: httpx2.AsyncClient, clock: Clock | None = None, **overrides: Any
) -> OidcVerifier:
    return OidcVerifier(config(issuer.url, **overrides), http, monotonic=clock or Clock())


def stranger_token(url: str) -> str:
    """A token claiming an issuer at `url` that is not there."""
    signer = TokenSigner(url)
    return signer.token(signer.add_key("RSA"))


async def refused(v: OidcVerifier, token: str, *fragments: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await v.verify(token)
    message = caught.value.message
    for fragment in fragments:
        assert fragment in message, message
    assert token not in str(caught.value)
    return caught.value


# -- accepted tokens --------------------------------------------------------------------------


async def test_valid_rsa_token_gives_identity_with_mapped_role(
    issuer: LocalIssuer, http: httpx2.AsyncClient
) -> None:
    v = verifier(issuer, http)
    claims = issuer.claims(groups=["people", "platform-admins"])
    identity = await v.verify(issuer.sign(claims, kid=issuer.kid("RSA")))

    assert isinstance(identity, OidcIdentity)
    assert identity.member == "ada@example.com"
    assert identity.role == "admin"
    assert identity.subject == "user-1234"
    assert identity.token_id == f"oidc:{claims['jti']}"
    assert identity.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
    assert identity.scopes == {"openid", "mcp:tools"}
    principal = identity.principal()
    assert isinstance(principal, Principal)
    assert (principal.member, principal.role, principal.token_id) == (
        "ada@example.com",
        "admin",
        identity.token_id,
    )
    assert issuer.count("discovery") == 1 and issuer.count("jwks") == 1


async def test_valid_ec_token(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    identity = await verifier(issuer, http).verify(issuer.token(issuer.kid("EC")))
    assert identity.role == "member"


async def test_audience_as_list_and_role_claim_as_string(
    issuer: LocalIssuer, http: httpx2.AsyncClient
) -> None:
    v = verifier(issuer, http)
    identity = await v.verify(issuer.token(aud=["https://other.example", AUDIENCE], groups="engineers"))
    assert identity.role == "member"


async def test_first_role_map_entry_wins(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    identity = await v.verify(issuer.token(groups=["engineers", "platform-admins"]))
    assert identity.role == "admin"


async def test_member_falls_back_to_sub(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    assert (await v.verify(issuer.token(email=None))).member == "user-1234"
    # an email the provider has not verified never names a member
    assert (await v.verify(issuer.token(email_verified=False))).member == "user-1234"


async def test_custom_member_and_nested_role_claims(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http, member_claim="preferred_username", role_claim="realm_access.roles")
    identity = await v.verify(
        issuer.token(preferred_username="ada", groups=None, realm_access={"roles": ["platform-admins"]})
    )
    assert (identity.member, identity.role) == ("ada", "admin")


async def test_token_without_jti_gets_a_hash_id(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    token = issuer.token(jti=None)
    identity = await verifier(issuer, http).verify(token)
    assert identity.token_id.startswith("oidc:") and len(identity.token_id) == len("oidc:") + 32
    assert identity.token_id.removeprefix("oidc:") not in token


async def test_token_without_kid_uses_the_only_matching_key(
    issuer: LocalIssuer, http: httpx2.AsyncClient
) -> None:
    token = issuer.sign(issuer.claims(), kid=None, key_kid=issuer.kid("EC"))
    assert (await verifier(issuer, http).verify(token)).role == "member"


# -- keys: rotation, removal, refresh rate limit ---------------------------------------------


async def test_key_rotation(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    clock = Clock()
    v = verifier(issuer, http, clock, jwks_cache_seconds=600, jwks_min_refresh_seconds=30)
    old = issuer.kid("RSA")
    await v.verify(issuer.token(old))
    assert issuer.count("jwks") == 1

    new = issuer.add_key("RSA")
    clock.advance(30)  # refreshes are at least jwks_min_refresh_seconds apart, the first fetch included
    assert (await v.verify(issuer.token(new))).role == "member"  # unknown kid -> one refresh
    assert issuer.count("jwks") == 2
    await v.verify(issuer.token(old))  # still published
    assert issuer.count("jwks") == 2

    issuer.unpublish(old)
    clock.advance(600)  # the cached key set expires
    await v.verify(issuer.token(new))
    assert issuer.count("jwks") == 3
    await refused(v, issuer.token(old), "no signing key matches")


async def test_unknown_kid_refresh_is_rate_limited(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    clock = Clock()
    v = verifier(issuer, http, clock, jwks_min_refresh_seconds=30)
    await v.verify(issuer.token())
    assert issuer.count("jwks") == 1

    clock.advance(30)
    rogue = issuer.add_key("RSA", publish=False)
    bogus = [issuer.sign(issuer.claims(), kid=f"attacker-{i}", key_kid=rogue) for i in range(25)]
    failures: list[str] = []

    async def attempt(token: str) -> None:
        try:
            await v.verify(token)
        except AuthenticationError as exc:
            failures.append(exc.message)

    async with anyio.create_task_group() as tasks:
        for token in bogus[:15]:
            tasks.start_soon(attempt, token)
    for token in bogus[15:]:
        await attempt(token)
    assert len(failures) == 25 and all("no signing key matches" in f for f in failures)
    assert issuer.count("jwks") == 2  # the first unknown kid refreshed; the rest waited for the interval

    clock.advance(29)
    await attempt(bogus[0])
    assert issuer.count("jwks") == 2
    clock.advance(1)
    await attempt(bogus[0])
    assert issuer.count("jwks") == 3
    assert (await v.verify(issuer.token())).role == "member"  # known keys are unaffected


async def test_concurrent_cold_start_fetches_once(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    roles: list[str] = []

    async def one() -> None:
        roles.append((await v.verify(issuer.token())).role)

    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(one)
    assert roles == ["member"] * 10
    assert issuer.count("discovery") == 1 and issuer.count("jwks") == 1


async def test_tampered_signature_refused(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    header, _, signature = issuer.token().split(".")
    forged_payload = b64url(json.dumps(issuer.claims(groups=["platform-admins"])).encode())
    await refused(verifier(issuer, http), f"{header}.{forged_payload}.{signature}", "signature is invalid")


async def test_token_signed_by_another_key_under_a_known_kid_refused(
    issuer: LocalIssuer, http: httpx2.AsyncClient
) -> None:
    rogue = issuer.add_key("RSA", publish=False)
    token = issuer.sign(issuer.claims(), kid=issuer.kid("RSA"), key_kid=rogue)
    await refused(verifier(issuer, http), token, "signature is invalid")


# -- claims -----------------------------------------------------------------------------------


async def test_wrong_audience(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    await refused(v, issuer.token(aud="https://other.example/mcp"), "audience", AUDIENCE)
    await refused(v, issuer.token(aud=["https://a.example", "https://b.example"]), "audience")
    await refused(v, issuer.token(aud=None), "'aud'")


async def test_wrong_issuer(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    await refused(v, issuer.token(iss="https://evil.example"), "issuer (iss)")
    await refused(v, issuer.token(iss=issuer.url + "/"), "issuer (iss)")  # exact match only


async def test_expired(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    now = int(time.time())
    await refused(verifier(issuer, http), issuer.token(iat=now - 3600, exp=now - 600), "expired")


async def test_not_yet_valid(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    now = int(time.time())
    v = verifier(issuer, http)
    await refused(v, issuer.token(nbf=now + 600), "not yet valid (nbf)")
    await refused(v, issuer.token(iat=now + 600, exp=now + 900), "issued in the future (iat)")


async def test_within_clock_skew_accepted(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    now = int(time.time())
    v = verifier(issuer, http, clock_skew_seconds=120)
    # an issuer clock 60 s off either way is tolerated (half the configured skew: no timing flakes)
    assert await v.verify(issuer.token(iat=now - 360, exp=now - 60))
    assert await v.verify(issuer.token(iat=now + 60, nbf=now + 60, exp=now + 600))
    strict = verifier(issuer, http, clock_skew_seconds=0)
    await refused(strict, issuer.token(iat=now - 360, exp=now - 60), "expired")


async def test_required_claims(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    for claim in ("sub", "exp", "iat", "iss"):
        await refused(v, issuer.token(**{claim: None}), f"required claim '{claim}'")


# -- algorithms -------------------------------------------------------------------------------


async def test_alg_none_refused_without_touching_the_issuer(
    issuer: LocalIssuer, http: httpx2.AsyncClient
) -> None:
    v = verifier(issuer, http)
    token = issuer.unsigned(issuer.claims(), kid=issuer.kid("RSA"))
    assert looks_like_jwt(token)
    await refused(v, token, "algorithm 'none' is not allowed")
    await refused(v, issuer.unsigned(issuer.claims(), alg="None"), "is not allowed")
    assert issuer.count("jwks") == 0


async def test_hs256_with_public_key_as_secret_refused(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    await v.verify(issuer.token())  # keys are cached: the attack has everything it needs
    kid = issuer.kid("RSA")
    for secret in (issuer.public_pem(kid), json.dumps(issuer.public_jwk(kid)).encode()):
        await refused(
            v, issuer.hmac_signed(issuer.claims(), secret, kid=kid), "algorithm 'HS256' is not allowed"
        )


async def test_algorithm_outside_allowlist_refused(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)  # RS256 and ES256 only
    await refused(v, issuer.token(alg="PS256"), "algorithm 'PS256' is not allowed")
    # an allowed alg naming a key of another type finds no key
    token = issuer.sign(issuer.claims(), kid=issuer.kid("RSA"), alg="ES256", key_kid=issuer.kid("EC"))
    await refused(v, token, "no signing key matches")


async def test_allowlisted_ps256(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http, algorithms=["PS256"])
    # the JWKS declares RS256 for its RSA key, so PS256 finds no key bound to it
    await refused(v, issuer.token(alg="PS256"), "publishes no signing key")


# -- roles and scopes -------------------------------------------------------------------------


async def test_unmapped_group_refused(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    await refused(v, issuer.token(groups=["marketing"]), "'groups'", "maps to a Stockade role")
    await refused(v, issuer.token(groups=None), "maps to a Stockade role")


async def test_missing_required_scope(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http, required_scopes=["mcp:tools", "mcp:admin"])
    with pytest.raises(InsufficientScope) as caught:
        await v.verify(issuer.token(scope="openid mcp:tools"))
    error = caught.value
    assert isinstance(error, PermissionDenied) and error.status_code == 403
    assert error.scope == "mcp:tools mcp:admin"
    assert error.missing == ("mcp:admin",)
    assert "mcp:admin" in error.message
    challenge = error.www_authenticate("https://gateway.test/.well-known/oauth-protected-resource/mcp")
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:tools mcp:admin"' in challenge
    # `scp` as a list (as some providers send it) counts too
    identity = await v.verify(issuer.token(scope=None, scp=["mcp:tools", "mcp:admin"]))
    assert identity.scopes == {"mcp:tools", "mcp:admin"}


# -- the identity provider misbehaving ---------------------------------------------------------


async def test_issuer_down(http: httpx2.AsyncClient) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    v = OidcVerifier(config(url, http_timeout=2), http, monotonic=Clock())
    token = stranger_token(url)
    error = await refused(v, token, "identity provider unreachable")
    assert error.status_code == 401


async def test_issuer_not_answering_times_out(http: httpx2.AsyncClient) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        v = OidcVerifier(config(url, http_timeout=0.5), http, monotonic=Clock())
        await refused(v, stranger_token(url), "identity provider unreachable")


async def test_issuer_errors_then_recovers(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    clock = Clock()
    v = verifier(issuer, http, clock, jwks_min_refresh_seconds=30)
    issuer.status = 503
    await refused(v, issuer.token(), "identity provider", "HTTP 503")
    await refused(v, issuer.token(), "identity provider unreachable", "HTTP 503")  # no new request yet
    assert issuer.count("discovery") == 1
    issuer.status = 200
    clock.advance(30)
    assert (await v.verify(issuer.token())).role == "member"


async def test_cached_keys_survive_an_outage(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    clock = Clock()
    v = verifier(issuer, http, clock, jwks_cache_seconds=600)
    await v.verify(issuer.token())
    issuer.status = 500
    clock.advance(601)
    assert (await v.verify(issuer.token())).role == "member"
    error = await refused(v, issuer.token(issuer.add_key("EC")), "no signing key matches")
    assert "HTTP 500" in error.message or "refreshing keys failed" in error.message


async def test_discovery_naming_another_issuer_refused(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    issuer.discovery_issuer = "https://evil.example"
    await refused(verifier(issuer, http), issuer.token(), "does not name the configured issuer")
    assert issuer.count("jwks") == 0


# -- shape and configuration ------------------------------------------------------------------


def test_looks_like_jwt() -> None:
    header = b64url(b'{"alg":"RS256","typ":"JWT"}')
    assert looks_like_jwt(f"{header}.{b64url(b'{}')}.c2ln")
    assert not looks_like_jwt("stk_0123456789ab_" + "x" * 43)
    assert not looks_like_jwt("stk_a.b.c")
    assert not looks_like_jwt("")
    assert not looks_like_jwt(None)
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt(f"{header}.e30.c2ln.x.y")  # JWE-shaped
    assert not looks_like_jwt(f"{b64url(b'[1]')}.e30.c2ln")
    assert not looks_like_jwt(f"{b64url(b'{}')}.e30.c2ln")  # no alg
    assert not looks_like_jwt("not!base64.e30.c2ln")
    assert not looks_like_jwt(f"{header}.{'A' * 20_000}.c2ln")


async def test_malformed_tokens_refused(issuer: LocalIssuer, http: httpx2.AsyncClient) -> None:
    v = verifier(issuer, http)
    await refused(v, "stk_abc_def", "not a well-formed JWT")
    await refused(v, "garbage", "not a well-formed JWT")
    header = b64url(json.dumps({"alg": "RS256", "kid": issuer.kid("RSA"), "crit": ["exp"]}).encode())
    await refused(v, f"{header}.e30.c2ln", "token header")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"algorithms": ["none"]}, "never accepted"),
        ({"algorithms": ["RS256", "HS256"]}, "never accepted"),
        ({"algorithms": []}, "at least one algorithm"),
        ({"algorithms": ["XX999"]}, "unsupported algorithm"),
        ({"clock_skew_seconds": 301}, "clock_skew_seconds"),
        ({"issuer": "http://idp.example.com"}, "https"),
        ({"issuer": "ftp://idp.example.com"}, "https"),
        ({"issuer": "https://idp.example.com/?tenant=1"}, "query"),
        ({"role_map": {}}, "role_map"),
        ({"required_scopes": ["two words"]}, "whitespace"),
        ({"audience": ""}, "audience"),
        ({"http_timeout": 0}, "http_timeout"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_config_rejects(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config("https://idp.example.com", **overrides)
    assert fragment in caught.value.message


def test_config_defaults() -> None:
    c = config("https://idp.example.com/realms/acme")
    assert c.algorithms == ("RS256", "ES256")
    assert (c.member_claim, c.role_claim, c.clock_skew_seconds, c.jwks_cache_seconds) == (
        "email",
        "groups",
        60,
        600,
    )
    assert c.discovery_url == "https://idp.example.com/realms/acme/.well-known/openid-configuration"
    assert config("http://127.0.0.1:9000").issuer == "http://127.0.0.1:9000"
