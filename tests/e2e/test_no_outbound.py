"""Nothing leaves the machine: at start-up the platform connects only to loopback and local sockets.

Every connect(2) of the process and its children is traced (strace); no telemetry, no update
check, no registry.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx2

from tests.conftest import _wait_healthy, free_port, fresh_database_url

FAMILY = re.compile(r"sa_family=(AF_\w+)")
ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def destination(line: str) -> tuple[str, str | None]:
    family = FAMILY.search(line)
    address = ADDRESS.search(line)
    return (family.group(1) if family else "?", (address.group(1) or address.group(2)) if address else None)


def test_start_up_connects_only_locally(tmp_path: Path) -> None:
    gateway_port, control_port = free_port(), free_port()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
           "STOCKADE_DATA_DIR": str(tmp_path), "STOCKADE_GATEWAY_PORT": str(gateway_port),
           "STOCKADE_CONTROL_PORT": str(control_port), "STOCKADE_DATABASE_URL": fresh_database_url(tmp_path)}
    trace = tmp_path / "connect.trace"
    log = tmp_path / "platform.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace),
                                    sys.executable, "-m", "stockade.cli", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{gateway_port}", process, log)
        _wait_healthy(f"http://127.0.0.1:{control_port}", process, log)
        assert httpx2.get(f"http://127.0.0.1:{control_port}/health").status_code == 200
    finally:
        # stop the traced platform itself (strace then exits with it)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        for child in children:
            subprocess.run(["kill", "-TERM", child], check=False)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for child in children:  # killing strace alone would detach, not end, the platform
            subprocess.run(["kill", "-KILL", child], check=False, capture_output=True)
    connects = [line for line in trace.read_text().splitlines() if "connect(" in line]
    assert connects, "strace saw no connect at all: the trace is not working"
    outside = []
    for line in connects:
        family, address = destination(line)
        if family in ("AF_UNIX", "AF_UNSPEC", "AF_NETLINK"):
            continue
        if family in ("AF_INET", "AF_INET6") and address and (address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")):
            continue
        outside.append(line)
    assert outside == [], f"connections that leave the machine at start-up: {outside[:5]}"
