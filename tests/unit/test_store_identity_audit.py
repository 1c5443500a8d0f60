"""Tokens and the audit chain against a real SQLite database (migrated with Alembic)."""

from datetime import timedelta

import pytest
from sqlalchemy import text

from stockade.errors import AuthenticationError, ConflictError, ValidationFailed
from stockade.gateway.audit import AuditEvent, AuditLog, verify_database
from stockade.gateway.identity import (
    TOKEN_LOOKUP,
    Principal,
    authenticate,
    create_member,
    hash_token,
    mint_token,
    principal_for,
    revoke_token,
)
from stockade.store.database import Database
from stockade.store.driver import DriverStatement
from stockade.store.models import Token


@pytest.fixture()
def database(database_url: str) -> Database:
    db = Database(database_url)
    db.migrate()
    yield db
    db.close()


def test_tokens_are_stored_hashed_and_checked(database: Database) -> None:
    with database.session() as session:
        minted = mint_token(session, create_member(session, "ada", "member"), name="laptop", ttl=timedelta(days=1))
    with database.session() as session:
        principal = authenticate(session, minted.secret)
        assert (principal.member, principal.role, principal.token_id) == ("ada", "member", minted.id)
        assert session.get(Token, minted.id).secret_hash == hash_token(minted.secret)
    with database.engine.connect() as connection:
        dumped = repr([list(connection.execute(text(f"SELECT * FROM {t}"))) for t in ("tokens", "members")])
    assert minted.secret not in dumped and minted.id in dumped
    with database.session() as session:
        for bad in (None, "", "stk_nope", minted.secret + "x", "Bearer " + minted.secret):
            with pytest.raises(AuthenticationError):
                authenticate(session, bad)


def test_revoked_and_expired_tokens_fail(database: Database) -> None:
    with database.session() as session:
        member = create_member(session, "bo", "member")
        revoked = mint_token(session, member, name="a", ttl=None)
        expired = mint_token(session, member, name="b", ttl=timedelta(seconds=-1))
        revoke_token(session, revoked.id)
    with database.session() as session:
        with pytest.raises(AuthenticationError, match="revoked"):
            authenticate(session, revoked.secret)
        with pytest.raises(AuthenticationError, match="expired"):
            authenticate(session, expired.secret)


def test_the_gateways_in_place_lookup_reads_what_sqlalchemy_reads(sqlite_database: Database) -> None:
    """On SQLite the gateway looks tokens up on the driver's own connection: the same principal,
    expiry (a UTC datetime) included, and the same refusals."""
    database = sqlite_database
    with database.session() as session:
        member = create_member(session, "cy", "member")
        live = mint_token(session, member, name="a", ttl=timedelta(days=1))
        revoked = mint_token(session, member, name="b", ttl=None)
        expired = mint_token(session, member, name="c", ttl=timedelta(seconds=-1))
        revoke_token(session, revoked.id)
    lookup = DriverStatement(TOKEN_LOOKUP, database.engine.dialect)
    with database.loop_connection() as connection, database.session() as session:
        def in_place(secret: str) -> Principal:
            return principal_for(secret, lambda secret_hash: lookup.first(connection, {"secret_hash": secret_hash}))

        principal = in_place(live.secret)
        assert principal == authenticate(session, live.secret)
        assert principal.expires_at is not None and principal.expires_at.utcoffset() == timedelta(0)
        for secret, refusal in ((revoked.secret, "revoked"), (expired.secret, "expired"), (live.secret + "x", "invalid")):
            with pytest.raises(AuthenticationError, match=refusal):
                in_place(secret)


def test_member_validation(database: Database) -> None:
    with database.session() as session:
        create_member(session, "cy", "admin")
    with pytest.raises(ConflictError):
        with database.session() as session:
            create_member(session, "cy", "member")
    with pytest.raises(ValidationFailed, match="unknown role"):
        with database.session() as session:
            create_member(session, "dee", "root")


def _fill(log: AuditLog, count: int) -> None:
    for i in range(count):
        log.append(AuditEvent(member="ada", token_id="t1", server="time", method="tools/call",
                              tool="get_current_time", latency_ms=1.5 + i, outcome="ok", request_id=str(i)))


def test_audit_chain_detects_edit_insert_and_delete(database: Database) -> None:
    log = AuditLog(database)
    _fill(log, 5)
    with database.session() as session:
        assert verify_database(session) == []

    with database.engine.begin() as connection:
        connection.execute(text("UPDATE audit SET outcome = 'denied' WHERE id = 2"))
    with database.session() as session:
        problems = verify_database(session)
    assert [(p.record_id, p.problem.split(":")[0]) for p in problems] == [(2, "edited")]

    with database.engine.begin() as connection:
        connection.execute(text("UPDATE audit SET outcome = 'ok' WHERE id = 2"))
        connection.execute(text("DELETE FROM audit WHERE id = 4"))
    with database.session() as session:
        problems = verify_database(session)
    assert [p.record_id for p in problems] == [5] and "deleted" in problems[0].problem

    with database.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO audit (id, ts, member, method, latency_ms, outcome, prev_hash, hash) "
            "SELECT 4, ts, 'mallory', method, 1, 'ok', prev_hash, hash FROM audit WHERE id = 3"))
    with database.session() as session:
        problems = verify_database(session)
    assert {p.record_id for p in problems} == {4, 5}


def test_audit_records_hold_no_arguments(database: Database) -> None:
    log = AuditLog(database)
    _fill(log, 1)
    record = log.query(member="ada")[0]
    assert {c.name for c in record.__table__.columns} == {
        "id", "ts", "member", "token_id", "server", "method", "tool", "latency_ms", "outcome",
        "error_code", "request_id", "prev_hash", "hash"}
    assert log.query(member="nobody") == []
    assert [r.id for r in log.query(server="time", tool="get_current_time", outcome="ok")] == [1]


def test_retention_prunes_and_the_chain_still_verifies(database: Database) -> None:
    log = AuditLog(database)
    _fill(log, 6)
    with database.engine.begin() as connection:  # age the first four records
        connection.execute(text("UPDATE audit SET ts = ts - INTERVAL '400 days' WHERE id <= 4")
                           if database.engine.dialect.name == "postgresql"
                           else text("UPDATE audit SET ts = datetime(ts, '-400 days') WHERE id <= 4"))
    # the aged records' hashes no longer match their (edited) times: re-hash them as if written then
    with database.session() as session:
        from stockade.gateway.audit import record_digest
        from stockade.store.models import AuditRecord

        previous = "0" * 64
        for record in session.query(AuditRecord).order_by(AuditRecord.id):
            record.prev_hash = previous
            record.hash = record_digest(record)
            previous = record.hash
    from datetime import UTC, datetime

    assert log.prune(datetime.now(UTC) - timedelta(days=365)) == 4
    assert [r.id for r in log.query()] == [5, 6]
    with database.session() as session:
        assert verify_database(session) == []
    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit WHERE id = 5"))
    with database.session() as session:
        assert [p.record_id for p in verify_database(session)] == [6]
    assert "".join(line.decode() for line in log.export_lines()).count("\n") == 1
