"""Operations: `stockade doctor` and the Prometheus metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2

from tests.conftest import RunningPlatform


def doctor(env: dict[str, str]) -> tuple[int, list[dict]]:
    result = subprocess.run([sys.executable, "-m", "stockade.cli", "doctor", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout)


def test_doctor_names_each_problem_with_its_fix(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}, "STOCKADE_DATA_DIR": str(tmp_path)}
    code, findings = doctor(env)
    assert code == 1
    problems = {f["check"]: f for f in findings if f["status"] == "PROBLEM"}
    assert set(problems) == {"database", "master key"}
    assert all(f["fix"] for f in problems.values())
    assert {f["check"] for f in findings} >= {"engine", "tool iptables", "port gateway", "port control", "clock"}


def test_doctor_is_happy_with_a_running_platform(platform: RunningPlatform) -> None:
    code, findings = doctor(platform.env)
    assert code == 0, [f for f in findings if f["status"] != "ok"]
    ports = {f["check"]: f["detail"] for f in findings if f["check"].startswith("port")}
    assert all("served by a running Stockade" in detail for detail in ports.values())


def test_metrics_need_an_admin_and_count_calls(platform: RunningPlatform) -> None:
    url = f"{platform.control_url}/api/v1/metrics"
    assert httpx2.get(url).status_code == 401
    httpx2.get(f"{platform.gateway_url}/api/v1/tools", headers={"Authorization": "Bearer stk_nope_nope"})
    text = httpx2.get(url, headers=platform.admin_headers).text
    for name in ("stockade_calls_total", "stockade_call_latency_seconds", "stockade_auth_failures_total",
                 "stockade_egress_denials_total", "stockade_active_sessions"):
        assert name in text or name.removesuffix("_total") in text, name
    failures = [line for line in text.splitlines() if line.startswith("stockade_auth_failures_total")]
    assert failures and float(failures[0].split()[-1]) >= 1
