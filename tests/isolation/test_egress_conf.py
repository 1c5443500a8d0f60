"""The pure parts of the network profiles: allowlist parsing, squid.conf, the proxy's container, denial counting."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stockade.catalog import NetworkProfile
from stockade.config import Settings
from stockade.orchestrator import egress

ALLOW = ["allowed.example.test:443", "allowed.example.test:80", "*.wild.example.test:8443"]


def test_parse_allowlist() -> None:
    rules = egress.parse_allowlist([*ALLOW, "Allowed.Example.Test:443"])
    assert [str(r) for r in rules] == ALLOW  # lower-cased, de-duplicated
    assert rules[2] == egress.AllowRule("wild.example.test", 8443, wildcard=True)
    for bad in ("203.0.113.10:443", "[::1]:443", "2130706433:80", "0x7f.1:80", "localhost:80", "example.test",
                "example.test:0", "example.test:70000", "-bad.example.test:443", "a..b:443", "*.*.x.test:1"):
        with pytest.raises(ValueError):
            egress.parse_allowlist([bad])


def _http_access(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if line.startswith("http_access")]


def _acls(conf: str) -> dict[str, str]:
    return {line.split()[1]: line for line in conf.splitlines() if line.startswith("acl ")}


def test_unlisted_destinations_are_denied_before_anything_resolves_a_name() -> None:
    conf = egress.squid_conf(ALLOW, deny_addresses=["192.0.2.2"], listen="10.213.0.14")
    access = _http_access(conf)
    acls = _acls(conf)
    assert access == [
        "http_access deny stk_raw_ip",
        "http_access deny !stk_allowlist",
        "http_access deny stk_forbidden_dst",
        "http_access allow stk_allowlist",
        "http_access deny all",
    ]
    # everything consulted before the `dst` rule is name-only: dstdomain/dstdom_regex with -n, port, any-of/all-of
    resolving = {"dst", "dstdomain", "dstdom_regex", "dst_as"}
    for name in ("stk_raw_ip", "stk_allowlist", *[n for n in acls if n.startswith(("stk_host_", "stk_port_", "stk_pair_"))]):
        kind = acls[name].split()[2]
        assert kind in {"dstdomain", "dstdom_regex", "port", "any-of", "all-of"}, acls[name]
        if kind in resolving:
            assert acls[name].split()[3] == "-n", acls[name]
    assert acls["stk_forbidden_dst"].split()[2] == "dst"
    assert access.index("http_access deny !stk_allowlist") < access.index("http_access deny stk_forbidden_dst")
    assert "http_port 10.213.0.14:3128" in conf.splitlines()


def test_pairs_wildcards_and_forbidden_destinations() -> None:
    conf = egress.squid_conf(ALLOW, deny_addresses=["192.0.2.2", "10.213.0.0/16"])
    acls = _acls(conf)
    assert acls["stk_host_0"] == "acl stk_host_0 dstdomain -n allowed.example.test"  # exact host, no leading dot
    assert acls["stk_port_0"] == "acl stk_port_0 port 443"
    assert acls["stk_pair_0"].startswith("acl stk_pair_0 all-of stk_host_0 stk_port_0")
    assert acls["stk_allowlist"] == "acl stk_allowlist any-of stk_pair_0 stk_pair_1 stk_pair_2"
    pattern = acls["stk_host_2"].split()[-1]
    wildcard = re.compile(pattern, re.IGNORECASE)
    assert wildcard.match("sub.wild.example.test") and wildcard.match("a.b.wild.example.test")
    assert not wildcard.match("wild.example.test") and not wildcard.match("evilwild.example.test")
    assert not wildcard.match("sub.wild.example.test.evil.test")
    forbidden = acls["stk_forbidden_dst"].split()[3:]
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                    "100.64.0.0/10", "224.0.0.0/4", "::1/128", "fc00::/7", "fe80::/10", "192.0.2.2/32",
                    "10.213.0.0/16"):
        assert network in forbidden
    assert "::ffff:0:0/96" not in forbidden  # squid stores IPv4 v4-mapped: that would deny everything
    raw = [re.compile(p) for p in acls["stk_raw_ip"].split()[4:]]
    for host in ("203.0.113.10", "[::1]", "::ffff:203.0.113.10", "2130706433", "0x7f000001"):
        assert any(p.match(host) for p in raw), host
    assert not any(p.match("allowed.example.test") for p in raw)


def test_no_cache_and_log_to_stdout() -> None:
    lines = egress.squid_conf(ALLOW).splitlines()
    for line in ("cache deny all", "cache_mem 0 MB", "access_log stdio:/dev/stdout squid", "pid_filename none",
                 "via off", "forwarded_for delete", "pinger_enable off"):
        assert line in lines
    assert not [line for line in lines if line.startswith("cache_dir")]


def test_nameservers() -> None:
    assert not [line for line in egress.squid_conf(ALLOW).splitlines() if line.startswith("dns_nameservers")]
    conf = egress.squid_conf(ALLOW, nameservers=["203.0.113.53", "2001:db8::53"]).splitlines()
    assert "dns_nameservers 203.0.113.53 2001:db8::53" in conf
    assert conf.index("hosts_file /etc/hosts") < conf.index("dns_nameservers 203.0.113.53 2001:db8::53")
    with pytest.raises(ValueError, match="must be an IP address"):
        egress.squid_conf(ALLOW, nameservers=["resolver.example.test"])
    kwargs = egress.proxy_container_kwargs(image="i", slug="demo", owner="0a1b2c3d", allowlist=ALLOW,
                                           outbound_network="net-out", listen_ip="10.213.0.14", extra_hosts={},
                                           nameservers=["203.0.113.53"])
    assert "dns_nameservers 203.0.113.53" in kwargs["environment"][egress.CONF_ENV].splitlines()
    assert "dns" not in kwargs  # squid asks the resolver itself: Docker's embedded DNS is not in the path


def test_egress_dns_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_EGRESS_DNS", '["203.0.113.53"]')
    assert [str(ip) for ip in Settings().egress_dns] == ["203.0.113.53"]
    monkeypatch.setenv("STOCKADE_EGRESS_DNS", '["resolver.example.test"]')
    with pytest.raises(ValueError, match="IPv4 or IPv6 address"):
        Settings()


def test_empty_allowlist_denies_everything() -> None:
    access = _http_access(egress.squid_conf([]))
    assert access == ["http_access deny stk_raw_ip", "http_access deny all"]


def test_the_generated_configuration_parses(tmp_path: Path) -> None:
    """Debian's squid (installed on the host) accepts what we generate."""
    squid = shutil.which("squid") or "/usr/sbin/squid"
    assert Path(squid).exists(), "Debian's squid is needed on the host for this check"
    for allow in (ALLOW, []):
        path = tmp_path / "squid.conf"
        path.write_text(egress.squid_conf(allow, deny_addresses=["192.0.2.2"], nameservers=["203.0.113.53"]))
        result = subprocess.run([squid, "-k", "parse", "-f", str(path)], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stderr
        assert "ERROR" not in result.stderr and "FATAL" not in result.stderr, result.stderr


def test_count_denials() -> None:
    lines = [
        "1795431449.038      0 10.213.0.2 TCP_DENIED/403 3900 CONNECT other.example.test:443 - HIER_NONE/- text/html",
        "1795431449.040      3 10.213.0.2 TCP_TUNNEL/200 120 CONNECT allowed.example.test:443 - HIER_DIRECT/203.0.113.10 -",
        "1795431449.041      0 10.213.0.2 TCP_DENIED/403 3900 GET http://203.0.113.10/ - HIER_NONE/- text/html",
        "1795431449.038      0 10.213.0.1 NONE_NONE/000 0 - error:transaction-end-before-headers - HIER_NONE/- -",
        "2026/11/23 10:57:28| Accepting HTTP Socket connections",
    ]
    assert egress.count_denials("\n".join(lines)) == 2
    assert egress.count_denials("") == 0


def test_profiles_produce_different_runtime_configuration() -> None:
    shapes = {p: egress.server_network_config(p) for p in NetworkProfile}
    assert len({tuple(sorted(s.items())) for s in shapes.values()}) == 3
    assert shapes[NetworkProfile.none] == {"internal": True, "masquerade": False, "dns": egress.BLACKHOLE_DNS,
                                           "proxy": False}
    assert shapes[NetworkProfile.egress]["proxy"] is True and shapes[NetworkProfile.egress]["internal"] is True
    assert shapes[NetworkProfile.open] == {"internal": False, "masquerade": True, "dns": (), "proxy": False}
    assert egress.proxy_environment("10.213.0.14")["HTTPS_PROXY"] == "http://10.213.0.14:3128"


def test_proxy_container_is_hardened() -> None:
    kwargs = egress.proxy_container_kwargs(image="stockade/egress-proxy:x", slug="demo", owner="0a1b2c3d",
                                           allowlist=ALLOW, outbound_network="net-out", listen_ip="10.213.0.14",
                                           extra_hosts={"allowed.example.test": "203.0.113.10"})
    assert kwargs["cap_drop"] == ["ALL"] and "cap_add" not in kwargs and "privileged" not in kwargs
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["user"] == egress.PROXY_USER and not kwargs["user"].startswith("0")
    assert kwargs["read_only"] is True and "/tmp" in kwargs["tmpfs"]
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] and kwargs["pids_limit"] and kwargs["nano_cpus"]
    assert "ports" not in kwargs and kwargs["network"] == "net-out"
    assert kwargs["extra_hosts"] == {"allowed.example.test": "203.0.113.10"}
    assert "io.stockade.server" not in kwargs["labels"]  # never mistaken for a server (adoption)
    assert kwargs["labels"][egress.LABEL_PROXY_FOR] == "demo"
    assert "http_port 10.213.0.14:3128" in kwargs["environment"][egress.CONF_ENV]
    assert kwargs["name"] == "stockade-0a1b2c3d-demo_egress"  # '_' never occurs in a slug


def test_egress_hosts_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_EGRESS_HOSTS", '{"allowed.example.test": "203.0.113.10"}')
    assert Settings().egress_hosts == {"allowed.example.test": "203.0.113.10"}
