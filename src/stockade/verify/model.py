"""Results of a verification run: one named result per (server, check), and the report document.

The report is also what `<data_dir>/verify/latest.json` holds; its `results` list is the shape the
dashboard reads (`{"generated_at", "results": [{"server", "check", "status", "detail"}]}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, WARN = "pass", "fail", "warn"
CHECKS = ("bridge", "host", "pivot", "egress", "hardening", "secrets")
REACHABILITY_CHECKS = ("bridge", "host", "pivot", "egress")


@dataclass
class CheckResult:
    server: str
    check: str
    status: str
    detail: str
    evidence: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "check": self.check, "status": self.status, "detail": self.detail,
                "evidence": list(self.evidence)}


def worst(statuses: list[str]) -> str:
    if FAIL in statuses:
        return FAIL
    if WARN in statuses:
        return WARN
    return PASS


class Findings:
    """Collects the pass/warn/fail items of one check and turns them into a `CheckResult`."""

    def __init__(self, server: str, check: str) -> None:
        self.server, self.check = server, check
        self.items: list[tuple[str, str]] = []

    def add(self, status: str, text: str) -> None:
        self.items.append((status, text))

    def ok(self, text: str) -> None:
        self.add(PASS, text)

    def fail(self, text: str) -> None:
        self.add(FAIL, text)

    def warn(self, text: str) -> None:
        self.add(WARN, text)

    def result(self, summary_pass: str) -> CheckResult:
        status = worst([s for s, _ in self.items])
        problems = [t for s, t in self.items if s == status] if status != PASS else []
        detail = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "") \
            if problems else summary_pass
        evidence = [f"{s.upper()}: {t}" for s, t in self.items]
        return CheckResult(self.server, self.check, status, detail, evidence)


def report_document(*, run_id: str, generated_at: str, results: list[CheckResult], errors: list[str],
                    compare: dict[str, Any] | None = None) -> dict[str, Any]:
    servers = sorted({r.server for r in results})
    failed = any(r.status == FAIL for r in results) or bool(errors)
    if compare and compare.get("failed"):
        failed = True
    document: dict[str, Any] = {
        "format": "stockade-verify/1",
        "run_id": run_id,
        "generated_at": generated_at,
        "passed": not failed,
        "exit_status": 1 if failed else 0,
        "checks": [c for c in CHECKS if any(r.check == c for r in results)],
        "servers_checked": servers,
        "summary": {status: sum(1 for r in [*(r.as_dict() for r in results), *(compare or {}).get("results", [])]
                                if r["status"] == status) for status in (PASS, WARN, FAIL)},
        "results": [r.as_dict() for r in results],
        "errors": list(errors),
    }
    if compare is not None:
        document["compare"] = compare
    return document
