"""The internet canary on the real host: it takes a TEST-NET-3 address that nothing routes yet.

A test network (tests/isolation's session-long "internet") or another verify run may hold some of
203.0.113.0/24; a canary that picked one of those failed its `ip route add` ("File exists"). Here
every address but one is routed (to a veth pair this test creates and deletes, both ends on the
host), so the canary must find the one left. Nothing leaves the host.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest

from stockade.verify.canaries import TEST_NET_3, InternetCanary


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture
def all_but_one_routed() -> Iterator[str]:
    """Route every unrouted TEST-NET-3 address from .2 to .254 but one; yield the one left."""
    device = f"stkvt{secrets.token_hex(3)}"
    routed = set(TEST_NET_3.findall(ip("-4", "route", "show", "table", "all")))
    free = [f"203.0.113.{n}" for n in range(2, 255) if f"203.0.113.{n}" not in routed]
    left = secrets.choice(free)
    ip("link", "add", device, "type", "veth", "peer", "name", f"{device}p")
    try:
        ip("link", "set", device, "up")
        ip("link", "set", f"{device}p", "up")
        batch = "".join(f"route add {address}/32 dev {device}\n" for address in free if address != left)
        subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True, text=True, timeout=60, check=True)
        yield left
    finally:
        ip("link", "del", device)  # its peer and its routes go with it


def test_the_canary_takes_the_one_address_nothing_routes(all_but_one_routed: str) -> None:
    with InternetCanary() as internet:
        assert internet.address == all_but_one_routed
        assert internet.reachable_from_host()
    assert all_but_one_routed not in TEST_NET_3.findall(ip("-4", "route", "show", "table", "all"))  # taken down
