"""Pieces of the dashboard that need no browser: sessions, the verify file, charts, the OpenAPI document."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI

from stockade.config import Settings
from stockade.errors import ConfigError
from stockade.web.charts import bucket_audit, svg_chart
from stockade.web.dashboard import create_dashboard_router
from stockade.web.oidc_login import OidcClient, s256
from stockade.web.sessions import SessionStore
from stockade.web.verification import read_verify_results


def test_sessions_are_random_keyed_by_hash_and_expire() -> None:
    store = SessionStore()
    first, web = store.create("admin", "tok1")
    second, _ = store.create("admin", "tok1")
    assert first != second and len(first) >= 40
    assert store.get(first) is web
    assert first not in repr(store._sessions)  # only the hash of the cookie value is kept
    store.drop(first)
    assert store.get(first) is None
    assert store.get(None) is None and store.get("x" * 500) is None

    idle = SessionStore(idle=-1)  # every session is already past its idle limit
    sid, _ = idle.create("admin", "tok1")
    assert idle.get(sid) is None
    capped = SessionStore(lifetime=-1)
    sid, _ = capped.create("admin", "tok1")
    assert capped.get(sid) is None


def test_verify_results_in_both_shapes(tmp_path: Path) -> None:
    assert read_verify_results(tmp_path / "absent.json") is None
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"generated_at": "t", "servers": {"time": {"tools": True, "egress": {"status": "fail", "detail": "d"}}}}))
    matrix = read_verify_results(path)
    assert matrix is not None and matrix.checks == ["egress", "tools"]
    assert [(c.status, c.detail) for c in matrix.rows[0][1] if c] == [("fail", "d"), ("pass", "")]
    assert not matrix.passed
    path.write_text("not json")
    broken = read_verify_results(path)
    assert broken is not None and broken.problem


def test_buckets_and_chart_svg_need_no_inline_style() -> None:
    end = datetime(2026, 1, 1, tzinfo=UTC)
    start = end - timedelta(hours=24)
    rows = [(start + timedelta(minutes=30), 10.0, "ok"), (start + timedelta(minutes=40), 30.0, "denied"),
            (end - timedelta(minutes=1), 5.0, "error"), (start - timedelta(minutes=1), 1.0, "ok")]
    buckets = bucket_audit(rows, start, end, 24)
    assert [b.calls for b in buckets][:1] == [2] and buckets[-1].errors == 1 and sum(b.calls for b in buckets) == 3
    assert buckets[0].denied == 1 and buckets[0].avg_ms == 20.0 and buckets[0].p95_ms == 30.0
    svg = str(svg_chart("Call <volume>", buckets, [("ok", "s-ok", lambda b: b.calls)], kind="bar", unit="calls",
                        label_format="%H:%M"))
    assert svg.startswith("<svg") and "<rect" in svg and "Call &lt;volume&gt;" in svg
    assert not re.search(r"\sstyle=", svg)


def test_dashboard_routes_stay_out_of_the_openapi_document() -> None:
    """The management API's e2e test walks the OpenAPI document expecting JSON 401s; /ui is not part of it."""
    app = FastAPI(openapi_url="/api/openapi.json")
    gateway = SimpleNamespace(oidc=None)  # no OIDC issuer: the router needs nothing else at creation
    app.include_router(create_dashboard_router(None, None, gateway, data_dir=Path("/nonexistent")), prefix="/ui")  # type: ignore[arg-type]
    assert not [p for p in app.openapi()["paths"] if p.startswith("/ui")]
    assert app.url_path_for("ui_login") == "/ui/login"


def test_pkce_s256_matches_rfc_7636_appendix_b() -> None:
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_oidc_client_settings(tmp_path: Path) -> None:
    trust = {"issuer": "https://idp.example.test", "role_map": {"admins": "admin"}}
    base = {"data_dir": tmp_path, "control_port": 9123}
    assert OidcClient.from_settings(Settings(**base, oidc=trust)) is None  # no client id: token sign-in only
    client = OidcClient.from_settings(Settings(**base, oidc=trust, oidc_client_id="dash", oidc_scopes=" openid  groups "))
    assert client == OidcClient("dash", None, "http://127.0.0.1:9123/ui/auth/callback", "openid groups")
    secret = OidcClient.from_settings(Settings(**base, oidc=trust, oidc_client_id="dash", oidc_client_secret="s3",
                                               oidc_redirect_uri="https://ops.example.test/ui/auth/callback"))
    assert secret is not None and secret.client_secret == "s3" and secret.redirect_uri.startswith("https://ops.")
    refused = [
        ({"oidc_client_id": "dash"}, "no OIDC issuer"),
        ({"oidc": trust, "oidc_client_id": "dash", "oidc_redirect_uri": "http://ops.example.test/ui/auth/callback"},
         "https"),
        ({"oidc": trust, "oidc_client_id": "dash", "oidc_redirect_uri": "https://ops.example.test/elsewhere"},
         "/ui/auth/callback"),
        ({"oidc": trust, "oidc_client_id": "dash", "oidc_scopes": "email profile"}, "openid"),
    ]
    for overrides, fragment in refused:
        with pytest.raises(ConfigError) as caught:
            OidcClient.from_settings(Settings(**base, **overrides))
        assert fragment in caught.value.message
