"""The management API: every route needs an admin token, from localhost too.

Open routes are only `/health` and the OpenAPI document; the test suite walks the OpenAPI
document and proves every other route refuses an anonymous or non-admin caller.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from stockade import metrics
from stockade.catalog import SLUG_PATTERN, NetworkProfile
from stockade.control.deployments import Deployments, DeploymentView
from stockade.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDenied, StockadeError
from stockade.gateway.app import Gateway
from stockade.gateway.audit import AuditEvent, verify_database
from stockade.gateway.identity import (
    ADMIN_ROLE,
    Principal,
    authenticate,
    bearer_from_header,
    create_member,
    get_member,
    mint_token,
    revoke_token,
    role_rules,
)
from stockade.store.database import Database
from stockade.store.models import AuditRecord, Member, Role, Token, utcnow
from stockade.web import create_dashboard_router


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
    restarts: int = Field(description="times the container died and was restarted")
    last_exit: str | None = Field(description="why it last died, e.g. 'out of memory'")
    variables: dict[str, datetime] = Field(description="variable name -> when it was set")
    endpoint: str = Field(description="MCP endpoint on the gateway")
    warning: str | None = Field(default=None, description="set for the `open` network profile")
    created_at: datetime
    updated_at: datetime


class VariablesIn(BaseModel):
    env: dict[str, str] = Field(min_length=1, description="NAME -> value; values are never returned")


class VariableOut(BaseModel):
    name: str
    secret: bool
    set_at: datetime


class ResourceUseOut(BaseModel):
    memory_bytes: int
    memory_limit_bytes: int
    cpu_percent: float
    pids: int


class MemberIn(BaseModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    role: Annotated[str, Field(pattern=ROLE_PATTERN)] = "member"


ROLE_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"


class RuleModel(BaseModel):
    effect: Literal["allow", "deny"]
    server: Annotated[str, Field(min_length=1)] = "*"
    kind: Literal["tool", "prompt", "resource", "*"] = "*"
    name: Annotated[str, Field(min_length=1)] = "*"


class RoleIn(BaseModel):
    rules: list[RuleModel] = Field(description="deny beats allow; nothing matching means no")


class RoleOut(BaseModel):
    name: str
    builtin: bool
    rules: list[RuleModel]
    updated_at: datetime


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


class RevokedOut(TokenOut):
    streams_closed: int
    sessions_closed: int


class OffboardOut(BaseModel):
    member: str
    tokens_revoked: list[str]
    streams_closed: int
    sessions_closed: int


class ToolPinOut(BaseModel):
    tool: str
    status: Literal["approved", "changed", "unapproved"]
    approved_at: datetime | None
    changed_at: datetime | None


class ApproveIn(BaseModel):
    tools: list[str] | None = Field(default=None, description="names to approve; all when omitted")


@dataclass
class AuditFilters:
    """The audit query parameters shared by listing and export."""

    member: str | None = None
    server: str | None = None
    tool: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ChainProblemOut(BaseModel):
    record_id: int
    problem: str


class AuditVerifyOut(BaseModel):
    ok: bool
    records: int
    problems: list[ChainProblemOut]


def _role_out(role: Role) -> RoleOut:
    rules = [RuleModel(**r.as_dict()) for r in role_rules(role.rules)]
    return RoleOut(name=role.name, builtin=bool(role.builtin), rules=rules, updated_at=role.updated_at)


def _token_out(token: Token) -> TokenOut:
    return TokenOut(
        id=token.id,
        member=token.member.name,
        name=token.name,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )


def create_control_app(
    database: Database,
    deployments: Deployments,
    gateway: Gateway,
    *,
    data_dir: pathlib.Path,
    verify: Callable[[], object] | None = None,
) -> FastAPI:
    audit = gateway.audit
    gateway_url = gateway.public_url

    async def record_admin_action(principal: Principal, method: str, server: str | None, tool: str | None) -> None:
        event = AuditEvent(member=principal.member, token_id=principal.token_id, server=server, method=method,
                           tool=tool, latency_ms=0.0, outcome="ok")
        await anyio.to_thread.run_sync(audit.append, event)

    def view(d: DeploymentView) -> DeploymentOut:
        entry = deployments.catalog.get(d.entry)
        warning = (f"WARNING: {d.slug!r} runs with the `open` network profile: it can reach any address on the "
                   "internet (never the host or other servers)") if entry.network is NetworkProfile.open else None
        return DeploymentOut(**d.__dict__, endpoint=f"{gateway_url}/servers/{d.slug}/mcp", warning=warning)

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

    @api.post("/deployments/{slug}/stop")
    async def stop_deployment(slug: str) -> DeploymentOut:
        return view(await anyio.to_thread.run_sync(deployments.stop, slug))

    @api.post("/deployments/{slug}/restart")
    async def restart_deployment(slug: str) -> DeploymentOut:
        """Start a stopped deployment, or replace a running one with a fresh container."""
        return view(await anyio.to_thread.run_sync(deployments.start, slug))

    @api.get("/deployments/{slug}/variables")
    async def list_variables(slug: str) -> list[VariableOut]:
        """Names, whether secret, and when each was set: never a value."""
        def run() -> list[VariableOut]:
            view_ = deployments.get(slug)
            entry = deployments.catalog.get(view_.entry)
            secret = entry.secret_env_names
            return [VariableOut(name=name, secret=name in secret, set_at=at) for name, at in sorted(view_.variables.items())]

        return await anyio.to_thread.run_sync(run)

    @api.put("/deployments/{slug}/variables")
    async def set_variables(slug: str, body: VariablesIn) -> DeploymentOut:
        """Set values (sealed at once); the server gets them when it next starts (see :rotate)."""
        return view(await anyio.to_thread.run_sync(lambda: deployments.set_variables(slug, body.env)))

    @api.post("/deployments/{slug}/variables:rotate")
    async def rotate_variables(slug: str, body: VariablesIn) -> DeploymentOut:
        """Set values and move the server onto them with a fresh container."""
        return view(await anyio.to_thread.run_sync(lambda: deployments.rotate(slug, body.env)))

    @api.get("/deployments/{slug}/resources")
    async def deployment_resources(slug: str) -> ResourceUseOut:
        """Memory, CPU and process count of the server's container now."""
        use = await anyio.to_thread.run_sync(deployments.resource_use, slug)
        if use is None:
            raise ConflictError(f"{slug!r} has no running container")
        return ResourceUseOut(**use.__dict__)

    @api.get("/deployments/{slug}/logs", response_class=PlainTextResponse)
    async def deployment_logs(slug: str, tail: Annotated[int, Query(ge=1, le=5000)] = 200) -> PlainTextResponse:
        """The container's recent output (bounded), secret values redacted."""
        text = await anyio.to_thread.run_sync(lambda: deployments.logs(slug, tail=tail))
        return PlainTextResponse(text)

    @api.delete("/deployments/{slug}", status_code=204)
    async def delete_deployment(slug: str) -> None:
        await anyio.to_thread.run_sync(deployments.remove, slug)

    @api.get("/roles")
    async def list_roles() -> list[RoleOut]:
        def run() -> list[RoleOut]:
            with database.session() as session:
                return [_role_out(r) for r in session.scalars(select(Role).order_by(Role.name))]

        return await anyio.to_thread.run_sync(run)

    @api.put("/roles/{name}")
    async def put_role(name: Annotated[str, Path(pattern=ROLE_PATTERN)], body: RoleIn) -> RoleOut:
        def run() -> RoleOut:
            with database.session() as session:
                if name == ADMIN_ROLE:
                    raise ConflictError("the admin role is built in and cannot be changed")
                role = session.get(Role, name) or Role(name=name, builtin=0)
                role.rules = json.dumps([r.model_dump() for r in body.rules])
                session.add(role)
                session.flush()
                return _role_out(role)

        return await anyio.to_thread.run_sync(run)

    @api.delete("/roles/{name}", status_code=204)
    async def delete_role(name: str) -> None:
        def run() -> None:
            with database.session() as session:
                role = session.get(Role, name)
                if role is None:
                    raise NotFoundError(f"no role named {name!r}")
                if role.builtin:
                    raise ConflictError(f"role {name!r} is built in and cannot be removed")
                users = list(session.scalars(select(Member.name).where(Member.role == name)))
                if users:
                    raise ConflictError(f"role {name!r} is still held by: {', '.join(users)}")
                session.delete(role)

        await anyio.to_thread.run_sync(run)

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
    async def revoke(token_id: str) -> RevokedOut:
        def run() -> TokenOut:
            with database.session() as session:
                return _token_out(revoke_token(session, token_id))

        token = await anyio.to_thread.run_sync(run)
        closed = await gateway.close_token(token_id)
        return RevokedOut(**token.model_dump(), streams_closed=closed.streams, sessions_closed=closed.sessions)

    @api.post("/members/{name}/offboard")
    async def offboard(name: str) -> OffboardOut:
        """Revoke every token of a member and close what they hold open; the member stays for audit."""
        def run() -> list[str]:
            with database.session() as session:
                member = get_member(session, name)
                member.offboarded_at = utcnow()
                return [revoke_token(session, token.id).id for token in member.tokens if token.revoked_at is None]

        revoked = await anyio.to_thread.run_sync(run)
        streams = sessions = 0
        for token_id in revoked:
            closed = await gateway.close_token(token_id)
            streams, sessions = streams + closed.streams, sessions + closed.sessions
        return OffboardOut(member=name, tokens_revoked=revoked, streams_closed=streams, sessions_closed=sessions)

    @api.delete("/members/{name}")
    async def remove_member(name: str, principal: Principal = Depends(require_admin)) -> OffboardOut:
        """Remove a member: their tokens are revoked first, then the member is deleted."""
        if name == principal.member:
            raise ConflictError("you cannot remove yourself", hint="ask another admin")
        result = await offboard(name)

        def run() -> None:
            with database.session() as session:
                session.delete(get_member(session, name))

        await anyio.to_thread.run_sync(run)
        return result

    @api.get("/servers/{slug}/tools")
    async def tool_pins(slug: str) -> list[ToolPinOut]:
        def run() -> list[ToolPinOut]:
            deployments.get(slug)
            return [
                ToolPinOut(tool=p.tool, status=("unapproved" if not p.digest else "changed" if p.changed_digest else "approved"),
                           approved_at=p.approved_at if p.digest else None, changed_at=p.changed_at)
                for p in gateway.pins.listing(slug)
            ]

        return await anyio.to_thread.run_sync(run)

    @api.post("/servers/{slug}/tools/approve")
    async def approve_tools(slug: str, body: ApproveIn, principal: Principal = Depends(require_admin)) -> list[str]:
        """Pin the definitions the server offers now (all tools, or those named)."""
        only = set(body.tools) if body.tools is not None else None
        approved = await anyio.to_thread.run_sync(lambda: deployments.approve_tools(slug, only))
        for tool in approved:
            await record_admin_action(principal, "tools/approve", slug, tool)
        return approved

    @api.get("/audit")
    async def query_audit(
        filters: AuditFilters = Depends(),
        after_id: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        records = await anyio.to_thread.run_sync(lambda: audit.query(**vars(filters), limit=limit, after_id=after_id))
        return [AuditOut.model_validate(r, from_attributes=True) for r in records]

    @api.get("/audit/export", response_class=StreamingResponse)
    async def export_audit(filters: AuditFilters = Depends()) -> StreamingResponse:
        """Every matching record as JSON Lines (hashes included, so an export can be verified)."""
        return StreamingResponse(iterate_in_threadpool(audit.export_lines(**vars(filters))), media_type="application/jsonl")

    @api.post("/audit/prune")
    async def prune_audit(older_than_days: Annotated[int, Query(ge=1, le=36500)]) -> dict[str, int]:
        """Delete records older than the given age now (the retention setting does this hourly)."""
        cutoff = utcnow() - timedelta(days=older_than_days)
        return {"deleted": await anyio.to_thread.run_sync(audit.prune, cutoff)}

    @api.get("/audit/verify")
    async def verify_audit() -> AuditVerifyOut:
        def run() -> AuditVerifyOut:
            with database.session() as session:
                problems = verify_database(session)
                count = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
            return AuditVerifyOut(ok=not problems, records=count, problems=[ChainProblemOut(**p.__dict__) for p in problems])

        return await anyio.to_thread.run_sync(run)

    @api.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def prometheus_metrics() -> PlainTextResponse:
        """Prometheus exposition format; scrape with the admin token as a bearer credential."""
        metrics.ACTIVE_SESSIONS.set(gateway.streams.session_count())
        return PlainTextResponse(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api)
    app.include_router(create_dashboard_router(database, deployments, gateway, data_dir=data_dir, verify=verify), prefix="/ui")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app
