"""`@modelcontextprotocol/conformance` server scenarios: every scenario that passes against the
fixture served directly by the SDK (Streamable HTTP) must pass through the bridge too."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx2
import pytest

from .conftest import CACHE, FIXTURE_COMMAND, Bridge, free_port

CONFORMANCE_VERSION = "0.1.12"  # the newest that runs on Node 20
SUMMARY_LINE = re.compile(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed$")


@pytest.fixture(scope="session")
def conformance() -> list[str]:
    target = CACHE / f"conformance-{CONFORMANCE_VERSION}"
    executable = target / "node_modules" / ".bin" / "conformance"
    if not executable.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed for the conformance tests (Node 20)"
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(check=False, args=[npm, "install", "--no-audit", "--no-fund", "--prefix", str(target),
                                 f"@modelcontextprotocol/conformance@{CONFORMANCE_VERSION}"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    return [shutil.which("node") or "node", str(executable)]


def run_suite(conformance: list[str], url: str) -> dict[str, bool]:
    result = subprocess.run(check=False, args=[*conformance, "server", "--url", url], capture_output=True, text=True, timeout=600)
    outcome: dict[str, bool] = {}
    for line in result.stdout.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if match:
            outcome[match.group(1)] = int(match.group(3)) == 0 and int(match.group(2)) > 0
    assert outcome, result.stdout + result.stderr
    return outcome


def test_bridge_passes_what_the_server_passes(conformance: list[str], bridge_factory, tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "direct.log").open("ab") as log:
        direct = subprocess.Popen([*FIXTURE_COMMAND, "--http", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx2.TransportError:
                time.sleep(0.1)
        baseline = run_suite(conformance, f"http://127.0.0.1:{port}/mcp")
    finally:
        direct.terminate()
        direct.wait(timeout=30)

    bridge: Bridge = bridge_factory(FIXTURE_COMMAND, mode="no-auth")  # the suite cannot send a token
    bridge.wait_ready()
    through = run_suite(conformance, bridge.url)

    passing = {name for name, ok in baseline.items() if ok}
    assert len(passing) >= 15, baseline
    lost = sorted(name for name in passing if not through.get(name))
    assert lost == [], f"pass directly but not through the bridge: {lost}"
