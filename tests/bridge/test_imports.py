"""The bridge runs in server images that install only its own requirements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("pydantic", "pydantic_settings", "fastapi", "httpx2", "sqlalchemy", "docker", "yaml", "mcp",
             "mcp_types", "stockade.config")


def test_bridge_imports_only_its_requirements() -> None:
    code = ("import sys, stockade.bridge.__main__, stockade.bridge.http, stockade.http_protocol;"
            f"bad = [m for m in sys.modules if m in {FORBIDDEN!r} or m.split('.')[0] in {FORBIDDEN!r}];"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_requirements_are_pinned() -> None:
    path = Path(__file__).resolve().parents[2] / "src" / "stockade" / "bridge" / "requirements.txt"
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    names = {line.split("==")[0].lower() for line in lines}
    assert {"anyio", "starlette", "uvicorn"} <= names
    assert all("==" in line for line in lines)
