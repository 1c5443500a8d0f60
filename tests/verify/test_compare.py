"""`stockade verify --compare time`: the same entry as none, egress and open, side by side.

Needs the orchestrator's network profiles (egress proxy); traffic goes only to the temporary
deployments, their proxy and verify's own canaries.
"""

from __future__ import annotations

from typing import Any

import docker
import pytest

from stockade.config import Settings
from stockade.orchestrator.images import BuiltImage
from stockade.verify.render import html_report, junit_xml
from stockade.verify.runner import run_verify, verify_leftovers


@pytest.fixture(scope="module")
def comparison(verify_settings: Settings, engine: docker.DockerClient, time_image: BuiltImage) -> dict[str, Any]:
    document = run_verify(verify_settings, client=engine, compare="time")
    assert verify_leftovers(engine) == []
    return document


def evidence(compare: dict[str, Any], profile: str, check: str) -> str:
    slug = compare["slugs"][profile]
    [result] = [r for r in compare["results"] if r["server"] == slug and r["check"] == check]
    return "\n".join(result["evidence"])


def test_the_matrix_shows_each_profile(comparison: dict[str, Any]) -> None:
    compare = comparison["compare"]
    assert compare["errors"] == [], compare["errors"]
    matrix = compare["matrix"]
    assert set(matrix) == {"bridge", "host", "pivot", "egress"}
    status = {check: {p: cell["status"] for p, cell in row.items()} for check, row in matrix.items()}
    # none: nothing out
    assert {c: status[c]["none"] for c in status} == dict.fromkeys(status, "pass")
    # egress: out only through the proxy, which refuses raw IPs and unlisted names
    assert {c: status[c]["egress"] for c in status} == dict.fromkeys(status, "pass")
    proxy = evidence(compare, "egress", "egress")
    assert "CONNECT to the canary by raw IP through the proxy: answered: HTTP/1.1 403" in proxy
    assert "CONNECT to an unlisted name through the proxy: answered: HTTP/1.1 403" in proxy
    assert "canary by raw IP (direct): connected" not in proxy
    # open: a non-internal network is allowed, the canary answers; the host and other servers do not
    assert status["bridge"]["open"] == "pass" and "Internal=false (allowed" in evidence(compare, "open", "bridge")
    assert status["egress"]["open"] == "warn" and "canary by IP: connected" in matrix["egress"]["open"]["detail"]
    assert status["host"]["open"] == "pass" and status["pivot"]["open"] == "pass"
    # the servers of the comparison probed each other
    assert compare["slugs"]["none"] in evidence(compare, "open", "pivot")


def test_the_temporary_deployments_are_gone(comparison: dict[str, Any], engine: docker.DockerClient) -> None:
    # the low-level listings: others' containers come and go while we look
    names = [name for c in engine.api.containers(all=True) for name in c["Names"]]
    networks = [n["Name"] for n in engine.api.networks()]
    for slug in comparison["compare"]["slugs"].values():
        assert engine.api.containers(all=True, filters={"label": f"io.stockade.server={slug}"}) == []
        assert [n for n in networks if slug in n] == []
        assert [n for n in names if slug in n] == []


def test_compare_reports(comparison: dict[str, Any], verify_settings: Settings) -> None:
    assert comparison["exit_status"] == 0, comparison["compare"]["errors"]
    assert comparison["path"].endswith("verify/compare-latest.json")
    page = html_report(comparison)
    assert 'id="compare"' in page and "egress" in page
    assert "testcase" in junit_xml(comparison)
