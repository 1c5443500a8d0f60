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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import func, select
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match

from stockade import metrics
from stockade.catalog import MAX_REPLICAS, SLUG_PATTERN, NetworkProfile
from stockade.control.deployments import Deployments, DeploymentView
from stockade.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDenied,
    StockadeError,
    ValidationFailed,
)
from stockade.gateway.app import Gateway
from stockade.gateway.audit import MAX_AUDIT_ID, AuditEvent, verify_database
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


class ErrorOut(BaseModel):
    """The body of every error answer: what went wrong and, where there is one, what to do."""

    error: str
    hint: str | None


_ERROR_MEANINGS = {
    400: "the body is not readable as JSON (e.g. not UTF-8)",
    401: "missing, unknown, revoked or expired token",
    403: "the token is not an admin's",
    404: "nothing by that name",
    409: "not possible in the current state",
    422: "the request is not valid",
    502: "the server's container did not start or answer",
    503: "the container engine is unreachable",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route answers with.

    Declaring 422 also replaces FastAPI's own validation-error schema: this API answers bad
    input with an `ErrorOut` too.
    """
    return {status: {"model": ErrorOut, "description": _ERROR_MEANINGS[status]} for status in statuses}


# Routes answering text say so themselves: with `response_class=PlainTextResponse` FastAPI would
# document their JSON error bodies as text/plain too.
_TEXT: dict[int | str, dict[str, Any]] = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}


def _iso_datetime(value: object) -> object:
    # pydantic also reads numbers as Unix times, so `until=0.5` would silently mean 1970
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("use an ISO 8601 time, e.g. 2026-11-01T00:00:00Z") from None
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime)]

class DeployRequest(BaseModel):
    server: str = Field(description="catalog entry name")
    slug: Annotated[str, Field(pattern=SLUG_PATTERN)] | None = None
    env: dict[str, str] = Field(default_factory=dict, description="variable values; secret ones are never returned")
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] | None = Field(
        default=None, description="instances to run (default: the catalog entry's, usually 1)")


class ScaleIn(BaseModel):
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] = Field(description="instances to run")


class InstanceOut(BaseModel):
    """One replica of a deployment; the gateway routes calls to those `running`."""

    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="names its container: stockade-<owner>-<slug>[.<number>]")
    status: str = Field(description="starting | running | restarting | draining | crash-loop")
    restarts: int = Field(description="times this instance's container or server process died and was restarted")
    last_exit: str | None
    error: str | None
    updated_at: datetime


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
    replicas: int = Field(description="instances that should run")
    instances: list[InstanceOut] = Field(description="the instances that exist now, with their health")


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


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


async def refuse_nul(request: Request) -> None:
    """PostgreSQL text cannot hold a NUL character (SQLite can): refuse it up front, in the path, the
    query or a JSON body, so both stores answer the same clear 422 instead of a database error."""
    if "\x00" in request.scope.get("path", "") or any(
            _holds_nul(key) or _holds_nul(value) for key, value in request.query_params.multi_items()):
        raise ValidationFailed("the request holds a NUL character", hint="remove it; no name or value may contain one")
    body = await request.body()
    if body and b"\\u0000" in body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return  # not JSON: the route's own validation answers
        if _holds_nul(parsed):
            raise ValidationFailed("the request holds a NUL character", hint="remove it; no name or value may contain one")


@dataclass
class AuditFilters:
    """The audit query parameters shared by listing and export."""

    member: str | None = None
    server: str | None = None
    tool: str | None = None
    outcome: str | None = None
    since: IsoDatetime | None = None
    until: IsoDatetime | None = None


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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # the message names each bad field but never echoes its value (it may be a secret)
        problems = [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        body = ErrorOut(error=f"invalid request: {'; '.join(problems[:5])}{more}",
                        hint="/api/openapi.json describes what each route accepts")
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route on the path; `Allow` must list all
            methods = {method for route in request.app.router.routes if route.matches(request.scope)[0] is not Match.NONE
                       for method in getattr(route, "methods", None) or ()}
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse(ErrorOut(error=str(exc.detail), hint=None).model_dump(), status_code=exc.status_code,
                            headers=headers)

    @app.get("/health", tags=["open"])
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    # Any route may refuse a caller or input; those without a body or parameters never answer 400 or 422.
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin), Depends(refuse_nul)],
                    responses=_errors(400, 401, 403, 422))

    @api.get("/catalog")
    async def list_catalog() -> list[dict[str, Any]]:
        return [entry.model_dump(mode="json") for entry in deployments.catalog.servers]

    @api.get("/catalog/{name}", responses=_errors(404))
    async def get_catalog_entry(name: str) -> dict[str, Any]:
        return deployments.catalog.get(name).model_dump(mode="json")

    @api.post("/deployments", status_code=201, responses=_errors(404, 409, 502, 503))
    async def create_deployment(body: DeployRequest) -> DeploymentOut:
        created = await anyio.to_thread.run_sync(
            lambda: deployments.create(body.server, slug=body.slug, env=body.env, replicas=body.replicas))
        return view(await anyio.to_thread.run_sync(deployments.start, created.slug))

    @api.get("/deployments")
    async def list_deployments() -> list[DeploymentOut]:
        return [view(d) for d in await anyio.to_thread.run_sync(deployments.list)]

    @api.get("/deployments/{slug}", responses=_errors(404))
    async def get_deployment(slug: str) -> DeploymentOut:
        return view(await anyio.to_thread.run_sync(deployments.get, slug))

    @api.post("/deployments/{slug}/stop", responses=_errors(404, 503))
    async def stop_deployment(slug: str) -> DeploymentOut:
        return view(await anyio.to_thread.run_sync(deployments.stop, slug))

    @api.post("/deployments/{slug}/restart", responses=_errors(404, 502, 503))
    async def restart_deployment(slug: str) -> DeploymentOut:
        """Start a stopped deployment, or replace a running one with fresh containers (blue/green)."""
        return view(await anyio.to_thread.run_sync(deployments.start, slug))

    @api.post("/deployments/{slug}/scale", responses=_errors(404, 422, 502, 503))
    async def scale_deployment(slug: str, body: ScaleIn) -> DeploymentOut:
        """Run this many instances: new ones join once ready, surplus ones finish their calls first."""
        return view(await anyio.to_thread.run_sync(lambda: deployments.scale(slug, body.replicas)))

    @api.get("/deployments/{slug}/variables", responses=_errors(404))
    async def list_variables(slug: str) -> list[VariableOut]:
        """Names, whether secret, and when each was set: never a value."""
        def run() -> list[VariableOut]:
            view_ = deployments.get(slug)
            entry = deployments.catalog.get(view_.entry)
            secret = entry.secret_env_names
            return [VariableOut(name=name, secret=name in secret, set_at=at) for name, at in sorted(view_.variables.items())]

        return await anyio.to_thread.run_sync(run)

    @api.put("/deployments/{slug}/variables", responses=_errors(404))
    async def set_variables(slug: str, body: VariablesIn) -> DeploymentOut:
        """Set values (sealed at once); the server gets them when it next starts (see :rotate)."""
        return view(await anyio.to_thread.run_sync(lambda: deployments.set_variables(slug, body.env)))

    @api.post("/deployments/{slug}/variables:rotate", responses=_errors(404, 502, 503))
    async def rotate_variables(slug: str, body: VariablesIn) -> DeploymentOut:
        """Set values and move the server onto them without dropping calls: new instances start with
        them, the gateway switches once they are ready, then the old ones finish their calls and go."""
        return view(await anyio.to_thread.run_sync(lambda: deployments.rotate(slug, body.env)))

    @api.get("/deployments/{slug}/resources", responses=_errors(404, 409, 503))
    async def deployment_resources(slug: str) -> ResourceUseOut:
        """Memory, CPU and process count of the server's container now."""
        use = await anyio.to_thread.run_sync(deployments.resource_use, slug)
        if use is None:
            raise ConflictError(f"{slug!r} has no running container")
        return ResourceUseOut(**use.__dict__)

    @api.get("/deployments/{slug}/logs", response_class=Response, responses={**_TEXT, **_errors(404, 503)})
    async def deployment_logs(slug: str, tail: Annotated[int, Query(ge=1, le=5000)] = 200) -> PlainTextResponse:
        """The container's recent output (bounded), secret values redacted."""
        text = await anyio.to_thread.run_sync(lambda: deployments.logs(slug, tail=tail))
        return PlainTextResponse(text)

    @api.delete("/deployments/{slug}", status_code=204, responses=_errors(404, 503))
    async def delete_deployment(slug: str) -> None:
        await anyio.to_thread.run_sync(deployments.remove, slug)

    @api.get("/roles")
    async def list_roles() -> list[RoleOut]:
        def run() -> list[RoleOut]:
            with database.session() as session:
                return [_role_out(r) for r in session.scalars(select(Role).order_by(Role.name))]

        return await anyio.to_thread.run_sync(run)

    @api.put("/roles/{name}", responses=_errors(409))
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

    @api.delete("/roles/{name}", status_code=204, responses=_errors(404, 409))
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

    @api.post("/members", status_code=201, responses=_errors(409))
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

    @api.post("/members/{name}/tokens", status_code=201, responses=_errors(404))
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

    @api.delete("/tokens/{token_id}", responses=_errors(404))
    async def revoke(token_id: str) -> RevokedOut:
        def run() -> TokenOut:
            with database.session() as session:
                return _token_out(revoke_token(session, token_id))

        token = await anyio.to_thread.run_sync(run)
        closed = await gateway.close_token(token_id)
        return RevokedOut(**token.model_dump(), streams_closed=closed.streams, sessions_closed=closed.sessions)

    @api.post("/members/{name}/offboard", responses=_errors(404))
    async def offboard(name: str) -> OffboardOut:
        """Revoke every token of a member and close what they hold open; the member stays for audit."""
        revoked, closed = await gateway.offboard(name)
        return OffboardOut(member=name, tokens_revoked=revoked, streams_closed=closed.streams,
                           sessions_closed=closed.sessions)

    @api.delete("/members/{name}", responses=_errors(404, 409))
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

    @api.get("/servers/{slug}/tools", responses=_errors(404))
    async def tool_pins(slug: str) -> list[ToolPinOut]:
        def run() -> list[ToolPinOut]:
            deployments.get(slug)
            return [
                ToolPinOut(tool=p.tool, status=("unapproved" if not p.digest else "changed" if p.changed_digest else "approved"),
                           approved_at=p.approved_at if p.digest else None, changed_at=p.changed_at)
                for p in gateway.pins.listing(slug)
            ]

        return await anyio.to_thread.run_sync(run)

    @api.post("/servers/{slug}/tools/approve", responses=_errors(404, 409, 502))
    async def approve_tools(slug: str, body: ApproveIn, principal: Principal = Depends(require_admin)) -> list[str]:
        """Pin the definitions the server offers now (all tools, or those named)."""
        only = set(body.tools) if body.tools is not None else None
        # The gateway's directory: the same servers callers reach (on Kubernetes, found through Services).
        upstream = await gateway.directory.resolve(slug)
        if upstream is None:
            raise NotFoundError(f"no running server named {slug!r}", hint="list them with `stockade servers`")
        approved = await anyio.to_thread.run_sync(lambda: gateway.pins.approve(slug, deployments.fetch_tools(upstream), only=only))
        for tool in approved:
            await record_admin_action(principal, "tools/approve", slug, tool)
        return approved

    @api.get("/audit")
    async def query_audit(
        filters: AuditFilters = Depends(),
        after_id: Annotated[int, Query(ge=0, le=MAX_AUDIT_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        records = await anyio.to_thread.run_sync(lambda: audit.query(**vars(filters), limit=limit, after_id=after_id))
        return [AuditOut.model_validate(r, from_attributes=True) for r in records]

    @api.get("/audit/export", response_class=StreamingResponse,
             responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}})
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

    @api.get("/metrics", response_class=Response, responses=_TEXT, tags=["operations"])
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
