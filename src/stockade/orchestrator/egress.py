"""Network profiles as runtime configuration, and the per-server egress proxy (squid).

Profiles (catalog `network:`), each a different runtime configuration (see README.md here):

    none    one internal network, no DNS for outside names, host blocked (firewall.py)
    egress  the same internal network + a per-server squid container: the ONLY way out, through an
            allowlist of host:port pairs; the proxy has a second, outbound network of its own
            (NAT, host blocked too); the server gets HTTP(S)_PROXY pointing at it
    open    one non-internal network with outbound NAT; host blocked; other servers' networks are
            unreachable (Docker's isolation chains)

Everything in this module except `proxy_rootfs_tarball` and `host_addresses` is pure: the squid
configuration is a function of the allowlist (unit-tested without an engine), the proxy container
is data handed to `docker.containers.create` by the runtime.

The squid configuration, rule order and why:
  1. raw IP destinations are denied (`dstdom_regex -n`, no lookup);
  2. anything that is not a listed (host, port) pair is denied (`dstdomain -n`, `dstdom_regex -n`,
     `port`: none of them resolves a name) -- so an unlisted name is never looked up, and the proxy
     is no DNS tunnel;
  3. only then the destination address is checked (`dst`, which resolves the listed name): private,
     loopback, link-local, CGNAT, multicast, reserved ranges and the host's own addresses are denied
     even for a listed name;
  4. the listed pairs are allowed; everything else is denied.
`host:port` matches the host exactly; `*.domain:port` matches subdomains of domain only (not domain
itself). No caching; the access log goes to stdout, where `count_denials` finds TCP_DENIED lines.
A listed name is looked up in the proxy's /etc/hosts (`Settings.egress_hosts`) first, then asked of
`Settings.egress_dns` (squid's `dns_nameservers`) or, without it, of Docker's embedded DNS (the
host's resolvers).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.catalog import CatalogEntry, NetworkProfile

Progress = Callable[[str], None]

PROXY_PORT = 3128
# Debian's `proxy` user (uid/gid 13 in every Debian base-passwd); squid never runs as root here.
PROXY_USER = "13:13"
PROXY_INCLUDE = ("squid",)
PROXY_REPOSITORY = "stockade/egress-proxy"
PROXY_MEMORY = 128 * 1024 * 1024
PROXY_NANO_CPUS = 500_000_000
PROXY_PIDS = 64
PROXY_TMPFS = {
    "/tmp": "rw,noexec,nosuid,nodev,size=16m",
    "/var/run/squid": "rw,noexec,nosuid,nodev,size=1m",
    "/var/spool/squid": "rw,noexec,nosuid,nodev,size=1m",
    "/var/log/squid": "rw,noexec,nosuid,nodev,size=1m",
}
CONF_ENV = "STOCKADE_SQUID_CONF"
# The container writes its configuration (from the environment: not a secret, and visible to
# `docker inspect` for audit) to its tmpfs and execs squid in the foreground (-N).
PROXY_COMMAND = ("/bin/sh", "-c",
                 f'printf "%s\\n" "${CONF_ENV}" > /tmp/squid.conf && exec /usr/sbin/squid -N -f /tmp/squid.conf')

LABEL_ROLE = "io.stockade.role"
LABEL_PROXY_FOR = "io.stockade.egress-proxy-for"
LABEL_PROFILE = "io.stockade.network-profile"
LABEL_PROXY_NAME = "io.stockade.egress-proxy"
ROLE_PROXY = "egress-proxy"
ROLE_OUTBOUND = "egress-outbound"

# A resolver address inside the server's own network namespace where nothing listens: Docker's
# embedded DNS (127.0.0.11) still answers for container names on the network, but has no upstream
# to forward any other name to (measured on Docker 20.10: getaddrinfo of an outside name fails).
BLACKHOLE_DNS = ("127.0.0.1",)

# Destinations never allowed through the proxy, even for a listed name.
FORBIDDEN_NETWORKS = (
    "0.0.0.0/8",        # "this" network
    "10.0.0.0/8",       # private
    "100.64.0.0/10",    # CGNAT
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local (cloud metadata)
    "172.16.0.0/12",    # private (Docker's default pools)
    "192.0.0.0/24",     # IETF protocol assignments
    "192.168.0.0/16",   # private
    "198.18.0.0/15",    # benchmarking
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, broadcast
    # (not ::ffff:0:0/96: squid keeps IPv4 addresses v4-mapped, that entry would match them all)
    "::1/128", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8",
)

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class AllowRule:
    """One allowlist entry: `host` exactly, or (wildcard) any subdomain of `host`, on `port`."""

    host: str
    port: int
    wildcard: bool = False

    def __str__(self) -> str:
        return f"{'*.' if self.wildcard else ''}{self.host}:{self.port}"


def _is_ip_literal(host: str) -> bool:
    text = host.strip("[]")
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    # all-numeric forms (decimal, dotted with fewer parts) are addresses to resolvers too
    return bool(re.fullmatch(r"[0-9.]+|0x[0-9a-f.x]+", text))


def parse_allowlist(entries: Iterable[str]) -> tuple[AllowRule, ...]:
    """Validate `host:port` / `*.domain:port` entries; raw IP addresses are refused."""
    rules: list[AllowRule] = []
    for raw in entries:
        text = raw.strip().lower()
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"egress entry {raw!r} must be host:port")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"egress entry {raw!r}: port {port} is out of range")
        wildcard = host.startswith("*.")
        if wildcard:
            host = host[2:]
        host = host.rstrip(".")
        if _is_ip_literal(host):
            raise ValueError(f"egress entry {raw!r} is an IP address; only names can be allowed")
        labels = host.split(".")
        if len(labels) < 2 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(f"egress entry {raw!r} is not a valid host name with a domain")
        rule = AllowRule(host=host, port=port, wildcard=wildcard)
        if rule not in rules:
            rules.append(rule)
    return tuple(rules)


def squid_conf(allowlist: Iterable[str] | Sequence[AllowRule], *, deny_addresses: Iterable[str] = (),
               port: int = PROXY_PORT, listen: str | None = None, nameservers: Sequence[str] = ()) -> str:
    """The complete squid.conf for one server's proxy (pure).

    `deny_addresses`: extra addresses/networks denied as destinations (the host's own addresses,
    the server network pool). `listen`: the address squid binds (the proxy's address on the server
    network), else all. `nameservers`: the resolvers squid asks about listed names, else the
    container's own (Docker's embedded DNS, which forwards to the host's resolvers).
    """
    items = list(allowlist)
    rules = tuple(items) if all(isinstance(i, AllowRule) for i in items) and items else parse_allowlist(
        [str(i) for i in items])
    forbidden = [*FORBIDDEN_NETWORKS]
    for extra in deny_addresses:
        network = str(ipaddress.ip_network(extra, strict=False))
        if network not in forbidden:
            forbidden.append(network)
    lines = [
        "# Generated by Stockade (stockade.orchestrator.egress.squid_conf). Do not edit.",
        f"http_port {listen + ':' if listen else ''}{port}",
        "",
        "# -- acls that never resolve a name",
        r"acl stk_raw_ip dstdom_regex -n ^[0-9.]+$ ^\[?[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\]?$ ^0x[0-9a-fA-FxX.]+$",
    ]
    pairs = []
    for index, rule in enumerate(rules):
        if rule.wildcard:
            pattern = "^.+\\." + re.escape(rule.host).replace("\\-", "-") + "$"
            lines.append(f"acl stk_host_{index} dstdom_regex -n -i {pattern}")
        else:
            lines.append(f"acl stk_host_{index} dstdomain -n {rule.host}")
        lines.append(f"acl stk_port_{index} port {rule.port}")
        lines.append(f"acl stk_pair_{index} all-of stk_host_{index} stk_port_{index}  # {rule}")
        pairs.append(f"stk_pair_{index}")
    lines += [
        "",
        "# -- resolves the (already allowed) name: checked only after the allowlist",
        "acl stk_forbidden_dst dst " + " ".join(forbidden),
        "",
        "http_access deny stk_raw_ip",
    ]
    if pairs:
        lines.insert(lines.index("# -- resolves the (already allowed) name: checked only after the allowlist"),
                     f"acl stk_allowlist any-of {' '.join(pairs)}")
        lines += [
            "http_access deny !stk_allowlist",
            "http_access deny stk_forbidden_dst",
            "http_access allow stk_allowlist",
        ]
    lines += [
        "http_access deny all",
        "http_reply_access allow all",
        "icp_access deny all",
        "htcp_access deny all",
        "snmp_access deny all",
        "",
        "# -- no cache, no state on disk, logs to the container's stdout/stderr",
        "cache deny all",
        "cache_mem 0 MB",
        "access_log stdio:/dev/stdout squid",
        "cache_log stdio:/dev/stderr",
        "cache_store_log none",
        "logfile_rotate 0",
        "pid_filename none",
        "netdb_filename none",
        "coredump_dir /tmp",
        "pinger_enable off",
        "max_filedescriptors 1024",
        "hosts_file /etc/hosts",
        *([f"dns_nameservers {' '.join(_nameservers(nameservers))}"] if nameservers else []),
        "shutdown_lifetime 1 seconds",
        "visible_hostname stockade-egress",
        "httpd_suppress_version_string on",
        "forwarded_for delete",
        "via off",
        "",
    ]
    return "\n".join(lines)


def _nameservers(addresses: Sequence[str]) -> list[str]:
    try:
        return [str(ipaddress.ip_address(address)) for address in addresses]
    except ValueError as exc:
        raise ValueError(f"an egress DNS server must be an IP address: {exc}") from None


def count_denials(log_text: str) -> int:
    """Requests the proxy refused, from its access log (squid's native format)."""
    return sum(1 for line in log_text.splitlines() if " TCP_DENIED/" in line or line.startswith("TCP_DENIED/"))


def proxy_url(ip: str) -> str:
    return f"http://{ip}:{PROXY_PORT}"


def proxy_environment(ip: str) -> dict[str, str]:
    """The (non-secret) variables pointing a server's HTTP clients at its proxy."""
    url = proxy_url(ip)
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url}


def proxy_container_name(slug: str, owner: str) -> str:
    # '_' never occurs in a slug: no server can be named like another server's proxy
    return f"stockade-{owner}-{slug}_egress"


def outbound_network_name(slug: str, owner: str) -> str:
    return f"stockade-{owner}-{slug}_egress"


def outbound_key(key: str) -> str:
    """The firewall key of the proxy's outbound network (the server's key + a suffix)."""
    return f"{key}:egress"


def proxy_container_kwargs(*, image: str, slug: str, owner: str, allowlist: Sequence[str],
                           outbound_network: str, listen_ip: str, extra_hosts: Mapping[str, str],
                           deny_addresses: Iterable[str] = (), nameservers: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments for `docker.containers.create` of a server's proxy (pure)."""
    from docker.types import LogConfig

    conf = squid_conf(allowlist, deny_addresses=deny_addresses, listen=listen_ip, nameservers=nameservers)
    return {
        "image": image,
        "name": proxy_container_name(slug, owner),
        "hostname": "egress",
        "command": list(PROXY_COMMAND),
        "entrypoint": [],
        "user": PROXY_USER,
        "labels": {"io.stockade.managed": "true", "io.stockade.owner": owner, LABEL_PROXY_FOR: slug,
                   LABEL_ROLE: ROLE_PROXY},
        "environment": {CONF_ENV: conf},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": dict(PROXY_TMPFS),
        "mem_limit": PROXY_MEMORY,
        "memswap_limit": PROXY_MEMORY,
        "nano_cpus": PROXY_NANO_CPUS,
        "pids_limit": PROXY_PIDS,
        "network": outbound_network,
        "extra_hosts": dict(extra_hosts),
        "init": True,
        "ipc_mode": "private",
        "restart_policy": {"Name": "unless-stopped"},
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        "detach": True,
        "use_config_proxy": False,
    }


def server_network_config(profile: NetworkProfile) -> dict[str, Any]:
    """How a profile shapes the server's own network and container (pure; see README.md)."""
    if profile is NetworkProfile.open:
        return {"internal": False, "masquerade": True, "dns": (), "proxy": False}
    if profile is NetworkProfile.egress:
        return {"internal": True, "masquerade": False, "dns": BLACKHOLE_DNS, "proxy": True}
    return {"internal": True, "masquerade": False, "dns": BLACKHOLE_DNS, "proxy": False}


def entry_allowlist(entry: CatalogEntry) -> tuple[AllowRule, ...]:
    return parse_allowlist(entry.egress)


# -- impure helpers --------------------------------------------------------------------------------
def host_addresses() -> list[str]:
    """Every address of the host's own interfaces (denied as proxy destinations)."""
    found: list[str] = []
    for family in ("-4", "-6"):
        try:
            out = subprocess.run(["ip", family, "-o", "addr", "show"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            tokens = line.split()
            if "inet" in tokens or "inet6" in tokens:
                index = tokens.index("inet" if "inet" in tokens else "inet6")
                found.append(tokens[index + 1].split("/")[0])
    return found


def proxy_recipe() -> str:
    from stockade.orchestrator import packages

    return f"debootstrap --variant=minbase --include={','.join(PROXY_INCLUDE)} {packages.DEBIAN_SUITE} (proxy)"


def proxy_rootfs_tarball(cache_dir: Path, mirror: str | None, progress: Progress) -> Path:
    """Debian's squid in a minbase root filesystem, debootstrapped on the host once and cached."""
    from stockade.orchestrator import packages

    def prepare(root: Path) -> None:
        for directory in ("var/run/squid", "var/spool/squid", "var/log/squid"):
            (root / directory).mkdir(parents=True, exist_ok=True)

    key = packages.sha256_hex(proxy_recipe())[:12]
    return packages.rootfs_tarball(
        cache_dir / "egress" / f"{packages.DEBIAN_SUITE}-squid-{key}.tar", cache_dir / "locks" / f"egress-{key}.lock",
        include=PROXY_INCLUDE, label="egress proxy", mirror=mirror, progress=progress, prepare=prepare)
