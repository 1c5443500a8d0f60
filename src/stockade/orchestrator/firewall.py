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
  * they are installed BEFORE the network (and so the interface) exists: no window in which the
    container runs unprotected; they match by name, so they hold across container restarts;
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


def _ensure_chain(tool: str) -> None:
    if _run(tool, "-n", "-L", CHAIN).returncode != 0:
        created = _run(tool, "-N", CHAIN)
        if created.returncode != 0 and "exists" not in created.stderr:
            raise DeploymentError(f"{tool} -N {CHAIN} failed: {created.stderr.strip()}")
    if _run(tool, "-C", "INPUT", "-j", CHAIN).returncode != 0:
        inserted = _run(tool, "-I", "INPUT", "1", "-j", CHAIN)
        if inserted.returncode != 0:
            raise DeploymentError(f"{tool} -I INPUT -j {CHAIN} failed: {inserted.stderr.strip()}")


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
                _ensure_chain(tool)
            except DeploymentError:
                if ipv6:  # a kernel without IPv6 tables: nothing to protect there
                    continue
                raise
            for rule in _rules(interface, key, ipv6):
                if _run(tool, "-C", CHAIN, *rule).returncode == 0:
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
            for rule in _rules(interface, key, tool.endswith("ip6tables")):
                while _run(tool, "-C", CHAIN, *rule).returncode == 0:
                    if _run(tool, "-D", CHAIN, *rule).returncode != 0:
                        break


def rules_for(key: str) -> list[str]:
    """The installed rules naming this deployment (for tests and `status`)."""
    found = []
    for tool in _tools():
        listing = _run(tool, "-S", CHAIN)
        marks = (f'--comment "stockade:{key}"', f"--comment stockade:{key} ")
        found += [f"{tool.rsplit('/', 1)[-1]} {line}" for line in listing.stdout.splitlines()
                  if any(mark in line + " " for mark in marks)]
    return found
