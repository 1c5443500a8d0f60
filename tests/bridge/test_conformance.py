"""`@modelcontextprotocol/conformance` server scenarios, both protocol eras: every scenario that
passes against the fixture served directly by the SDK (its own Streamable HTTP) must pass through
the bridge too. Each test prints both lists.

- legacy revision (2025-11-25): conformance 0.1.x on the system Node (20);
- 2026-07-28: the 0.2.0 pre-release, which needs Node 22 (npm-installed as the `node@22` package),
  run with `--requirements 2026-07-28`, through the bridge in front of the fixture as a legacy
  stdio backend (the bridge translates) and as a 2026-07-28-only backend (`--modern-only`).

The suite cannot send a bearer token, so the bridge runs with `--no-auth-loopback`.

One documented exception (bridge README, "not translated"): behind a 2025-revision backend, the
2026-07-28 scenarios in `SERVER_CHOSEN_KEYS` are not compared, because they depend on the
`inputRequests` keys a 2026-07-28 server names itself, and a 2025 server-to-client request carries
no key (the bridge names them `input-1`, ...). They are printed, never silently dropped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from .conftest import FIXTURE_COMMAND, Bridge, free_port, npm_install

LEGACY_SUITE_VERSION = "0.1.12"  # the newest that runs on Node 20
MODERN_SUITE_VERSION = "0.2.0-alpha.12"  # the newest pre-release with the 2026-07-28 requirement set
NODE22_VERSION = "22.23.3"
SERVER_CHOSEN_KEYS = {
    "input-required-result-basic-elicitation": "expects the inputRequests key 'user_name'",
}
SUMMARY_LINE = re.compile(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed$")


@pytest.fixture(scope="session")
def legacy_suite() -> list[str]:
    node = shutil.which("node")
    assert node, "node is needed for the conformance suite (scripts/bootstrap installs it)"
    script = npm_install(f"conformance-{LEGACY_SUITE_VERSION}",
                         f"@modelcontextprotocol/conformance@{LEGACY_SUITE_VERSION}", "conformance")
    return [node, str(script), "server"]


@pytest.fixture(scope="session")
def modern_suite() -> list[str]:
    node = npm_install(f"node-{NODE22_VERSION}", f"node@{NODE22_VERSION}", "node")
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.stdout.strip() == f"v{NODE22_VERSION}", (version.stdout, version.stderr)
    script = npm_install(f"conformance-{MODERN_SUITE_VERSION}",
                         f"@modelcontextprotocol/conformance@{MODERN_SUITE_VERSION}", "conformance")
    return [str(node), str(script), "server", "--requirements", "2026-07-28"]


def run_suite(suite: list[str], url: str, label: str) -> dict[str, bool]:
    """Scenario -> passed (at least one check, none failed); prints the two lists."""
    result = subprocess.run([*suite, "--url", url], capture_output=True, text=True, timeout=900, check=False)
    outcome: dict[str, bool] = {}
    for line in result.stdout.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if match and match.group(1) not in outcome:  # the summary repeats unscored ones
            outcome[match.group(1)] = int(match.group(3)) == 0 and int(match.group(2)) > 0
    assert outcome, result.stdout[-5000:] + result.stderr[-5000:]
    print(f"\n{label}: {sum(outcome.values())}/{len(outcome)} scenarios pass")
    print(f"  passed: {' '.join(sorted(name for name, ok in outcome.items() if ok))}")
    print(f"  failed: {' '.join(sorted(name for name, ok in outcome.items() if not ok))}")
    return outcome


@contextmanager
def served_directly(log_path: Path) -> Iterator[str]:
    """The fixture on the SDK's own Streamable HTTP."""
    port = free_port()
    with log_path.open("ab") as log:
        direct = subprocess.Popen([*FIXTURE_COMMAND, "--http", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx2.TransportError:
                assert direct.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the fixture's HTTP server did not start in 60 s"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        direct.terminate()
        direct.wait(timeout=30)


def assert_nothing_lost(baseline: dict[str, bool], through: dict[str, bool], minimum: int,
                        excused: dict[str, str] | None = None) -> None:
    passing = {name for name, ok in baseline.items() if ok}
    assert len(passing) >= minimum, f"the direct baseline passes too little to prove anything: {baseline}"
    for name, why in sorted((excused or {}).items()):
        print(f"  not compared: {name} ({why}): {'passes' if through.get(name) else 'fails'} through the bridge")
    lost = sorted(name for name in passing if not through.get(name) and name not in (excused or {}))
    assert lost == [], f"pass directly but not through the bridge: {lost}"


def test_legacy_revision(legacy_suite: list[str], bridge_factory, tmp_path: Path) -> None:
    with served_directly(tmp_path / "direct.log") as url:
        baseline = run_suite(legacy_suite, url, "legacy suite, SDK directly")
    bridge: Bridge = bridge_factory(FIXTURE_COMMAND, mode="no-auth")
    bridge.wait_ready()
    through = run_suite(legacy_suite, bridge.url, "legacy suite, through the bridge")
    assert_nothing_lost(baseline, through, minimum=15)


@pytest.fixture(scope="module")
def modern_baseline(modern_suite: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, bool]:
    with served_directly(tmp_path_factory.mktemp("direct") / "direct.log") as url:
        return run_suite(modern_suite, url, "2026-07-28 suite, SDK directly")


@pytest.mark.parametrize("backend", ["legacy-backend", "modern-only-backend"])
def test_2026_07_28_revision(modern_suite: list[str], modern_baseline: dict[str, bool], bridge_factory,
                             backend: str) -> None:
    command = FIXTURE_COMMAND + (["--modern-only"] if backend == "modern-only-backend" else [])
    bridge: Bridge = bridge_factory(command, mode="no-auth")
    status = bridge.wait_ready()
    assert status["protocol"] == ("2026-07-28" if backend == "modern-only-backend" else "2025-11-25"), status
    through = run_suite(modern_suite, bridge.url, f"2026-07-28 suite, through the bridge ({backend})")
    assert_nothing_lost(modern_baseline, through, minimum=35,
                        excused=SERVER_CHOSEN_KEYS if backend == "legacy-backend" else None)
