"""Reports of a verification run: a Rich table, JUnit XML and a self-contained HTML page."""

from __future__ import annotations

import html
import json
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from stockade.verify.model import CHECKS, FAIL, PASS, WARN

STYLE = {PASS: "green", WARN: "yellow", FAIL: "bold red"}
MARK = {PASS: "✓ pass", WARN: "! warn", FAIL: "✗ fail"}


def _grid(results: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    checks = [c for c in CHECKS if any(r["check"] == c for r in results)]
    checks += sorted({r["check"] for r in results} - set(checks))
    servers = sorted({r["server"] for r in results})
    cells = {(r["server"], r["check"]): r for r in results}
    return servers, checks, cells


def print_table(document: dict[str, Any], console: Console) -> None:
    if document.get("compare"):
        print_compare(document["compare"], console)
    results = document.get("results") or []
    if results:
        servers, checks, cells = _grid(results)
        table = Table(title=f"stockade verify — {document.get('generated_at', '')}", show_lines=True)
        table.add_column("server", style="bold")
        for check in checks:
            table.add_column(check)
        for server in servers:
            row = []
            for check in checks:
                cell = cells.get((server, check))
                row.append("—" if cell is None else f"[{STYLE[cell['status']]}]{MARK[cell['status']]}[/]")
            table.add_row(server, *row)
        console.print(table)
        for r in results:
            if r["status"] != PASS:
                console.print(f"[{STYLE[r['status']]}]{r['status'].upper()}[/] {r['server']} / {r['check']}: "
                              f"{r['detail']}", highlight=False)
    elif not document.get("compare"):
        console.print("[yellow]No running servers to verify.[/]")
    for error in document.get("errors") or []:
        console.print(f"[bold red]ERROR[/] {error}", highlight=False)
    summary = document.get("summary") or {}
    verdict = "[green]all policies enforced[/]" if document.get("passed") else "[bold red]FAILED[/]"
    console.print(f"{summary.get(PASS, 0)} passed, {summary.get(WARN, 0)} warnings, {summary.get(FAIL, 0)} failed: "
                  f"{verdict}", highlight=False)


def print_compare(compare: dict[str, Any], console: Console) -> None:
    profiles = compare.get("profiles") or []
    table = Table(title=f"{compare.get('entry')}: the same entry under each network profile", show_lines=True)
    table.add_column("check", style="bold")
    for profile in profiles:
        table.add_column(f"{profile}\n({compare.get('slugs', {}).get(profile, '')})")
    for check, row in (compare.get("matrix") or {}).items():
        cells = []
        for profile in profiles:
            cell = row.get(profile)
            cells.append("—" if cell is None else f"[{STYLE[cell['status']]}]{MARK[cell['status']]}[/]\n{cell['detail']}")
        table.add_row(check, *cells)
    console.print(table)
    for error in compare.get("errors") or []:
        console.print(f"[bold red]ERROR[/] {error}", highlight=False)


def junit_xml(document: dict[str, Any]) -> str:
    results = list(document.get("results") or [])
    if document.get("compare"):
        results += document["compare"].get("results") or []
    errors = list(document.get("errors") or []) + list((document.get("compare") or {}).get("errors") or [])
    suite = ET.Element("testsuite", {
        "name": "stockade-verify",
        "tests": str(len(results) + len(errors)),
        "failures": str(sum(1 for r in results if r["status"] == FAIL)),
        "errors": str(len(errors)),
        "skipped": "0",
        "timestamp": str(document.get("generated_at", "")),
    })
    for r in results:
        case = ET.SubElement(suite, "testcase", {"classname": f"stockade.verify.{r['server']}", "name": r["check"]})
        body = "\n".join(r.get("evidence") or [])
        if r["status"] == FAIL:
            failure = ET.SubElement(case, "failure", {"message": r["detail"], "type": "PolicyViolation"})
            failure.text = body
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{r['status']}: {r['detail']}\n{body}"
    for i, error in enumerate(errors):
        case = ET.SubElement(suite, "testcase", {"classname": "stockade.verify", "name": f"run-error-{i + 1}"})
        ET.SubElement(case, "error", {"message": error})
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f24;background:#fff}
h1{font-size:1.4rem}table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #d0d7de;padding:.4rem .6rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}.pass{color:#116329}.warn{color:#9a6700}.fail{color:#cf222e;
font-weight:bold}.verdict{font-size:1.1rem}details{margin:.3rem 0}code,pre{font-family:ui-monospace,monospace;
font-size:.85rem}pre{white-space:pre-wrap;background:#f6f8fa;padding:.5rem}
"""


def html_report(document: dict[str, Any]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Stockade verification</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Stockade verification</h1>",
             f"<p>Run <code>{e(str(document.get('run_id', '')))}</code> at {e(str(document.get('generated_at', '')))}.</p>"]
    verdict = "all policies enforced" if document.get("passed") else "FAILED"
    parts.append(f'<p class="verdict {"pass" if document.get("passed") else "fail"}" id="verdict">{verdict}</p>')
    results = document.get("results") or []
    if results:
        servers, checks, cells = _grid(results)
        parts.append('<table id="matrix"><thead><tr><th scope="col">server</th>'
                     + "".join(f'<th scope="col">{e(c)}</th>' for c in checks) + "</tr></thead><tbody>")
        for server in servers:
            parts.append(f'<tr><th scope="row">{e(server)}</th>')
            for check in checks:
                cell = cells.get((server, check))
                if cell is None:
                    parts.append("<td>—</td>")
                else:
                    parts.append(f'<td class="{cell["status"]}" data-server="{e(server)}" data-check="{e(check)}" '
                                 f'title="{e(cell["detail"])}">{e(MARK[cell["status"]])}</td>')
            parts.append("</tr>")
        parts.append("</tbody></table><h2>Evidence</h2>")
        for r in results:
            parts.append(f'<details{" open" if r["status"] == FAIL else ""}><summary><span class="{r["status"]}">'
                         f'{e(r["status"].upper())}</span> {e(r["server"])} / {e(r["check"])}: {e(r["detail"])}'
                         f'</summary><pre>{e(chr(10).join(r.get("evidence") or []))}</pre></details>')
    compare = document.get("compare")
    if compare:
        profiles = compare.get("profiles") or []
        parts.append(f"<h2>{e(str(compare.get('entry')))} under each network profile</h2>")
        parts.append('<table id="compare"><thead><tr><th scope="col">check</th>'
                     + "".join(f'<th scope="col">{e(p)}</th>' for p in profiles) + "</tr></thead><tbody>")
        for check, row in (compare.get("matrix") or {}).items():
            parts.append(f'<tr><th scope="row">{e(check)}</th>')
            for profile in profiles:
                cell = row.get(profile)
                parts.append("<td>—</td>" if cell is None else
                             f'<td class="{cell["status"]}">{e(MARK[cell["status"]])}<br>{e(cell["detail"])}</td>')
            parts.append("</tr>")
        parts.append("</tbody></table>")
    errors = list(document.get("errors") or []) + list((compare or {}).get("errors") or [])
    if errors:
        parts.append("<h2>Errors</h2><ul>" + "".join(f'<li class="fail">{e(x)}</li>' for x in errors) + "</ul>")
    parts.append(f'<script type="application/json" id="report">{e(json.dumps(document))}</script>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
