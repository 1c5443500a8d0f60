"""Keeping server containers away from the host's own addresses.

`docker network create --internal` removes the route out, and Docker's isolation rules (in the
FORWARD chain) stop traffic to other networks. But a packet addressed to the HOST itself (the
network's gateway address, docker0's address, any other local address) is not forwarded: it is
delivered through the INPUT chain, which Docker leaves open. A container could therefore reach
every service listening on the host (the gateway, the control API, databases, dockerd's TCP port).

Mechanism chosen: host-side rules on INPUT, keyed by the deployment's bridge interface, whose
name we choose at network creation (`com.docker.network.bridge.name`). For that interface only
ESTABLISHED,RELATED packets are accepted (replies to the connections the host's gateway opens to
the bridge) and everything else is rejected. Why this rather than the namespace ("pod") pattern:
  * the rules live in the host's namespace, out of the container's reach whatever capabilities it
    might gain, and need no extra holder container per server;
  * they match the interface by name, so they can be installed while the network (and so the
    interface) is being created, and the runtime does both side by side; nothing is attached to
    the network before both are complete: no window in which a container runs unprotected; and
    they hold across container restarts;
  * they are removed with the network, by the same name, so removal is idempotent.
All rules sit in one chain of our own (`STOCKADE-INPUT`, jumped to first from INPUT), tagged with
a comment naming the deployment. IPv6 gets the same rules when ip6tables works. Without root or
iptables the deployment fails (closed), it is never started unprotected.
(With Podman, run rootful Podman so these rules can be installed; rootless networking is its own
namespace and is not covered here.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading

from stockade.errors import DeploymentError

CHAIN = "STOCKADE-INPUT"
_LOCK = threading.Lock()


def bridge_interface(key: str) -> str:
    """A Linux interface name (<= 15 chars) for a deployment's bridge; stable per key.

    `key` names the deployment within its installation (the runtime passes "<owner>-<slug>").
    """
    return "stk-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def _tools() -> list[str]:
    tools = []
    for name in ("iptables", "ip6tables"):
        path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
        if path:
            tools.append(path)
    return tools


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-w", "10", *args], capture_output=True, text=True, timeout=60, check=False)


def _rules(interface: str, key: str, ipv6: bool) -> list[list[str]]:
    comment = ["-m", "comment", "--comment", f"stockade:{key}"]
    reject_other = ["-j", "REJECT", "--reject-with", "icmp6-adm-prohibited" if ipv6 else "icmp-admin-prohibited"]
    return [
        ["-i", interface, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", *comment, "-j", "ACCEPT"],
        ["-i", interface, "-p", "tcp", *comment, "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-i", interface, *comment, *reject_other],
    ]


def _listing(tool: str) -> list[str] | None:
    """The chain's rules as `-S` prints them (one invocation); None when the chain does not exist."""
    listed = _run(tool, "-S", CHAIN)
    return listed.stdout.splitlines() if listed.returncode == 0 else None


def _naming(listing: list[str], key: str) -> list[str]:
    """The rules of a listing that carry this deployment's comment."""
    marks = (f'--comment "stockade:{key}"', f"--comment stockade:{key} ")
    return [line for line in listing if any(mark in line + " " for mark in marks)]


def _ensure_chain(tool: str) -> list[str]:
    """The chain and the jump to it from INPUT, created where missing; returns the chain's rules."""
    listing = _listing(tool)
    if listing is None:
        created = _run(tool, "-N", CHAIN)
        if created.returncode != 0 and "exists" not in created.stderr:
            raise DeploymentError(f"{tool} -N {CHAIN} failed: {created.stderr.strip()}")
        listing = _listing(tool) or []
    if _run(tool, "-C", "INPUT", "-j", CHAIN).returncode != 0:
        inserted = _run(tool, "-I", "INPUT", "1", "-j", CHAIN)
        if inserted.returncode != 0:
            raise DeploymentError(f"{tool} -I INPUT -j {CHAIN} failed: {inserted.stderr.strip()}")
    return listing


def block_host(key: str) -> str:
    """Install the rules for the deployment's interface; returns the interface name."""
    interface = bridge_interface(key)
    tools = _tools()
    if not tools or "iptables" not in tools[0]:
        raise DeploymentError(
            "iptables is needed to keep server containers away from the host",
            hint="install iptables (Debian: apt-get install iptables) and run Stockade as root",
        )
    with _LOCK:
        for tool in tools:
            ipv6 = tool.endswith("ip6tables")
            try:
                listing = _ensure_chain(tool)
            except DeploymentError:
                if ipv6:  # a kernel without IPv6 tables: nothing to protect there
                    continue
                raise
            # None of ours listed (a new deployment): append them all; else check each, some may be gone.
            ours = _naming(listing, key)
            for rule in _rules(interface, key, ipv6):
                if ours and _run(tool, "-C", CHAIN, *rule).returncode == 0:
                    continue
                added = _run(tool, "-A", CHAIN, *rule)
                if added.returncode != 0:
                    if ipv6:
                        break
                    raise DeploymentError(f"installing the host firewall rule failed: {added.stderr.strip()}",
                                          hint="Stockade needs root (CAP_NET_ADMIN) to isolate servers from the host")
    return interface


def unblock_host(key: str) -> None:
    """Remove the deployment's rules (idempotent)."""
    interface = bridge_interface(key)
    with _LOCK:
        for tool in _tools():
            if not _naming(_listing(tool) or [], key):
                continue  # nothing of this deployment's here: one listing instead of a check per rule
            for rule in _rules(interface, key, tool.endswith("ip6tables")):
                while _run(tool, "-C", CHAIN, *rule).returncode == 0:
                    if _run(tool, "-D", CHAIN, *rule).returncode != 0:
                        break


def rules_for(key: str) -> list[str]:
    """The installed rules naming this deployment (for tests and `status`)."""
    return [f"{tool.rsplit('/', 1)[-1]} {line}" for tool in _tools() for line in _naming(_listing(tool) or [], key)]
