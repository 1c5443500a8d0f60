"""Network profiles, enforced: the same image deployed as `none`, `egress` and `open`, probed from inside.

Every check runs in a probe container joined to the server's network namespace, as the server's
user (65534), with no capabilities, using the image's python3. The expectations are the table in
src/stockade/orchestrator/README.md.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from stockade import metrics
from stockade.catalog import CatalogEntry
from stockade.config import Settings
from stockade.orchestrator import egress, firewall
from stockade.orchestrator.images import BuiltImage
from stockade.orchestrator.runtime import Orchestrator, ServerInstance
from tests.conftest import wait_for
from tests.listener import DnsRecorder, dns_answer_addresses, dns_query

from .conftest import (
    ALLOWED_IP,
    DNS_IP,
    HOST_SIDE,
    OTHER_IP,
    WILD_IP,
    HostListener,
    Internet,
    host_ipv4_addresses,
    key,
    probe,
)

TOKEN = "bridge-" + secrets.token_urlsafe(16)
SLUGS = {"none": "iso-none", "egress": "iso-egress", "open": "iso-open"}


def entry_with(time_entry: CatalogEntry, network: str, egress_list: list[str] | None = None) -> CatalogEntry:
    data = time_entry.model_dump(mode="json")
    data.update(network=network, egress=egress_list or [])
    return CatalogEntry.model_validate(data)


@dataclass
class Fleet:
    orchestrator: Orchestrator
    servers: dict[str, ServerInstance]
    image: str
    listener: HostListener

    @property
    def proxy(self) -> str:
        [ip] = {v.split("//")[1] for k, v in self.env("egress").items() if k == "HTTP_PROXY"}
        return ip

    def env(self, profile: str) -> dict[str, str]:
        info = self.orchestrator.client.api.inspect_container(self.servers[profile].container_id)
        return dict(item.split("=", 1) for item in info["Config"]["Env"] or [])


@pytest.fixture(scope="module")
def fleet(isolation_settings: Settings, engine: docker.DockerClient, time_entry: CatalogEntry,
          time_image: BuiltImage, host_listener: HostListener) -> Iterator[Fleet]:
    orchestrator = Orchestrator(isolation_settings, client=engine)
    allow = ["allowed.example.test:443", "allowed.example.test:80", "*.wild.example.test:8443",
             f"private.example.test:{host_listener.port}",
             # resolved through the internet's DNS server only (conftest.INTERNET_DNS)
             "resolved.example.test:443", "resolved.example.test:80", "portonly.example.test:443",
             "metadata.example.test:80", "loopback.example.test:443", "rebind-first.example.test:443",
             "rebind-last.example.test:443"]
    entries = {"none": entry_with(time_entry, "none"), "egress": entry_with(time_entry, "egress", allow),
               "open": entry_with(time_entry, "open")}
    servers: dict[str, ServerInstance] = {}
    try:
        for profile, slug in SLUGS.items():
            orchestrator.remove(slug)
            servers[profile] = orchestrator.deploy(entries[profile], slug=slug, deployment_id=f"dep-{slug}", env={},
                                                   bridge_token=TOKEN)
        yield Fleet(orchestrator=orchestrator, servers=servers, image=time_image.tag, listener=host_listener)
    finally:
        for slug in SLUGS.values():
            orchestrator.remove(slug)


def host_addresses(fleet: Fleet) -> list[str]:
    """Every IPv4 address of the host: each bridge gateway (servers' and the proxy's), docker0, eth0..."""
    return sorted(set(host_ipv4_addresses()))


def check(fleet: Fleet, profile: str, *checks: list) -> dict[str, str]:
    return probe(fleet.orchestrator.client, fleet.image, fleet.servers[profile].container_id, list(checks))


# -- egress ----------------------------------------------------------------------------------------------
def test_egress_allowed_destinations_answer_through_the_proxy(fleet: Fleet) -> None:
    proxy = fleet.proxy
    results = check(fleet, "egress",
                    ["connect", proxy, "allowed.example.test:443"],
                    ["get", proxy, "http://allowed.example.test/"],
                    ["connect", proxy, "sub.wild.example.test:8443"])
    assert results[key("connect", proxy, "allowed.example.test:443")] == \
        f"tunnel 200 internet {ALLOWED_IP}:443 host=allowed.example.test:443", results
    assert results[key("get", proxy, "http://allowed.example.test/")].startswith(
        f"status 200 internet {ALLOWED_IP}:80 host=allowed.example.test"), results
    assert results[key("connect", proxy, "sub.wild.example.test:8443")].startswith(
        f"tunnel 200 internet {WILD_IP}:8443"), results


def test_egress_denies_everything_else_and_counts_it(fleet: Fleet) -> None:
    proxy = fleet.proxy
    slug = SLUGS["egress"]
    fleet.orchestrator.record_egress_denials([slug])  # the metric catches up with earlier denials
    before = fleet.orchestrator.egress_denials(slug)
    metric_base = metrics.REGISTRY.get_sample_value("stockade_egress_denials_total", {"server": slug}) or 0.0
    assert metric_base == before
    denied_via_proxy = [
        ["connect", proxy, "other.example.test:443"],          # host not listed
        ["get", proxy, "http://other.example.test/"],
        ["connect", proxy, "allowed.example.test:8443"],       # port not listed
        ["get", proxy, "http://allowed.example.test:8443/"],
        ["connect", proxy, "wild.example.test:8443"],          # *.domain is subdomains only
        ["connect", proxy, f"{ALLOWED_IP}:443"],               # raw IP
        ["get", proxy, f"http://{ALLOWED_IP}/"],
        ["connect", proxy, f"[::ffff:{ALLOWED_IP}]:443"],
        ["connect", proxy, f"private.example.test:{fleet.listener.port}"],  # listed, resolves to the host
        ["get", proxy, f"http://private.example.test:{fleet.listener.port}/"],
        ["connect", proxy, f"unlisted-{secrets.token_hex(4)}.example.test:443"],
    ]
    results = check(fleet, "egress", *denied_via_proxy)
    for item in denied_via_proxy:
        assert results[key(*item)].startswith("status 403"), (item, results)
    after = fleet.orchestrator.egress_denials(slug)
    assert after - before == len(denied_via_proxy)
    added = fleet.orchestrator.record_egress_denials([slug])
    assert added == {slug: len(denied_via_proxy)}
    metric_after = metrics.REGISTRY.get_sample_value("stockade_egress_denials_total", {"server": slug})
    assert metric_after - metric_base == len(denied_via_proxy)
    assert fleet.orchestrator.record_egress_denials([slug]) == {slug: 0}  # counted once
    assert fleet.listener.port and not [p for p in fleet.listener.peers if p.startswith("10.")]


def test_egress_server_has_no_other_way_out(fleet: Fleet) -> None:
    listener = fleet.listener
    peers_before = list(listener.peers)
    none_ip = fleet.servers["none"].ip
    checks = [
        ["tcp", "127.0.0.1", 8080],                       # control: the bridge in its own namespace
        ["tcp", ALLOWED_IP, 443], ["tcp", OTHER_IP, 80],  # the internet directly, by IP
        ["http", ALLOWED_IP, 80],
        ["tcp", none_ip, 8080],                           # another server's bridge
        ["dns", "allowed.example.test"], ["dns", "anything.example.test"],
        *(["tcp", ip, listener.port] for ip in host_addresses(fleet)),
    ]
    results = check(fleet, "egress", *checks)
    assert results[key("tcp", "127.0.0.1", 8080)] == "connected", results
    for item in checks[1:]:
        assert results[key(*item)].startswith("error"), (item, results)
    assert listener.peers == peers_before


def test_egress_runtime_configuration(fleet: Fleet, engine: docker.DockerClient) -> None:
    server = fleet.servers["egress"]
    assert server.network_profile == "egress" and server.egress_proxy
    env = fleet.env("egress")
    proxy_ip = fleet.proxy.split(":")[0]
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == f"http://{proxy_ip}:3128"
    info = engine.api.inspect_container(server.container_id)
    assert info["HostConfig"]["Dns"] == list(egress.BLACKHOLE_DNS)
    # the MCP server process itself (started by the bridge) inherits the proxy settings
    python = info["Config"]["Entrypoint"][0]
    script = ("import os,json\nout={}\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
              "    try:\n        cmd=open(f'/proc/{pid}/cmdline','rb').read().replace(b'\\0',b' ').decode()\n"
              "        env=dict(l.split('=',1) for l in open(f'/proc/{pid}/environ','rb').read().decode().split('\\0') if '=' in l)\n"
              "    except OSError:\n        continue\n    out[cmd]=env.get('HTTPS_PROXY')\nprint(json.dumps(out))\n")
    exec_result = engine.containers.get(server.container_id).exec_run([python, "-c", script], user="65534:65534")
    processes = json.loads(exec_result.output.decode().strip().splitlines()[-1])
    servers = {cmd: value for cmd, value in processes.items() if "mcp-server-time" in cmd and "stockade.bridge" not in cmd}
    assert servers and set(servers.values()) == {f"http://{proxy_ip}:3128"}, processes
    proxy = engine.api.inspect_container(server.egress_proxy)
    host = proxy["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd") and host["Privileged"] is False
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert proxy["Config"]["User"] == egress.PROXY_USER and not proxy["Config"]["User"].startswith("0")
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == host["MemorySwap"] == egress.PROXY_MEMORY
    assert host["PidsLimit"] == egress.PROXY_PIDS and host["NanoCpus"] == egress.PROXY_NANO_CPUS
    assert not host.get("PortBindings")
    networks = proxy["NetworkSettings"]["Networks"]
    outbound_name = egress.outbound_network_name(SLUGS["egress"], fleet.orchestrator.owner)
    assert set(networks) == {server.network_name, outbound_name}
    assert networks[server.network_name]["IPAddress"] == proxy_ip
    outbound = engine.api.inspect_network(networks[outbound_name]["NetworkID"])
    assert outbound["Internal"] is False
    subnet = ipaddress.ip_network(outbound["IPAM"]["Config"][0]["Subnet"])
    assert subnet.prefixlen == 28 and subnet.subnet_of(ipaddress.ip_network(fleet.orchestrator.settings.server_network_pool))
    assert engine.api.inspect_network(server.network_id)["Internal"] is True
    # the outbound network's bridge is host-blocked like the server's
    key_ = fleet.orchestrator.key(SLUGS["egress"])
    assert firewall.rules_for(key_) and firewall.rules_for(egress.outbound_key(key_))
    # squid runs as the proxy user, not root
    top = engine.api.top(proxy["Id"], ps_args="-o pid,uid,comm")
    uid = top["Titles"].index("UID")
    assert top["Processes"] and all(row[uid] == egress.PROXY_USER.split(":")[0] for row in top["Processes"])


def test_the_proxy_itself_cannot_reach_the_host(fleet: Fleet, engine: docker.DockerClient) -> None:
    """The proxy's outbound bridge is host-blocked by the same INPUT firewall."""
    proxy_id = fleet.servers["egress"].egress_proxy
    assert proxy_id
    listener = fleet.listener
    script = ("import socket,sys\n"
              "for ip in sys.argv[2:]:\n"
              "    s=socket.socket(); s.settimeout(3)\n"
              "    try: s.connect((ip,int(sys.argv[1]))); print(ip,'connected')\n"
              "    except OSError as e: print(ip,'error',type(e).__name__)\n")
    # the proxy image has no python; use the server image's python in the proxy's namespace
    python = engine.images.get(fleet.image).attrs["Config"]["Entrypoint"][0]
    out = engine.containers.run(fleet.image, ["-c", script, str(listener.port), *host_addresses(fleet)],
                                entrypoint=[python], network_mode=f"container:{proxy_id}", user="13:13",
                                cap_drop=["ALL"], security_opt=["no-new-privileges:true"], read_only=True,
                                remove=True, labels={"io.stockade.test": "probe"}).decode()
    lines = out.strip().splitlines()
    assert len(lines) == len(host_addresses(fleet))
    assert all(" error " in line for line in lines), out


# -- none ------------------------------------------------------------------------------------------------
def test_none_resolves_no_outside_names_but_the_bridge_works(fleet: Fleet, engine: docker.DockerClient) -> None:
    results = check(fleet, "none", ["dns", "anything.example.test"], ["dns", "allowed.example.test"],
                    ["tcp", "127.0.0.1", 8080])
    assert results[key("dns", "anything.example.test")].startswith("error"), results
    assert results[key("dns", "allowed.example.test")].startswith("error"), results
    assert results[key("tcp", "127.0.0.1", 8080)] == "connected"
    info = engine.api.inspect_container(fleet.servers["none"].container_id)
    assert info["HostConfig"]["Dns"] == list(egress.BLACKHOLE_DNS)
    assert "HTTP_PROXY" not in fleet.env("none")
    assert fleet.servers["none"].egress_proxy is None


# -- DNS: no name leaves a sandbox, the proxy looks up listed names only ----------------------------------
@pytest.fixture
def host_dns() -> Iterator[DnsRecorder]:
    """A DNS server on port 53 of EVERY host address (and the host's loopback, where Docker's embedded
    DNS would send a query if it took a sandbox's resolver for the host's): records what reaches it."""
    recorder = DnsRecorder("0.0.0.0", 53)
    yield recorder
    recorder.close()


def _dns_outcome(result: str) -> tuple[str, list[str]]:
    """("error", []) when nothing answered, else ("rcode N", [A records]) of the reply."""
    if not result.startswith("reply "):
        return "error", []
    reply = bytes.fromhex(result.split(" ", 1)[1])
    try:
        rcode, addresses = dns_answer_addresses(reply)
    except (ValueError, IndexError):
        return f"not DNS: {reply[:60]!r}", []
    return f"rcode {rcode}", addresses


@pytest.mark.parametrize("profile", ["none", "egress", "open"])
def test_no_dns_query_leaves_the_sandbox(profile: str, fleet: Fleet, internet: Internet,
                                         host_dns: DnsRecorder) -> None:
    """UDP and TCP questions to port 53 of every host address, of the internet's DNS server, of the
    proxy, and to Docker's embedded DNS (127.0.0.11): no answer carries an address, and neither the
    host's nor the internet's DNS server hears the name. (`open` reaches the internet by design: its
    question to the internet's DNS server is the control that the probes and recorders work. Its
    embedded DNS forwards to the host's real resolvers, so no test name is sent there.)"""
    name = f"leak-{profile}-{secrets.token_hex(4)}.example.test"
    query = dns_query(name).hex()
    targets = [*host_addresses(fleet), fleet.proxy.split(":")[0], DNS_IP]
    if profile != "open":
        targets.append("127.0.0.11")
    checks = [[kind, target, 53, query] for target in targets for kind in ("dns_udp", "dns_tcp")]
    if profile != "open":
        checks += [["dns", name], ["dns", "resolved.example.test"]]  # the sandbox's own resolver (getaddrinfo)
    results = check(fleet, profile, *checks)
    # other test runs on the machine add and remove bridges: an address gone by now was not asked as a host's
    gone = set(targets) - set(host_addresses(fleet)) - {fleet.proxy.split(":")[0], DNS_IP, "127.0.0.11"}
    outcomes = {(c[0], c[1]): _dns_outcome(results[key(*c)]) for c in checks if c[0] != "dns" and c[1] not in gone}
    if profile == "open":
        for kind in ("dns_udp", "dns_tcp"):
            assert outcomes.pop((kind, DNS_IP)) == ("rcode 3", []), (kind, results[key(kind, DNS_IP, 53, query)])
        assert {q["transport"] for q in internet.dns_queries if q["name"] == name} == {"udp", "tcp"}
        assert all(q["peer"] == HOST_SIDE for q in internet.dns_queries if q["name"] == name)  # NATed out
    else:
        assert name not in internet.dns_names(), internet.dns_queries
        assert results[key("dns", name)].startswith("error"), results
        assert results[key("dns", "resolved.example.test")].startswith("error"), results
    for (kind, target), (outcome, addresses) in outcomes.items():
        assert not addresses, (kind, target, results)
        if target != "127.0.0.11":  # the embedded DNS may answer SERVFAIL: it has no upstream
            assert outcome == "error", (kind, target, results)
    assert name not in host_dns.names(), host_dns.queries
    assert not host_dns.queries, host_dns.queries


def test_the_proxy_looks_up_listed_names_only(fleet: Fleet, internet: Internet, host_dns: DnsRecorder) -> None:
    """The proxy's resolver is the internet's DNS server (Settings.egress_dns): a listed name is looked
    up there (the control), an unlisted one -- or a listed one on an unlisted port -- never is, and a
    listed name whose answer holds a link-local or loopback address is refused without connecting."""
    proxy = fleet.proxy
    unlisted = f"unlisted-{secrets.token_hex(4)}.example.test"
    before = set(internet.dns_names())
    assert not before & {unlisted, "portonly.example.test"}
    allowed = [["connect", proxy, "resolved.example.test:443"], ["get", proxy, "http://resolved.example.test/"]]
    refused = [
        ["connect", proxy, f"{unlisted}:443"], ["get", proxy, f"http://{unlisted}/"],
        ["connect", proxy, "portonly.example.test:8443"],   # listed name, unlisted port
        ["connect", proxy, "metadata.example.test:80"], ["get", proxy, "http://metadata.example.test/"],
        ["connect", proxy, "loopback.example.test:443"],
        ["connect", proxy, "rebind-first.example.test:443"], ["connect", proxy, "rebind-last.example.test:443"],
    ]
    results = check(fleet, "egress", *allowed, *refused)
    assert results[key(*allowed[0])] == f"tunnel 200 internet {ALLOWED_IP}:443 host=resolved.example.test:443", results
    assert results[key(*allowed[1])].startswith(f"status 200 internet {ALLOWED_IP}:80"), results
    for item in refused:
        assert results[key(*item)].startswith("status 403"), (item, results)
    looked_up = internet.dns_names()
    assert "resolved.example.test" in looked_up  # the control: the proxy asks this server
    assert {"metadata.example.test", "loopback.example.test", "rebind-first.example.test",
            "rebind-last.example.test"} <= looked_up  # listed: looked up, then refused by address
    assert unlisted not in looked_up and "portonly.example.test" not in looked_up, internet.dns_queries
    assert all(q["peer"] == HOST_SIDE for q in internet.dns_queries)  # from the proxy, NATed
    assert not host_dns.queries, host_dns.queries


# -- open ------------------------------------------------------------------------------------------------
def test_open_is_loud_and_still_keeps_the_host_and_other_servers_away(fleet: Fleet, engine: docker.DockerClient) -> None:
    server = fleet.servers["open"]
    assert engine.api.inspect_network(server.network_id)["Internal"] is False
    listener = fleet.listener
    peers_before = list(listener.peers)
    checks = [["tcp", fleet.servers["none"].ip, 8080], ["tcp", fleet.servers["egress"].ip, 8080],
              ["tcp", fleet.proxy.split(":")[0], 3128],
              *(["tcp", ip, listener.port] for ip in host_addresses(fleet))]
    results = check(fleet, "open", *checks)
    for item in checks:
        assert results[key(*item)].startswith("error"), (item, results)
    assert listener.peers == peers_before


# -- the three profiles side by side ---------------------------------------------------------------------
REACHABILITY = {
    # observation -> profiles in which it succeeds (the README table)
    "bridge (own namespace)": {"none", "egress", "open"},
    "internet by IP, directly": {"open"},
    "allowed name via proxy": {"egress"},
    "unlisted name via proxy": set(),
    "outside DNS name": set(),
    "internet's DNS server, by IP": {"open"},
    "host addresses": set(),
    "other server's bridge": set(),
}
# `open` asks the host's real resolvers: no test name is sent there (network etiquette)
NOT_PROBED = {"open": {"outside DNS name"}}


def observe(fleet: Fleet, profile: str) -> set[str]:
    proxy = fleet.proxy
    others = [s.ip for p, s in fleet.servers.items() if p != profile]
    host = host_addresses(fleet)
    checks = {
        "bridge (own namespace)": [["tcp", "127.0.0.1", 8080]],
        "internet by IP, directly": [["http", ALLOWED_IP, 80]],
        "allowed name via proxy": [["get", proxy, "http://allowed.example.test/"]],
        "unlisted name via proxy": [["get", proxy, "http://other.example.test/"]],
        "outside DNS name": [["dns", "allowed.example.test"]],
        "internet's DNS server, by IP": [["dns_udp", DNS_IP, 53, dns_query("resolved.example.test").hex()]],
        "host addresses": [["tcp", ip, fleet.listener.port] for ip in host],
        "other server's bridge": [["tcp", ip, 8080] for ip in others],
    }
    for name in NOT_PROBED.get(profile, set()):
        del checks[name]
    results = check(fleet, profile, *[c for group in checks.values() for c in group])

    def ok(result: str) -> bool:
        return result == "connected" or result.startswith(("status 200", "tunnel 200", "resolved", "reply"))

    return {name for name, group in checks.items() if any(ok(results[key(*c)]) for c in group)}


def test_three_profiles_differ_exactly_as_documented(fleet: Fleet) -> None:
    observed = {profile: observe(fleet, profile) for profile in SLUGS}
    expected = {profile: {name for name, where in REACHABILITY.items() if profile in where} for profile in SLUGS}
    assert observed == expected
    assert len({frozenset(v) for v in observed.values()}) == 3


def test_a_stopped_egress_proxy_is_started_again(fleet: Fleet, engine: docker.DockerClient) -> None:
    """While the proxy is down the server has no way out (closed); the supervisor's pass starts it."""
    slug = SLUGS["egress"]
    proxy = engine.containers.get(fleet.servers["egress"].egress_proxy)
    assert fleet.orchestrator.revive_egress_proxies() == []  # nothing stopped: nothing done
    proxy.stop(timeout=1)
    try:
        down = check(fleet, "egress", ["connect", fleet.proxy, "allowed.example.test:443"])
        assert down[key("connect", fleet.proxy, "allowed.example.test:443")].startswith("error"), down
        assert fleet.orchestrator.revive_egress_proxies() == [slug]
    finally:
        proxy.start()  # idempotent: leaves the module's fleet as it found it, whatever failed above
    proxy.reload()
    assert proxy.status == "running"
    wait_for(lambda: check(fleet, "egress", ["connect", fleet.proxy, "allowed.example.test:443"])[
        key("connect", fleet.proxy, "allowed.example.test:443")].startswith("tunnel 200"), "the proxy to serve again",
        timeout=30)


# -- a restarted control plane ---------------------------------------------------------------------------
def test_adopted_servers_keep_their_isolation(fleet: Fleet, isolation_settings: Settings,
                                              engine: docker.DockerClient) -> None:
    before = {profile: observe(fleet, profile) for profile in SLUGS}
    # a simulated firewall reload drops our rules; a new control plane adopts the servers
    for slug in SLUGS.values():
        firewall.unblock_host(fleet.orchestrator.key(slug))
        firewall.unblock_host(egress.outbound_key(fleet.orchestrator.key(slug)))
    restarted = Orchestrator(isolation_settings, client=engine)
    adopted = {i.slug: i for i in restarted.instances()}
    for profile, slug in SLUGS.items():
        assert adopted[slug].container_id == fleet.servers[profile].container_id
        assert adopted[slug].network_profile == profile
        assert adopted[slug].egress_proxy == fleet.servers[profile].egress_proxy
        assert firewall.rules_for(restarted.key(slug))
    assert firewall.rules_for(egress.outbound_key(restarted.key(SLUGS["egress"])))
    after = {profile: observe(Fleet(restarted, fleet.servers, fleet.image, fleet.listener), profile)
             for profile in SLUGS}
    assert after == before
    assert restarted.egress_denials(SLUGS["egress"]) >= 1


def test_remove_takes_the_proxy_and_its_network_too(fleet: Fleet, engine: docker.DockerClient,
                                                    isolation_settings: Settings, time_entry: CatalogEntry) -> None:
    orchestrator = fleet.orchestrator
    slug = "iso-egress-tmp"
    instance = orchestrator.deploy(entry_with(time_entry, "egress", ["allowed.example.test:443"]), slug=slug,
                                   deployment_id="dep-tmp", env={}, bridge_token=TOKEN)
    assert instance.egress_proxy
    orchestrator.remove(slug)
    owner = orchestrator.owner
    assert not engine.containers.list(all=True, filters={"name": egress.proxy_container_name(slug, owner)})
    assert not [n for n in engine.networks.list() if n.name in (
        egress.outbound_network_name(slug, owner), f"stockade-{owner}-{slug}")]
    assert not firewall.rules_for(orchestrator.key(slug))
    assert not firewall.rules_for(egress.outbound_key(orchestrator.key(slug)))
    assert orchestrator.egress_denials(slug) == 0
