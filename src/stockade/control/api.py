"""The management API: every route needs an admin token, from localhost too.

Open routes are only `/health` and the OpenAPI document; the test suite walks the OpenAPI
document and proves every other route refuses an anonymous or non-admin caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from stockade.catalog import SLUG_PATTERN
from stockade.control.deployments import Deployments, DeploymentView
from stockade.errors import AuthenticationError, PermissionDenied, StockadeError
from stockade.gateway.audit import AuditLog, verify_database
from stockade.gateway.identity import (
    ROLES,
    Principal,
    authenticate,
    bearer_from_header,
    create_member,
    get_member,
    mint_token,
    revoke_token,
)
from stockade.store.database import Database
from stockade.store.models import AuditRecord, Member, Token


class DeployRequest(BaseModel):
    server: str = Field(description="catalog entry name")
    slug: Annotated[str, Field(pattern=SLUG_PATTERN)] | None = None
    env: dict[str, str] = Field(default_factory=dict, description="variable values; secret ones are never returned")


class DeploymentOut(BaseModel):
    slug: str
    entry: str
    status: str
    desired_state: str
    error: str | None
    variables: dict[str, datetime] = Field(description="variable name -> when it was set")
    endpoint: str = Field(description="MCP endpoint on the gateway")
    created_at: datetime
    updated_at: datetime


class MemberIn(BaseModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    role: Annotated[str, Field(pattern="^(" + "|".join(ROLES) + ")$")] = "member"


class MemberOut(BaseModel):
    name: str
    role: str
    created_at: datetime


class TokenIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = 90


class TokenOut(BaseModel):
    id: str
    member: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class MintedTokenOut(BaseModel):
    id: str
    member: str
    name: str
    expires_at: datetime | None
    token: str = Field(description="shown once; only its hash is stored")


class AuditOut(BaseModel):
    id: int
    ts: datetime
    member: str | None
    token_id: str | None
    server: str | None
    method: str
    tool: str | None
    latency_ms: float
    outcome: str
    error_code: int | None
    request_id: str | None


class ChainProblemOut(BaseModel):
    record_id: int
    problem: str


class AuditVerifyOut(BaseModel):
    ok: bool
    records: int
    problems: list[ChainProblemOut]


def _token_out(token: Token) -> TokenOut:
    return TokenOut(
        id=token.id,
        member=token.member.name,
        name=token.name,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )


def create_control_app(database: Database, deployments: Deployments, *, gateway_url: str) -> FastAPI:
    audit = AuditLog(database)

    def view(d: DeploymentView) -> DeploymentOut:
        return DeploymentOut(**d.__dict__, endpoint=f"{gateway_url}/servers/{d.slug}/mcp")

    async def require_admin(request: Request) -> Principal:
        presented = bearer_from_header(request.headers.get("authorization"))

        def lookup() -> Principal:
            with database.session() as session:
                return authenticate(session, presented)

        principal = await anyio.to_thread.run_sync(lookup)
        if not principal.is_admin:
            raise PermissionDenied("this API needs an admin token")
        return principal

    app = FastAPI(
        title="Stockade management API",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(StockadeError)
    async def stockade_error(_request: Request, exc: StockadeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationError) else None
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status_code, headers=headers)

    @app.get("/health", tags=["open"])
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)])

    @api.get("/catalog")
    async def list_catalog() -> list[dict[str, Any]]:
        return [entry.model_dump(mode="json") for entry in deployments.catalog.servers]

    @api.get("/catalog/{name}")
    async def get_catalog_entry(name: str) -> dict[str, Any]:
        return deployments.catalog.get(name).model_dump(mode="json")

    @api.post("/deployments", status_code=201)
    async def create_deployment(body: DeployRequest) -> DeploymentOut:
        created = await anyio.to_thread.run_sync(lambda: deployments.create(body.server, slug=body.slug, env=body.env))
        return view(await anyio.to_thread.run_sync(deployments.start, created.slug))

    @api.get("/deployments")
    async def list_deployments() -> list[DeploymentOut]:
        return [view(d) for d in await anyio.to_thread.run_sync(deployments.list)]

    @api.get("/deployments/{slug}")
    async def get_deployment(slug: str) -> DeploymentOut:
        return view(await anyio.to_thread.run_sync(deployments.get, slug))

    @api.delete("/deployments/{slug}", status_code=204)
    async def delete_deployment(slug: str) -> None:
        await anyio.to_thread.run_sync(deployments.remove, slug)

    @api.post("/members", status_code=201)
    async def add_member(body: MemberIn) -> MemberOut:
        def run() -> MemberOut:
            with database.session() as session:
                member = create_member(session, body.name, body.role)
                return MemberOut(name=member.name, role=member.role, created_at=member.created_at)

        return await anyio.to_thread.run_sync(run)

    @api.get("/members")
    async def list_members() -> list[MemberOut]:
        def run() -> list[MemberOut]:
            with database.session() as session:
                return [MemberOut(name=m.name, role=m.role, created_at=m.created_at) for m in session.query(Member).order_by(Member.name)]

        return await anyio.to_thread.run_sync(run)

    @api.post("/members/{name}/tokens", status_code=201)
    async def mint_member_token(name: str, body: TokenIn) -> MintedTokenOut:
        def run() -> MintedTokenOut:
            with database.session() as session:
                ttl = timedelta(days=body.expires_in_days) if body.expires_in_days else None
                minted = mint_token(session, get_member(session, name), name=body.name, ttl=ttl)
                return MintedTokenOut(id=minted.id, member=minted.member, name=minted.name, expires_at=minted.expires_at, token=minted.secret)

        return await anyio.to_thread.run_sync(run)

    @api.get("/tokens")
    async def list_tokens(member: str | None = None) -> list[TokenOut]:
        def run() -> list[TokenOut]:
            with database.session() as session:
                query = session.query(Token).join(Member).order_by(Token.created_at)
                if member is not None:
                    query = query.filter(Member.name == member)
                return [_token_out(t) for t in query]

        return await anyio.to_thread.run_sync(run)

    @api.delete("/tokens/{token_id}")
    async def revoke(token_id: str) -> TokenOut:
        def run() -> TokenOut:
            with database.session() as session:
                return _token_out(revoke_token(session, token_id))

        return await anyio.to_thread.run_sync(run)

    @api.get("/audit")
    async def query_audit(
        member: str | None = None,
        server: str | None = None,
        tool: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        records = await anyio.to_thread.run_sync(
            lambda: audit.query(member=member, server=server, tool=tool, outcome=outcome, since=since, until=until, limit=limit, after_id=after_id)
        )
        return [AuditOut.model_validate(r, from_attributes=True) for r in records]

    @api.get("/audit/verify")
    async def verify_audit() -> AuditVerifyOut:
        def run() -> AuditVerifyOut:
            with database.session() as session:
                problems = verify_database(session)
                count = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
            return AuditVerifyOut(ok=not problems, records=count, problems=[ChainProblemOut(**p.__dict__) for p in problems])

        return await anyio.to_thread.run_sync(run)

    app.include_router(api)
    return app
