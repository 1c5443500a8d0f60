"""Tables of the Stockade store (SQLAlchemy 2 declarative models).

Nothing secret is stored in plaintext: tokens as SHA-256 hashes, secret values sealed by
`stockade.secrets`. Audit rows carry who/what/how-long/outcome, never arguments or results.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set by offboarding: refuses the member's OIDC tokens until a token is minted for them again.
    offboarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    tokens: Mapped[list[Token]] = relationship(back_populates="member", cascade="all, delete-orphan")


class Role(Base):
    """A named set of allow/deny rules (see `stockade.gateway.policy`), stored as JSON."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    rules: Mapped[str] = mapped_column(Text)
    builtin: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ToolPin(Base):
    """The approved definition of one tool: a hash of its name, description and input schema."""

    __tablename__ = "tool_pins"

    server: Mapped[str] = mapped_column(String(40), primary_key=True)
    tool: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the server offered a different definition: the tool is hidden until re-approved.
    changed_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    member: Mapped[Member] = relationship(back_populates="tokens")


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    entry: Mapped[str] = mapped_column(String(40))
    desired_state: Mapped[str] = mapped_column(String(16), default="running")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_exit: Mapped[str | None] = mapped_column(Text, nullable=True)
    # How many instances should serve (each its own container, network and firewall rules).
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    bridge_token: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    variables: Mapped[list[DeploymentVariable]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan"
    )
    instances: Mapped[list[Instance]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", order_by="Instance.number"
    )


class Instance(Base):
    """One running copy of a deployment (a replica): the gateway routes to those `running`.

    `number` names the instance's container and network; during a rotation old and new instances
    exist side by side under different numbers. `restarts`/`last_exit` count this instance only;
    the deployment's own columns keep the totals.
    """

    __tablename__ = "instances"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    # starting | running | restarting | draining | crash-loop
    status: Mapped[str] = mapped_column(String(16), default="starting")
    endpoint: Mapped[str | None] = mapped_column(String(255), nullable=True)
    container_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_exit: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="instances")


class DeploymentVariable(Base):
    """An environment value for a deployment; always sealed, whether the catalog calls it secret or not."""

    __tablename__ = "deployment_variables"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[int] = mapped_column(Integer, default=0)
    sealed_value: Mapped[bytes] = mapped_column(LargeBinary)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="variables")


class KeyCheck(Base):
    """A value sealed with the master key at first use: a wrong key is detected, not silently used."""

    __tablename__ = "key_check"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class AuditRecord(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    member: Mapped[str | None] = mapped_column(String(64), nullable=True)
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    server: Mapped[str | None] = mapped_column(String(40), nullable=True)
    method: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str | None] = mapped_column(String(255), nullable=True)
    latency_ms: Mapped[float] = mapped_column()
    outcome: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_member_ts", "member", "ts"), Index("ix_audit_server_ts", "server", "ts"))


class RateBucket(Base):
    """A member's token bucket when several gateway processes share one database."""

    __tablename__ = "rate_buckets"

    member: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column()
    updated: Mapped[float] = mapped_column()  # seconds since the epoch, by the database's clock


class AuditAnchor(Base):
    """Where the kept audit chain starts after retention pruned older records (one row)."""

    __tablename__ = "audit_anchor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_pruned_id: Mapped[int] = mapped_column(Integer)
    last_pruned_hash: Mapped[str] = mapped_column(String(64))
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
