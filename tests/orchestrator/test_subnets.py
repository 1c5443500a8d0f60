"""Per-server subnets: /28s from the pool, never overlapping engine networks or host routes."""

from __future__ import annotations

import ipaddress
from itertools import islice
from types import SimpleNamespace

import pytest

from stockade.errors import DeploymentError
from stockade.orchestrator.runtime import Orchestrator
from stockade.orchestrator.subnets import engine_subnets, free_subnets, host_routes, route_source


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_free_subnets_skip_used_ranges() -> None:
    used = [net("10.213.0.0/28"), net("10.213.0.32/27"), net("192.168.0.0/16")]
    first = list(islice(free_subnets("10.213.0.0/16", used), 3))
    assert first == [net("10.213.0.16/28"), net("10.213.0.64/28"), net("10.213.0.80/28")]


def test_a_route_covering_the_whole_pool_leaves_nothing() -> None:
    assert list(free_subnets("10.213.0.0/24", [net("10.0.0.0/8")])) == []


def test_pool_must_be_ipv4_and_big_enough() -> None:
    with pytest.raises(ValueError):
        list(free_subnets("fd00::/64", []))
    with pytest.raises(ValueError):
        list(free_subnets("10.213.0.0/30", []))


def test_engine_subnets_and_host_routes_are_read() -> None:
    assert engine_subnets([{"IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}, {"Subnet": "fd00::/64"}]}},
                           {"IPAM": None}]) == [net("172.17.0.0/16")]
    routes = host_routes()
    assert routes and all(isinstance(r, ipaddress.IPv4Network) for r in routes)
    assert net("127.0.0.0/8") in routes or any(r.overlaps(net("127.0.0.1/32")) for r in routes)


def test_route_source_names_the_address_the_kernel_sends_from() -> None:
    assert route_source("127.0.0.9", 8080) == "127.0.0.1"


def test_an_instance_network_the_host_does_not_route_to_itself_is_refused() -> None:
    # What Podman's internal networks look like from the host: a subnet with no address of the
    # host on it, so traffic to it would follow the default route (or none). TEST-NET-1: the
    # check only asks the kernel for a route, it sends nothing.
    unrouted = SimpleNamespace(attrs={"IPAM": {"Config": [{"Subnet": "192.0.2.0/28", "Gateway": "192.0.2.1"}]}})
    with pytest.raises(DeploymentError, match="the host has no route to t-0 on its own network") as caught:
        Orchestrator._check_host_route(unrouted, "t-0")
    assert "Podman" in (caught.value.hint or "")
    # Loopback stands in for a bridge the host holds the gateway of.
    routed = SimpleNamespace(attrs={"IPAM": {"Config": [{"Subnet": "127.0.0.0/28", "Gateway": "127.0.0.1"}]}})
    Orchestrator._check_host_route(routed, "t-1")
