"""The report model and renderers, without an engine."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

from stockade.verify.model import Findings, report_document
from stockade.verify.render import html_report, junit_xml


def test_findings_take_the_worst_status_and_keep_all_evidence() -> None:
    f = Findings("s", "host")
    f.ok("a")
    assert f.result("all good").status == "pass" and f.result("all good").detail == "all good"
    f.warn("b")
    assert f.result("x").status == "warn" and f.result("x").detail == "b"
    f.fail("c")
    f.fail("d")
    result = f.result("x")
    assert result.status == "fail" and result.detail == "c; d"
    assert result.evidence == ["PASS: a", "WARN: b", "FAIL: c", "FAIL: d"]


def test_exit_status_and_dashboard_shape() -> None:
    ok = Findings("srv", "bridge")
    ok.ok("fine")
    document = report_document(run_id="r", generated_at="t", results=[ok.result("fine")], errors=[])
    assert document["exit_status"] == 0 and document["passed"]
    assert document["results"] == [{"server": "srv", "check": "bridge", "status": "pass", "detail": "fine",
                                    "evidence": ["PASS: fine"]}]
    assert report_document(run_id="r", generated_at="t", results=[], errors=["engine down"])["exit_status"] == 1
    assert report_document(run_id="r", generated_at="t", results=[], errors=[],
                           compare={"failed": True})["exit_status"] == 1


def test_renderers_escape_everything() -> None:
    bad = Findings("<srv>", "secrets")
    bad.fail('<script>alert(1)</script> & "quotes"')
    document = report_document(run_id="r", generated_at="t", results=[bad.result("")], errors=["<err>"])
    page = html_report(document)
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert json.loads(page.split('id="report">', 1)[1].split("</script>", 1)[0].replace("&quot;", '"')
                      .replace("&lt;", "<").replace("&gt;", ">").replace("&#x27;", "'").replace("&amp;", "&"))
    root = ET.fromstring(junit_xml(document))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("errors") == "1"
    [failure] = root.iter("failure")
    assert failure.get("message") == '<script>alert(1)</script> & "quotes"'
