"""The web dashboard: server-rendered pages over the same services as the management API.

Mounted by the management app at `/ui`. Every page does what an API route does, through the same
Python services (never by HTTP to itself). Security model:

* Sign-in opens a server-side session, either from an admin token (the session keeps only the
  token's id, and every request re-checks that token: revoked, expired or no longer an admin ends
  the session) or through the OIDC issuer (`oidc_login.py`: code flow with PKCE, the ID token's
  role must map to admin; the member must not be offboarded, checked on every request).
  The cookie holds a random id (only its hash is kept server-side), is `HttpOnly`,
  `SameSite=Strict`, `Secure` on https, and expires (idle and absolute limits).
* Every form carries a per-session CSRF token, compared in constant time. The login form, which
  has no session yet, uses a signed double-submit cookie instead.
* Every response carries a strict Content-Security-Policy; pages have no inline script or style.
* Secret values are accepted once (deploy form) and never rendered, logged or echoed in errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from stockade import metrics
from stockade.catalog import SLUG_PATTERN, CatalogEntry, NetworkProfile, ResourceLimits
from stockade.control.deployments import Deployments, DeploymentView
from stockade.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    PermissionDenied,
    StockadeError,
    ValidationFailed,
)
from stockade.gateway.app import Gateway
from stockade.gateway.audit import MAX_AUDIT_ID, verify_database
from stockade.gateway.identity import (
    ADMIN_ROLE,
    authenticate,
    create_member,
    get_member,
    mint_token,
    revoke_token,
)
from stockade.logs import REDACTOR
from stockade.orchestrator.runtime import ResourceUse
from stockade.store.database import Database
from stockade.store.models import AuditRecord, Member, Role, Token, utcnow
from stockade.web.charts import bucket_audit, svg_chart
from stockade.web.oidc_login import LOGIN_TTL_SECONDS, OidcClient, OidcLogin
from stockade.web.sessions import SESSION_MAX_SECONDS, SessionStore, WebSession
from stockade.web.verification import read_verify_results

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

SESSION_COOKIE = "stockade_session"
LOGIN_COOKIE = "stockade_login"
OIDC_COOKIE = "stockade_oidc"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

MEMBER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
TOKEN_TTLS = {"7": 7, "30": 30, "90": 90, "365": 365, "never": None}
AUDIT_PAGE_SIZES = (25, 50, 100, 250)
CHART_WINDOWS = {"1h": (timedelta(hours=1), 12), "24h": (timedelta(hours=24), 24), "7d": (timedelta(days=7), 28)}
CHART_MAX_ROWS = 200_000
BUSY_STATES = {"pending", "deploying", "restarting"}
LOG_TAILS = (50, 200, 1000)  # lines of a server's output the log page may show
LOG_TAIL_DEFAULT = 200


# -- control flow inside handlers ----------------------------------------------------------------
class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class _LoginRequired(Exception):
    pass


class _CsrfRefused(Exception):
    pass


class _UIRoute(APIRoute):
    """Adds the security headers to every response and renders errors as pages, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        original = super().get_route_handler()
        dashboard: Dashboard = self.endpoint.__dashboard__  # type: ignore[attr-defined]

        async def handler(request: Request) -> Response:
            try:
                response = await original(request)
            except _Redirect as redirect:
                response = _see_other(request, redirect.location)
            except _LoginRequired:
                response = dashboard.login_redirect(request)
            except _CsrfRefused:
                response = dashboard.error_page(request, 403, "Request refused",
                                                "The form was missing its security token or the token did not match. "
                                                "Reload the page and try again.")
            except StockadeError as exc:
                response = dashboard.error_page(request, exc.status_code, "Something went wrong", exc.message, exc.hint)
            except (RequestValidationError, HTTPException) as exc:
                status = exc.status_code if isinstance(exc, HTTPException) else 422
                response = dashboard.error_page(request, status, "Request not understood",
                                                "The request was not understood.")
            secure_headers(response)
            return response

        return handler


def secure_headers(response: Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if not response.headers.get("cache-control"):
        response.headers["Cache-Control"] = "no-store"


def _see_other(request: Request, location: str) -> Response:
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def _is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_date(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def _parse_time(raw: str | None) -> datetime | None:
    """A `datetime-local` value (or ISO 8601) as UTC; raises ValueError when malformed."""
    if not raw:
        return None
    parsed = datetime.fromisoformat(raw.strip())
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


# -- the dashboard ---------------------------------------------------------------------------------
class Dashboard:
    def __init__(self, database: Database, deployments: Deployments, gateway: Gateway, *, data_dir: Path | None,
                 login: OidcLogin | None) -> None:
        self.database = database
        self.deployments = deployments
        self.gateway = gateway
        self._data_dir = data_dir
        self.oidc = login
        self.sessions = SessionStore()
        self._login_key = secrets.token_bytes(32)
        self._starting: set[str] = set()
        self._starting_lock = threading.Lock()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html", "svg"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["time"] = _fmt_time
        self.templates.filters["date"] = _fmt_date
        # Errors and flashes can quote what a server printed: registered secret values never reach a page.
        self.templates.filters["redact"] = lambda text: REDACTOR.redact(str(text)) if text is not None else ""
        self.static_versions = {
            name: hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12] for name in STATIC_TYPES
        }

    # -- where things live --------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path | None:
        if self._data_dir is None:
            from stockade.config import load_settings

            try:
                self._data_dir = load_settings().data_dir
            except StockadeError:
                return None
        return self._data_dir

    # -- rendering -----------------------------------------------------------------------------------
    def url(self, request: Request, route_name: str, /, **params: Any) -> str:
        return request.scope.get("root_path", "") + str(request.app.url_path_for(route_name, **params))

    def render(self, request: Request, template: str, web: WebSession | None = None, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        flashes, once = [], {}
        if web is not None:
            flashes, web.flashes = web.flashes, []
            once, web.once = web.once, {}

        def url(route_name: str, /, **params: Any) -> str:
            return self.url(request, route_name, **params)

        def static(name: str) -> str:
            return f"{url('ui_static', name=name)}?v={self.static_versions[name]}"

        html = self.templates.get_template(template).render(
            request=request, web=web, flashes=flashes, once=once, url=url, static=static,
            csrf_field=CSRF_FIELD, csrf=web.csrf if web is not None else "", **context,
        )
        return HTMLResponse(html, status_code=status)

    def error_page(self, request: Request, status: int, title: str, message: str, hint: str | None = None) -> Response:
        web = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        return self.render(request, "error.html", web, status=status, title=title, message=message, hint=hint)

    def cookie_path(self, request: Request) -> str:
        return self.url(request, "ui_home").rstrip("/") or "/"

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path
        if request.url.query and request.method == "GET":
            target += "?" + request.url.query
        location = self.url(request, "ui_login")
        if request.method == "GET" and request.headers.get("hx-request") != "true":
            location += "?" + urlencode({"next": target})
        response = _see_other(request, location)
        response.delete_cookie(SESSION_COOKIE, path=self.cookie_path(request), httponly=True, samesite="strict",
                               secure=_is_https(request))
        return response

    # -- authentication -------------------------------------------------------------------------------
    def _still_valid(self, web: WebSession) -> bool:
        """The token that opened the session must still be live and still an admin's.

        An OIDC session has no token here to re-check (an ID token cannot be revoked): it lasts its
        idle and absolute limits unless the member is offboarded meanwhile.
        """
        if web.source == "oidc":
            return self.still_member(web.member)
        with self.database.session() as session:
            row = session.execute(
                select(Token.revoked_at, Token.expires_at, Member)
                .join(Member, Token.member_id == Member.id)
                .where(Token.id == web.token_id)
            ).first()
            if row is None:
                return False
            revoked_at, expires_at, member = row
            if revoked_at is not None or (expires_at is not None and expires_at <= utcnow()):
                return False
            if member.offboarded_at is not None:
                return False
            return member.name == web.member and member.role == ADMIN_ROLE

    def still_member(self, name: str) -> bool:
        """Not offboarded (an OIDC identity need not be a member row at all)."""
        with self.database.session() as session:
            return session.scalar(select(Member.offboarded_at).where(Member.name == name)) is None

    async def require(self, request: Request) -> WebSession:
        session_id = request.cookies.get(SESSION_COOKIE)
        web = self.sessions.get(session_id)
        if web is None:
            raise _LoginRequired
        if not await anyio.to_thread.run_sync(self._still_valid, web):
            self.sessions.drop(session_id)
            raise _LoginRequired
        return web

    async def require_post(self, request: Request) -> tuple[WebSession, FormData]:
        """A signed-in session and its form, with the CSRF token checked (field or header)."""
        web = await self.require(request)
        form = await request.form(max_files=0, max_fields=200)
        presented = _field(form, CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
        if not presented or not hmac.compare_digest(presented.encode(), web.csrf.encode()):
            raise _CsrfRefused
        return web, form

    def login_csrf(self, nonce: str) -> str:
        return hmac.new(self._login_key, nonce.encode(), hashlib.sha256).hexdigest()

    # -- deployments in the background ---------------------------------------------------------------
    def start_in_background(self, slug: str) -> None:
        self.run_in_background(slug, lambda: self.deployments.start(slug), what="deploying")

    def run_in_background(self, slug: str, work: Callable[[], object], *, what: str) -> bool:
        """Run `work` (which (re)starts `slug`) in a thread; False when one is already under way.

        While it runs the server's row shows as busy and polls. A failure of the start itself is
        recorded on the deployment (its status and error, shown on the row) by `Deployments.start`.
        """
        with self._starting_lock:
            if slug in self._starting:
                return False
            self._starting.add(slug)

        def run() -> None:
            try:
                work()
            except StockadeError as exc:
                log.warning("%s %s from the dashboard failed: %s", what, slug, exc.message)
            except Exception:
                log.exception("%s %s from the dashboard failed", what, slug)
            finally:
                with self._starting_lock:
                    self._starting.discard(slug)

        threading.Thread(target=run, name=f"ui-{what}-{slug}", daemon=True).start()
        return True

    @property
    def starting(self) -> set[str]:
        with self._starting_lock:
            return set(self._starting)

    def endpoint_of(self, slug: str) -> str:
        return f"{self.gateway.public_url}/servers/{slug}/mcp"


def _fmt_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _resource_figures(use: ResourceUse, limits: ResourceLimits | None, running: int) -> dict[str, Any]:
    """A deployment's `ResourceUse` (summed over its `running` instances) as the figures pages show.

    The memory limit is the engine's; CPU and process limits are the catalog profile's, per instance.
    """
    limit = int(use.memory_limit_bytes or 0)
    instances = max(running, 1)
    return {"memory": _fmt_bytes(int(use.memory_bytes)), "memory_bytes": int(use.memory_bytes),
            "limit": _fmt_bytes(limit) if limit else None, "limit_bytes": limit,
            "percent": round(100.0 * use.memory_bytes / limit, 1) if limit else None,
            "cpu": f"{float(use.cpu_percent):.1f}",
            "cpu_limit": f"{limits.cpus * 100 * instances:.0f}" if limits else None,
            "pids": int(use.pids), "pids_limit": limits.pids * instances if limits else None}


def _tool_status(pin: Any) -> str:
    return "unapproved" if not pin.digest else "changed" if pin.changed_digest else "approved"


def _oidc_login(gateway: Gateway, client: OidcClient | None) -> OidcLogin | None:
    """Sign-in through the gateway's OIDC issuer, when a dashboard client is configured."""
    if client is None and gateway.oidc is not None:
        from stockade.config import load_settings

        client = OidcClient.from_settings(load_settings())
    if client is None:
        return None
    if gateway.oidc is None:
        raise ConfigError("the dashboard has an OIDC client but the gateway trusts no OIDC issuer",
                          hint="set STOCKADE_OIDC (issuer, role_map)")
    return OidcLogin(client, gateway.oidc)


def create_dashboard_router(database: Database, deployments: Deployments, gateway: Gateway, *,
                            data_dir: Path | None = None, verify: Callable[[], object] | None = None,
                            oidc_client: OidcClient | None = None) -> APIRouter:
    """The dashboard's routes; mount with `app.include_router(..., prefix="/ui")`.

    `data_dir` (for `verify/latest.json`) defaults to the configured `STOCKADE_DATA_DIR`; `verify`
    runs `stockade verify` (blocking) for the re-run button. `oidc_client` (OIDC sign-in, with the
    gateway's issuer) defaults to the configured `STOCKADE_OIDC_CLIENT_*` settings.
    """
    oidc = _oidc_login(gateway, oidc_client)
    ui = Dashboard(database, deployments, gateway, data_dir=data_dir, login=oidc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if oidc is None:
            yield
            return
        async with oidc.running():
            yield

    router = APIRouter(route_class=_UIRoute, include_in_schema=False, lifespan=lifespan)

    def route(path: str, *, name: str, methods: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            fn.__dashboard__ = ui  # type: ignore[attr-defined]
            router.add_api_route(path, fn, name=name, methods=methods, response_class=HTMLResponse)
            return fn

        return register

    # -- static assets and the front door -------------------------------------------------------------
    @route("/static/{name}", name="ui_static", methods=["GET"])
    async def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            return Response("not found", status_code=404, media_type="text/plain")
        body = await anyio.to_thread.run_sync((STATIC_DIR / name).read_bytes)
        return Response(body, media_type=STATIC_TYPES[name], headers={"Cache-Control": "public, max-age=86400"})

    @route("", name="ui_root", methods=["GET"])
    async def root(request: Request) -> Response:
        raise _Redirect(ui.url(request, "ui_catalog"))

    @route("/", name="ui_home", methods=["GET"])
    async def home(request: Request) -> Response:
        raise _Redirect(ui.url(request, "ui_catalog"))

    @route("/login", name="ui_login", methods=["GET"])
    async def login_form(request: Request) -> Response:
        if ui.sessions.get(request.cookies.get(SESSION_COOKIE)) is not None:
            raise _Redirect(ui.url(request, "ui_catalog"))
        return _login_page(request, status=200, error=None)

    def _login_page(request: Request, *, status: int, error: str | None) -> Response:
        nonce = secrets.token_urlsafe(24)
        next_path = request.query_params.get("next", "")
        response = ui.render(request, "login.html", status=status, error=error, login_csrf=ui.login_csrf(nonce),
                             next_path=next_path if _safe_next(request, next_path) else "",
                             sso_issuer=oidc.issuer_name if oidc is not None else None)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path=ui.cookie_path(request), httponly=True, samesite="strict",
                            secure=_is_https(request))
        return response

    def _safe_next(request: Request, target: str) -> bool:
        prefix = ui.url(request, "ui_catalog").rsplit("/", 1)[0] + "/"
        return bool(re.fullmatch(r"/[A-Za-z0-9/_.?=&%:+-]*", target)) and target.startswith(prefix) and "//" not in target

    @route("/login", name="ui_login_post", methods=["POST"])
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        presented = _field(form, CSRF_FIELD)
        if not nonce or not presented or not hmac.compare_digest(presented.encode(), ui.login_csrf(nonce).encode()):
            raise _CsrfRefused
        token = _field(form, "token")

        def check() -> Any:
            with database.session() as session:
                return authenticate(session, token)

        try:
            principal = await anyio.to_thread.run_sync(check)
        except AuthenticationError:
            metrics.AUTH_FAILURES.inc()
            return _login_page(request, status=401, error="That token was not accepted: it is unknown, revoked or expired.")
        if not principal.is_admin:
            return _login_page(request, status=403, error="That token is valid but not an admin's; the dashboard needs an admin token.")
        response = _open_session(request, principal.member, principal.token_id, source="token",
                                 next_path=_field(form, "next"))
        response.delete_cookie(LOGIN_COOKIE, path=ui.cookie_path(request), httponly=True, samesite="strict", secure=_is_https(request))
        return response

    def _open_session(request: Request, member: str, token_id: str, *, source: str, next_path: str) -> Response:
        """A new session (replacing the browser's old one), its cookie, and the way on to `next_path`."""
        ui.sessions.drop(request.cookies.get(SESSION_COOKIE))
        session_id, web = ui.sessions.create(member, token_id, source=source)
        web.flash("ok", f"Signed in as {member}.")
        target = next_path if _safe_next(request, next_path) else ui.url(request, "ui_catalog")
        if source == "oidc":
            # The callback is the end of a redirect chain that began at the issuer (another site), and
            # browsers send no SameSite=Strict cookie along such a chain: a 303 would land on the login
            # page. A page of our own that moves on (meta refresh, or its link) starts a same-site navigation.
            response: Response = ui.render(request, "signed_in.html", target=target, member=member)
        else:
            response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, max_age=SESSION_MAX_SECONDS, path=ui.cookie_path(request), httponly=True,
                            samesite="strict", secure=_is_https(request))
        return response

    # -- single sign-on (OIDC) -----------------------------------------------------------------------------
    def _sso() -> OidcLogin:
        if oidc is None:
            raise HTTPException(404)
        return oidc

    def _sso_refused(request: Request, exc: StockadeError) -> Response:
        metrics.AUTH_FAILURES.inc()
        title = "Identity provider unavailable" if exc.status_code >= 500 else "Sign-in refused"
        response = ui.error_page(request, exc.status_code, title, exc.message, exc.hint)
        response.delete_cookie(OIDC_COOKIE, path=ui.cookie_path(request), httponly=True, samesite="lax",
                               secure=_is_https(request))
        return response

    @route("/auth/start", name="ui_auth_start", methods=["GET"])
    async def sso_start(request: Request) -> Response:
        """Send the browser to the issuer. A GET link, not a form: `form-action 'self'` would block the
        cross-origin redirect, and starting a sign-in on someone's behalf gains nothing."""
        sso = _sso()
        next_path = request.query_params.get("next", "")
        try:
            login_id, location = await sso.start(next_path if _safe_next(request, next_path) else "")
        except StockadeError as exc:
            return _sso_refused(request, exc)
        response = RedirectResponse(location, status_code=303)
        # Lax, not Strict: the issuer's redirect back is a cross-site top-level GET, which must carry it.
        response.set_cookie(OIDC_COOKIE, login_id, max_age=LOGIN_TTL_SECONDS, path=ui.cookie_path(request),
                            httponly=True, samesite="lax", secure=_is_https(request))
        return response

    @route("/auth/callback", name="ui_auth_callback", methods=["GET"])
    async def sso_callback(request: Request) -> Response:
        sso = _sso()
        try:
            identity, next_path = await sso.finish(request.cookies.get(OIDC_COOKIE), request.query_params)
            if identity.role != ADMIN_ROLE:
                raise PermissionDenied(
                    f"you signed in at {sso.issuer_name} as {identity.member}, whose role here is {identity.role!r}; "
                    "the dashboard is for admins",
                    hint="ask a platform admin to map your group to the admin role in the OIDC role_map")
            offboarded = await anyio.to_thread.run_sync(lambda: not ui.still_member(identity.member))
            if offboarded:
                raise PermissionDenied(f"{identity.member} has been offboarded from this platform")
        except StockadeError as exc:
            return _sso_refused(request, exc)
        response = _open_session(request, identity.member, identity.token_id, source="oidc", next_path=next_path)
        response.delete_cookie(OIDC_COOKIE, path=ui.cookie_path(request), httponly=True, samesite="lax",
                               secure=_is_https(request))
        return response

    @route("/logout", name="ui_logout", methods=["POST"])
    async def logout(request: Request) -> Response:
        await ui.require_post(request)
        ui.sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(ui.url(request, "ui_login"), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=ui.cookie_path(request), httponly=True, samesite="strict", secure=_is_https(request))
        return response

    # -- catalog and deploy ----------------------------------------------------------------------------
    def _pins_by_slug(views: list[DeploymentView]) -> dict[str, list[dict[str, Any]]]:
        return {
            d.slug: [{"tool": p.tool, "status": _tool_status(p), "approved_at": p.approved_at if p.digest else None,
                      "changed_at": p.changed_at} for p in gateway.pins.listing(d.slug)]
            for d in views
        }

    @route("/catalog", name="ui_catalog", methods=["GET"])
    async def catalog(request: Request) -> Response:
        web = await ui.require(request)
        views = await anyio.to_thread.run_sync(deployments.list)
        pins = await anyio.to_thread.run_sync(_pins_by_slug, views)
        by_entry: dict[str, list[DeploymentView]] = {}
        for d in views:
            by_entry.setdefault(d.entry, []).append(d)
        return ui.render(request, "catalog.html", web, page="catalog", entries=deployments.catalog.servers,
                         by_entry=by_entry, pins=pins, open_network=NetworkProfile.open)

    @route("/deploy", name="ui_deploy", methods=["GET"])
    async def deploy_page(request: Request) -> Response:
        web = await ui.require(request)
        views = await anyio.to_thread.run_sync(deployments.list)
        return ui.render(request, "deploy.html", web, page="deploy", entries=deployments.catalog.servers,
                         taken={d.slug for d in views}, slug_pattern=SLUG_PATTERN.strip("^$"),
                         open_network=NetworkProfile.open, single=None)

    @route("/deploy/{entry_name}", name="ui_deploy_entry", methods=["GET"])
    async def deploy_entry_page(request: Request, entry_name: str) -> Response:
        """The deploy form as a page of its own (what the modal shows; used without JavaScript)."""
        web = await ui.require(request)
        entry = deployments.catalog.get(entry_name)
        views = await anyio.to_thread.run_sync(deployments.list)
        return ui.render(request, "deploy.html", web, page="deploy", entries=[entry], taken={d.slug for d in views},
                         slug_pattern=SLUG_PATTERN.strip("^$"), open_network=NetworkProfile.open, single=entry)

    @route("/deploy/{entry_name}", name="ui_deploy_post", methods=["POST"])
    async def deploy(request: Request, entry_name: str) -> Response:
        web, form = await ui.require_post(request)
        entry: CatalogEntry = deployments.catalog.get(entry_name)
        declared = [*entry.required_env, *entry.optional_env]
        env = {v.name: value for v in declared if (value := _field_raw(form, f"env.{v.name}"))}
        slug = _field(form, "slug") or None
        del form
        try:
            created = await anyio.to_thread.run_sync(lambda: deployments.create(entry.name, slug=slug, env=env))
        except (ValidationFailed, ConflictError) as exc:
            web.flash("error", f"Not deployed: {exc.message}. Values you entered were discarded; enter them again.")
            raise _Redirect(ui.url(request, "ui_deploy")) from None
        finally:
            env.clear()
        ui.start_in_background(created.slug)
        web.flash("ok", f"Deploying {created.slug}. Its status below updates as it progresses; "
                        "the values you entered are stored sealed and are never shown again.")
        raise _Redirect(ui.url(request, "ui_servers") + f"#server-{created.slug}")

    def _field_raw(form: FormData, name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    # -- servers ------------------------------------------------------------------------------------------
    def _server_rows() -> list[dict[str, Any]]:
        rows = []
        for d in deployments.list():
            try:
                entry = deployments.catalog.get(d.entry)
                secret_names = entry.secret_env_names
            except StockadeError:
                entry, secret_names = None, set()
            egress_denials = (deployments.egress_denials(d.slug)
                              if entry is not None and entry.network is NetworkProfile.egress and d.status == "running"
                              else None)
            rows.append({"view": d, "entry": entry, "endpoint": ui.endpoint_of(d.slug),
                         "variables": sorted((name, name in secret_names, at) for name, at in d.variables.items()),
                         "busy": d.status in BUSY_STATES or d.slug in ui.starting,
                         "restarts": d.restarts, "last_exit": d.last_exit, "egress_denials": egress_denials,
                         "running": sum(1 for instance in d.instances if instance.status == "running"),
                         "can_stop": d.desired_state == "running",
                         "rotatable": [*entry.required_env, *entry.optional_env] if entry is not None else []})
        return rows

    @route("/servers", name="ui_servers", methods=["GET"])
    async def servers(request: Request) -> Response:
        web = await ui.require(request)
        rows = await anyio.to_thread.run_sync(_server_rows)
        return ui.render(request, "servers.html", web, page="servers", rows=rows)

    @route("/servers/{slug}/row", name="ui_server_row", methods=["GET"])
    async def server_row(request: Request, slug: str) -> Response:
        """One row of the servers table (polled by htmx while a deployment is in progress)."""
        web = await ui.require(request)
        rows = [r for r in await anyio.to_thread.run_sync(_server_rows) if r["view"].slug == slug]
        if not rows:
            return Response(status_code=200)
        return ui.render(request, "server_row.html", web, row=rows[0])

    @route("/servers/{slug}/remove", name="ui_server_remove", methods=["POST"])
    async def remove_server(request: Request, slug: str) -> Response:
        web, _ = await ui.require_post(request)
        await anyio.to_thread.run_sync(deployments.remove, slug)
        web.flash("ok", f"Removed {slug}: its containers, network and stored values are gone.")
        raise _Redirect(ui.url(request, "ui_servers"))

    @route("/servers/{slug}/stop", name="ui_server_stop", methods=["POST"])
    async def stop_server(request: Request, slug: str) -> Response:
        web, _ = await ui.require_post(request)
        await anyio.to_thread.run_sync(deployments.stop, slug)
        web.flash("ok", f"Stopped {slug}: its container is gone; its stored values stay for a restart.")
        raise _Redirect(ui.url(request, "ui_servers") + f"#server-{slug}")

    @route("/servers/{slug}/restart", name="ui_server_restart", methods=["POST"])
    async def restart_server(request: Request, slug: str) -> Response:
        """Start a stopped server, or replace a running one with a fresh container (in the background)."""
        web, _ = await ui.require_post(request)
        await anyio.to_thread.run_sync(deployments.get, slug)
        ui.start_in_background(slug)
        web.flash("ok", f"Restarting {slug}; its status below updates as it progresses.")
        raise _Redirect(ui.url(request, "ui_servers") + f"#server-{slug}")

    def _rotate_context(slug: str) -> dict[str, Any]:
        view = deployments.get(slug)
        entry = deployments.catalog.get(view.entry)
        return {"view": view, "entry": entry, "variables": [*entry.required_env, *entry.optional_env],
                "set_at": dict(view.variables)}

    @route("/servers/{slug}/rotate", name="ui_server_rotate", methods=["GET"])
    async def rotate_page(request: Request, slug: str) -> Response:
        """The rotate form as a page of its own (what the dialog shows; used without JavaScript)."""
        web = await ui.require(request)
        context = await anyio.to_thread.run_sync(_rotate_context, slug)
        return ui.render(request, "rotate.html", web, page="servers", **context)

    @route("/servers/{slug}/rotate", name="ui_server_rotate_post", methods=["POST"])
    async def rotate_server(request: Request, slug: str) -> Response:
        """Seal new values for declared variables and move the server onto them (in the background).

        Blank fields keep their current value. Values are never echoed back, logged or kept here.
        """
        web, form = await ui.require_post(request)
        back = ui.url(request, "ui_servers") + f"#server-{slug}"
        context = await anyio.to_thread.run_sync(_rotate_context, slug)
        values = {v.name: value for v in context["variables"] if (value := _field_raw(form, f"env.{v.name}"))}
        del form
        if not values:
            web.flash("error", f"Nothing rotated on {slug}: enter a new value for at least one variable.")
            raise _Redirect(back)
        names = sorted(values)
        try:
            # Checked here so a refusal is shown now; the rotation itself runs in the background.
            context["entry"].check_variables(values, partial=True)
        except StockadeError as exc:
            values.clear()
            web.flash("error", f"Not rotated: {exc.message}. Values you entered were discarded; enter them again.")
            raise _Redirect(back) from None

        def work() -> None:
            try:
                deployments.rotate(slug, values)
            finally:
                values.clear()

        if not ui.run_in_background(slug, work, what="rotating"):
            values.clear()
            web.flash("error", f"Not rotated: {slug} is already being (re)started. Wait for it, then try again.")
            raise _Redirect(back)
        web.flash("ok", f"Rotating {', '.join(names)} of {slug}: the new values are stored sealed and a fresh "
                        "container starts with them; its status below updates as it progresses.")
        raise _Redirect(back)

    @route("/servers/{slug}/logs", name="ui_server_logs", methods=["GET"])
    async def server_logs(request: Request, slug: str) -> Response:
        """Resource use now and the last lines of the server's output (secret values redacted)."""
        web = await ui.require(request)
        try:
            tail = int(request.query_params.get("tail", LOG_TAIL_DEFAULT))
        except ValueError:
            tail = LOG_TAIL_DEFAULT
        tail = tail if tail in LOG_TAILS else LOG_TAIL_DEFAULT
        view = await anyio.to_thread.run_sync(deployments.get, slug)
        problems = []
        use, problem = await _measure(view)
        if problem:
            problems.append(problem)
        try:
            text = await anyio.to_thread.run_sync(lambda: deployments.logs(slug, tail=tail))
        except StockadeError:
            raise
        except Exception as exc:  # noqa: BLE001 - as above: the page still shows what it can
            log.warning("logs of %s could not be read: %s", slug, type(exc).__name__)
            text = ""
            problems.append(f"The log could not be read from the container engine ({type(exc).__name__}).")
        lines = text.splitlines()[-tail:]
        return ui.render(request, "server_logs.html", web, page="servers", view=view, use=use, lines=lines,
                         tail=tail, tails=LOG_TAILS, fetched_at=utcnow(), problems=problems)

    async def _measure(view: DeploymentView) -> tuple[dict[str, Any] | None, str | None]:
        """(figures, or None when nothing runs; a problem to show when the engine could not be asked)."""
        try:
            use = await anyio.to_thread.run_sync(deployments.resource_use, view.slug)
        except StockadeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine could not be asked: say so, the page still shows the rest
            log.warning("resource use of %s could not be read: %s", view.slug, type(exc).__name__)
            return None, f"Resource use could not be read from the container engine ({type(exc).__name__})."
        if use is None:
            return None, None
        try:
            limits = deployments.catalog.get(view.entry).resources.limits
        except StockadeError:  # the entry left the catalog: its limits are unknown here
            limits = None
        running = sum(1 for instance in view.instances if instance.status == "running")
        return _resource_figures(use, limits, running), None

    @route("/servers/{slug}/usage", name="ui_server_usage", methods=["GET"])
    async def server_usage(request: Request, slug: str) -> Response:
        """A server's resource use now, as a fragment of its row (loaded by htmx: the page never waits for it)."""
        web = await ui.require(request)
        view = await anyio.to_thread.run_sync(deployments.get, slug)
        use, problem = await _measure(view)
        return ui.render(request, "_usage.html", web, view=view, use=use, problem=problem, in_row=True,
                         fetched_at=utcnow())

    @route("/servers/{slug}/approve", name="ui_server_approve", methods=["POST"])
    async def approve_server_tools(request: Request, slug: str) -> Response:
        web, _ = await ui.require_post(request)
        approved = await anyio.to_thread.run_sync(lambda: deployments.approve_tools(slug, None))
        from stockade.gateway.audit import AuditEvent

        for tool in approved:
            event = AuditEvent(member=web.member, token_id=web.token_id, server=slug, method="tools/approve", tool=tool,
                               latency_ms=0.0, outcome="ok")
            await anyio.to_thread.run_sync(gateway.audit.append, event)
        web.flash("ok", f"Approved {len(approved)} tool definition(s) of {slug} as offered now.")
        raise _Redirect(ui.url(request, "ui_catalog") + f"#pins-{slug}")

    # -- members and tokens -------------------------------------------------------------------------------
    def _members() -> dict[str, Any]:
        now = utcnow()
        with database.session() as session:
            members = []
            for m in session.scalars(select(Member).order_by(Member.name)):
                tokens = []
                for t in sorted(m.tokens, key=lambda t: t.created_at):
                    state = ("revoked" if t.revoked_at is not None
                             else "expired" if t.expires_at is not None and t.expires_at <= now else "active")
                    tokens.append({"id": t.id, "name": t.name, "created_at": t.created_at, "expires_at": t.expires_at,
                                   "revoked_at": t.revoked_at, "state": state})
                members.append({"name": m.name, "role": m.role, "created_at": m.created_at, "tokens": tokens,
                                "offboarded_at": getattr(m, "offboarded_at", None),
                                "active": sum(1 for t in tokens if t["state"] == "active")})
            roles = list(session.scalars(select(Role.name).order_by(Role.name)))
        return {"members": members, "roles": roles}

    @route("/members", name="ui_members", methods=["GET"])
    async def members_page(request: Request) -> Response:
        web = await ui.require(request)
        data = await anyio.to_thread.run_sync(_members)
        return ui.render(request, "members.html", web, page="members", ttls=list(TOKEN_TTLS), **data)

    @route("/members", name="ui_members_create", methods=["POST"])
    async def create_member_action(request: Request) -> Response:
        web, form = await ui.require_post(request)
        name, role = _field(form, "name"), _field(form, "role") or "member"
        if not re.fullmatch(MEMBER_NAME_PATTERN, name):
            web.flash("error", "A member name is 1–64 letters, digits or . _ @ -, starting with a letter or digit.")
            raise _Redirect(ui.url(request, "ui_members"))

        def run() -> None:
            with database.session() as session:
                create_member(session, name, role)

        try:
            await anyio.to_thread.run_sync(run)
        except (ValidationFailed, ConflictError) as exc:
            web.flash("error", exc.message + (f" ({exc.hint})" if exc.hint else ""))
        else:
            web.flash("ok", f"Member {name} created with role {role}. Mint a token for them below.")
        raise _Redirect(ui.url(request, "ui_members") + f"#member-{name}")

    @route("/tokens", name="ui_tokens_mint", methods=["POST"])
    async def mint_token_action(request: Request) -> Response:
        web, form = await ui.require_post(request)
        member_name, token_name, ttl_key = _field(form, "member"), _field(form, "name") or "default", _field(form, "ttl")
        if ttl_key not in TOKEN_TTLS or not 1 <= len(token_name) <= 64:
            web.flash("error", "Choose an expiry from the list and a token name of 1–64 characters.")
            raise _Redirect(ui.url(request, "ui_members"))
        days = TOKEN_TTLS[ttl_key]

        def run() -> Any:
            with database.session() as session:
                return mint_token(session, get_member(session, member_name), name=token_name,
                                  ttl=timedelta(days=days) if days else None)

        minted = await anyio.to_thread.run_sync(run)
        # Held for the very next page view only (post/redirect/get), then forgotten.
        web.once["minted"] = {"id": minted.id, "member": minted.member, "name": minted.name,
                              "expires_at": minted.expires_at, "secret": minted.secret}
        raise _Redirect(ui.url(request, "ui_members") + "#minted")

    @route("/tokens/{token_id}/revoke", name="ui_token_revoke", methods=["POST"])
    async def revoke_token_action(request: Request, token_id: str) -> Response:
        web, _ = await ui.require_post(request)

        def run() -> str:
            with database.session() as session:
                return revoke_token(session, token_id).member.name

        member = await anyio.to_thread.run_sync(run)
        closed = await gateway.close_token(token_id)
        web.flash("ok", f"Token {token_id} of {member} revoked; closed {closed.streams} stream(s) and "
                        f"{closed.sessions} session(s) it held.")
        raise _Redirect(ui.url(request, "ui_members") + f"#member-{member}")

    @route("/members/{name}/offboard", name="ui_member_offboard", methods=["POST"])
    async def offboard_action(request: Request, name: str) -> Response:
        web, _ = await ui.require_post(request)

        revoked, closed = await gateway.offboard(name)
        web.flash("ok", f"Offboarded {name}: {len(revoked)} token(s) revoked, {closed.streams} stream(s) and "
                        f"{closed.sessions} session(s) closed. The member stays for the audit trail.")
        raise _Redirect(ui.url(request, "ui_members") + f"#member-{name}")

    # -- audit -----------------------------------------------------------------------------------------------
    def _audit_filters(request: Request) -> tuple[dict[str, Any], list[str]]:
        params = request.query_params
        problems = []
        filters: dict[str, Any] = {}
        for key in ("member", "server", "tool"):
            value = params.get(key, "").strip()
            filters[key] = value[:255] or None
        outcome = params.get("outcome", "").strip()
        filters["outcome"] = outcome if outcome in {"ok", "error", "denied"} else None
        for key in ("since", "until"):
            try:
                filters[key] = _parse_time(params.get(key))
            except ValueError:
                filters[key] = None
                problems.append(f"'{key}' is not a date and time; it was ignored")
        return filters, problems

    def _chain_status() -> dict[str, Any]:
        with database.session() as session:
            problems = verify_database(session)
            count = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
        return {"ok": not problems, "records": count, "problems": problems[:20], "more": max(0, len(problems) - 20)}

    @route("/audit", name="ui_audit", methods=["GET"])
    async def audit_page(request: Request) -> Response:
        web = await ui.require(request)
        filters, problems = _audit_filters(request)
        try:
            after_id = min(MAX_AUDIT_ID, max(0, int(request.query_params.get("after_id", "0"))))
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            after_id, limit = 0, 50
        limit = limit if limit in AUDIT_PAGE_SIZES else 50
        records = await anyio.to_thread.run_sync(
            lambda: gateway.audit.query(**filters, limit=limit + 1, after_id=after_id))
        has_more = len(records) > limit
        records = records[:limit]
        chain = await anyio.to_thread.run_sync(_chain_status)
        query = {k: request.query_params.get(k, "") for k in ("member", "server", "tool", "outcome", "since", "until")}
        query = {k: v for k, v in query.items() if v}
        next_query = urlencode({**query, "limit": limit, "after_id": records[-1].id}) if has_more and records else None
        first_query = urlencode({**query, "limit": limit}) if after_id else None
        return ui.render(request, "audit.html", web, page="audit", records=records, form=query, limit=limit,
                         sizes=AUDIT_PAGE_SIZES, next_query=next_query, first_query=first_query,
                         export_query=urlencode(query), chain=chain, problems=problems, after_id=after_id)

    @route("/audit/export.jsonl", name="ui_audit_export", methods=["GET"])
    async def audit_export(request: Request) -> Response:
        await ui.require(request)
        filters, _ = _audit_filters(request)

        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(gateway.audit.export_lines(**filters), media_type="application/jsonl",
                                 headers={"Content-Disposition": f'attachment; filename="stockade-audit-{stamp}.jsonl"'})

    # -- verification ------------------------------------------------------------------------------------------
    def _chart_rows(start: datetime) -> list[tuple[datetime, float, str]]:
        with database.session() as session:
            return [tuple(r) for r in session.execute(  # type: ignore[misc]
                select(AuditRecord.ts, AuditRecord.latency_ms, AuditRecord.outcome)
                .where(AuditRecord.ts >= start).order_by(AuditRecord.id).limit(CHART_MAX_ROWS))]

    @route("/verification/run", name="ui_verification_run", methods=["POST"])
    async def rerun_verification(request: Request) -> Response:
        web, _ = await ui.require_post(request)
        if verify is None:
            web.flash("error", "This control plane cannot run verification; run `stockade verify` on the host.")
        else:
            try:
                await anyio.to_thread.run_sync(verify)
                web.flash("ok", "Verification finished; the matrix below is the new report.")
            except StockadeError as exc:
                web.flash("error", f"Verification could not run: {exc.message}")
        raise _Redirect(ui.url(request, "ui_verification"))

    @route("/verification", name="ui_verification", methods=["GET"])
    async def verification(request: Request) -> Response:
        web = await ui.require(request)
        window = request.query_params.get("window", "24h")
        window = window if window in CHART_WINDOWS else "24h"
        span, count = CHART_WINDOWS[window]
        end = utcnow()
        start = end - span
        rows = await anyio.to_thread.run_sync(_chart_rows, start)
        buckets = bucket_audit(rows, start, end, count)
        label = "%H:%M" if span <= timedelta(days=1) else "%m-%d"
        charts = [
            ("Calls", "Calls through the gateway per interval, by outcome.", svg_chart(
                "Call volume", buckets, [("ok", "s-ok", lambda b: b.calls - b.errors - b.denied),
                                         ("error", "s-error", lambda b: b.errors)],
                kind="bar", unit="calls", label_format=label)),
            ("Latency", "Average and 95th-percentile latency per interval, in milliseconds.", svg_chart(
                "Latency", buckets, [("average", "s-avg", lambda b: b.avg_ms), ("p95", "s-p95", lambda b: b.p95_ms)],
                kind="line", unit="ms", label_format=label)),
            ("Denials", "Calls refused by policy or tool pinning per interval.", svg_chart(
                "Denials", buckets, [("denied", "s-denied", lambda b: b.denied)], kind="bar", unit="denials",
                label_format=label)),
        ]
        data_dir = ui.data_dir
        path = data_dir / "verify" / "latest.json" if data_dir is not None else None
        matrix = await anyio.to_thread.run_sync(read_verify_results, path) if path is not None else None
        return ui.render(request, "verification.html", web, page="verification", matrix=matrix, charts=charts,
                         window=window, windows=list(CHART_WINDOWS), total=len(rows), start=start, end=end,
                         truncated=len(rows) >= CHART_MAX_ROWS, results_path=str(path) if path else "verify/latest.json")

    return router
