"""Address space for the per-server networks.

Docker's default address pools hold about 30 networks (15 /16s in 172.17-31, 16 /20s in
192.168), and every deployment gets a network of its own: the pool would run out long before the
engine does. Each server network instead gets a /28 (gateway + one container, room to spare) from
`settings.server_network_pool`, avoiding every subnet an engine network already uses and every
route the host has (so a LAN behind the host is never shadowed).
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterable, Iterator

SUBNET_PREFIX = 28
_ROUTE_TYPES = {"local", "broadcast", "unicast", "multicast", "anycast", "blackhole", "unreachable",
                "prohibit", "throw", "nat"}

IPv4Net = ipaddress.IPv4Network


def free_subnets(pool: str, used: Iterable[IPv4Net], prefix: int = SUBNET_PREFIX) -> Iterator[IPv4Net]:
    """Subnets of `pool` (size /prefix) overlapping none of `used`, in address order."""
    parsed = ipaddress.ip_network(pool, strict=False)
    if parsed.version != 4:
        raise ValueError(f"server_network_pool {pool!r} must be an IPv4 network")
    network = ipaddress.IPv4Network(parsed)
    if network.prefixlen > prefix:
        raise ValueError(f"server_network_pool {pool!r} is smaller than one /{prefix}")
    taken = [u for u in used if u.overlaps(network)]
    for candidate in network.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(u) for u in taken):
            yield candidate


def host_routes() -> list[IPv4Net]:
    """Destinations of the host's IPv4 routes (all tables), the default route excepted."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    routes = []
    for line in out.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        destination = tokens[1] if tokens[0] in _ROUTE_TYPES and len(tokens) > 1 else tokens[0]
        if destination == "default":
            continue
        try:
            routes.append(ipaddress.IPv4Network(destination, strict=False))
        except ValueError:
            continue
    return routes


def engine_subnets(networks: Iterable[dict]) -> list[IPv4Net]:
    """Subnets the engine's networks use (from `docker network inspect`-shaped dicts)."""
    used = []
    for network in networks:
        for config in (network.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(config.get("Subnet", ""), strict=False)
            except ValueError:
                continue
            if isinstance(subnet, ipaddress.IPv4Network):
                used.append(subnet)
    return used


def route_source(address: str, port: int) -> str:
    """The host address the kernel would send from to reach `address`: which route it takes.

    A connected UDP socket sends nothing; connecting only makes the kernel choose the route.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, port))
        return str(probe.getsockname()[0])
