"""The latest `stockade verify` report (`verify/latest.json`) as a server x check matrix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VerifyCell:
    status: str  # pass, fail, skip
    detail: str = ""


@dataclass(frozen=True)
class VerifyMatrix:
    generated_at: str | None
    checks: list[str]
    rows: list[tuple[str, list[VerifyCell | None]]]
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return all(c is None or c.status != "fail" for _, cells in self.rows for c in cells)


def _verify_status(value: Any) -> VerifyCell:
    detail = ""
    if isinstance(value, dict):
        detail = str(value.get("detail") or value.get("message") or "")
        value = value.get("status", value.get("ok", value.get("passed")))
    if value is True or (isinstance(value, str) and value.lower() in {"pass", "passed", "ok", "success"}):
        return VerifyCell("pass", detail)
    if value is False or (isinstance(value, str) and value.lower() in {"fail", "failed", "error"}):
        return VerifyCell("fail", detail)
    if isinstance(value, str) and value.lower() in {"warn", "warning"}:
        return VerifyCell("warn", detail)
    return VerifyCell("skip", detail or (str(value) if value is not None else ""))


def read_verify_results(path: Path) -> VerifyMatrix | None:
    """Read `verify/latest.json`. Accepted shapes (until `stockade verify` fixes one):

    `{"generated_at": ..., "results": [{"server": s, "check": c, "status"|"ok": ..., "detail": ...}]}` or
    `{"generated_at": ..., "servers": {s: {c: true | "pass" | {"status": ..., "detail": ...}}}}`.
    """
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return VerifyMatrix(None, [], [], problem=f"{path.name} could not be read: {type(exc).__name__}")
    if not isinstance(document, dict):
        return VerifyMatrix(None, [], [], problem=f"{path.name} is not a JSON object")
    cells: dict[str, dict[str, VerifyCell]] = {}
    results = document.get("results")
    if isinstance(results, list):
        for item in results:
            if isinstance(item, dict) and item.get("server") and item.get("check"):
                cells.setdefault(str(item["server"]), {})[str(item["check"])] = _verify_status(item)
    servers = document.get("servers")
    if isinstance(servers, dict):
        for server, checks in servers.items():
            if isinstance(checks, dict):
                for check, value in checks.items():
                    cells.setdefault(str(server), {})[str(check)] = _verify_status(value)
    check_names = sorted({c for row in cells.values() for c in row})
    rows = [(server, [cells[server].get(c) for c in check_names]) for server in sorted(cells)]
    generated = document.get("generated_at") or document.get("finished_at")
    return VerifyMatrix(str(generated) if generated else None, check_names, rows)
