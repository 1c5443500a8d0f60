"""Members and their opaque bearer tokens.

A token is `stk_<id>_<secret>`; only SHA-256 of the whole string is stored (tokens are 256-bit
random, so a slow password hash would add latency to every call and no security). The id part is
public: it names the token in lists and audit records.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from stockade.errors import AuthenticationError, ConflictError, NotFoundError, ValidationFailed
from stockade.gateway.policy import Rule, parse_rules
from stockade.store.models import Member, Role, Token, utcnow

TOKEN_PREFIX = "stk_"
ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from a token on every request (so revocation is immediate)."""

    member: str
    role: str
    token_id: str
    rules: tuple[Rule, ...] = ()
    expires_at: datetime | None = None  # streams held open by this credential end then

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE


@dataclass(frozen=True)
class MintedToken:
    id: str
    member: str
    name: str
    secret: str
    expires_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_member(session: Session, name: str, role: str) -> Member:
    if session.get(Role, role) is None:
        known = ", ".join(session.scalars(select(Role.name).order_by(Role.name)))
        raise ValidationFailed(f"unknown role {role!r}", hint=f"use one of: {known}")
    if session.scalar(select(Member).where(Member.name == name)) is not None:
        raise ConflictError(f"member {name!r} already exists")
    member = Member(name=name, role=role)
    session.add(member)
    session.flush()
    return member


def get_member(session: Session, name: str) -> Member:
    member = session.scalar(select(Member).where(Member.name == name))
    if member is None:
        raise NotFoundError(f"no member named {name!r}")
    return member


def mint_token(session: Session, member: Member, *, name: str, ttl: timedelta | None) -> MintedToken:
    member.offboarded_at = None
    token_id = secrets.token_hex(6)
    secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    expires_at = utcnow() + ttl if ttl is not None else None
    session.add(Token(id=token_id, member=member, name=name, secret_hash=hash_token(secret), expires_at=expires_at))
    session.flush()
    return MintedToken(id=token_id, member=member.name, name=name, secret=secret, expires_at=expires_at)


def revoke_token(session: Session, token_id: str) -> Token:
    token = session.get(Token, token_id)
    if token is None:
        raise NotFoundError(f"no token with id {token_id!r}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def offboard_member(session: Session, name: str) -> list[str]:
    """Mark a member offboarded and revoke every token of theirs still live; the ids revoked.
    The member stays, for the audit trail; a new token makes them active again."""
    member = get_member(session, name)
    member.offboarded_at = utcnow()
    return [revoke_token(session, token.id).id for token in member.tokens if token.revoked_at is None]


# Built once: constructing the statement costs more than running it.
TOKEN_LOOKUP = (
    select(Token.id, Token.revoked_at, Token.expires_at, Member.name, Member.role, Role.rules)
    .join(Member, Token.member_id == Member.id)
    .join(Role, Role.name == Member.role)
    .where(Token.secret_hash == bindparam("secret_hash"))
)


def authenticate(db: Session | Connection, presented: str | None) -> Principal:
    """Resolve a bearer token, or raise `AuthenticationError` without saying which check failed."""
    return principal_for(presented, lambda secret_hash: db.execute(TOKEN_LOOKUP, {"secret_hash": secret_hash}).first())


def principal_for(presented: str | None, lookup: Callable[[str], Sequence[Any] | None]) -> Principal:
    """`authenticate`, with `lookup` running `TOKEN_LOOKUP` for a token's hash (the gateway runs it
    on SQLite's driver connection in place, on every request: revocation holds from the next one)."""
    if not presented or not presented.startswith(TOKEN_PREFIX):
        raise AuthenticationError("missing or malformed bearer token")
    row = lookup(hash_token(presented))
    if row is None:
        raise AuthenticationError("invalid bearer token")
    token_id, revoked_at, expires_at, member, role, rules = row
    if revoked_at is not None:
        raise AuthenticationError("token revoked")
    if expires_at is not None and expires_at <= utcnow():
        raise AuthenticationError("token expired")
    return Principal(member=member, role=role, token_id=token_id, rules=role_rules(rules), expires_at=expires_at)


def bearer_from_header(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


@functools.lru_cache(maxsize=256)
def role_rules(raw: str) -> tuple[Rule, ...]:
    """Parsed rules of a role, cached by their JSON text (so an edit takes effect at once)."""
    return tuple(parse_rules(json.loads(raw)))
