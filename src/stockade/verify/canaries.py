"""Things verify sets up on the host for the duration of a run, and always takes down again.

* `HostCanary`: a TCP listener on every host address (0.0.0.0 and ::), recording who connected.
* `InternetCanary`: a stand-in for "the internet": a network namespace with a veth pair whose
  namespace end holds an address from TEST-NET-3 (203.0.113.0/24) that no route on the host names
  yet. Inside it a TCP listener (port 443) and a tiny DNS responder (UDP 53, answers every A query
  with the canary address) run as a child process of verify. The host end gets a link-local address so a
  server whose network is NOT internal (profile `open`) can reach it (masqueraded) -- that is the
  control that proves the canary is reachable at all when policy allows it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Self

NS_PREFIX = "stkv-"
LINK_PREFIX = "stkv"
CANARY_PORT = 443
ADDRESS_ATTEMPTS = 5
TEST_NET_3 = re.compile(r"\b203\.0\.113\.\d{1,3}\b")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def host_addresses() -> list[str]:
    """Every address of the host's interfaces, except loopback and link-local ones (which are the
    container's own or unroutable from it)."""
    out = _ip("-o", "addr", "show").stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
            continue
        address = ipaddress.ip_address(parts[3].split("/")[0])
        if address.is_loopback or address.is_link_local:
            continue
        if parts[1].startswith(LINK_PREFIX):  # our own canary's veth
            continue
        found.append(str(address))
    return sorted(set(found))


class HostCanary:
    """A TCP listener on all host addresses (IPv4 and, where available, IPv6) on one port."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    def __enter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        self.port = sock.getsockname()[1]
        self._socks.append(sock)
        try:
            sock6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock6.bind(("::", self.port))
            self._socks.append(sock6)
        except OSError:
            pass
        for s in self._socks:
            s.listen(64)
            s.settimeout(0.2)
            thread = threading.Thread(target=self._accept, args=(s,), daemon=True, name="verify-host-canary")
            thread.start()
            self._threads.append(thread)
        return self

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            self.peers.append(peer[0])
            conn.close()

    def reachable_from_host(self, address: str) -> bool:
        try:
            with socket.create_connection((address, self.port), timeout=3):
                return True
        except OSError:
            return False

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for s in self._socks:
            s.close()
        self._socks.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()


_NS_SERVER = r'''
import json, socket, struct, sys, threading
address, port = sys.argv[1], int(sys.argv[2])
peers = []
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((address, port)); tcp.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((address, 53))
def serve_tcp():
    while True:
        conn, peer = tcp.accept()
        print(json.dumps({"tcp": peer[0]}), flush=True)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncanary")
        except OSError:
            pass
        conn.close()
def serve_dns():
    while True:
        data, peer = udp.recvfrom(512)
        print(json.dumps({"dns": peer[0]}), flush=True)
        if len(data) < 12:
            continue
        qid = data[:2]
        question = data[12:]
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(address)
        udp.sendto(qid + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question + answer, peer)
threading.Thread(target=serve_tcp, daemon=True).start()
threading.Thread(target=serve_dns, daemon=True).start()
print(json.dumps({"ready": True}), flush=True)
sys.stdin.read()
'''


class InternetCanary:
    """A namespace holding a TEST-NET-3 address, a TCP listener and a DNS responder."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.namespace = f"{NS_PREFIX}{token}"
        self.host_link = f"{LINK_PREFIX}{token}h"
        self.ns_link = f"{LINK_PREFIX}{token}n"
        self.address = ""  # chosen at setup, among those no route names yet
        self.host_address = f"169.254.{secrets.randbelow(250) + 2}.{secrets.randbelow(250) + 2}"
        self.port = CANARY_PORT
        self._process: subprocess.Popen[str] | None = None
        self.events: list[dict[str, Any]] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Self:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self) -> None:
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
        _ip("link", "set", self.ns_link, "netns", self.namespace)
        _ip("addr", "add", f"{self.host_address}/32", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        self._route_unused_address()
        ns = ["-n", self.namespace]
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "addr", "add", f"{self.address}/32", "dev", self.ns_link)
        _ip(*ns, "link", "set", self.ns_link, "up")
        _ip(*ns, "route", "add", f"{self.host_address}/32", "dev", self.ns_link)
        _ip(*ns, "route", "add", "default", "via", self.host_address, "dev", self.ns_link, "onlink")
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _NS_SERVER, self.address, str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            raise RuntimeError("the internet canary did not start")
        self._reader = threading.Thread(target=self._read, daemon=True, name="verify-internet-canary")
        self._reader.start()

    def _route_unused_address(self) -> None:
        """Route a TEST-NET-3 address to the namespace that no route on this host names yet: another
        verify run's canary, or a test network, may hold one (its route would make ours fail, or
        worse, send our probes elsewhere). Two runs choosing at once: the loser chooses again."""
        for _ in range(ADDRESS_ATTEMPTS):
            routed = set(TEST_NET_3.findall(_ip("-4", "route", "show", "table", "all").stdout))
            free = [f"203.0.113.{n}" for n in range(2, 255) if f"203.0.113.{n}" not in routed]
            if not free:
                break
            self.address = secrets.choice(free)
            added = _ip("route", "add", f"{self.address}/32", "dev", self.host_link, "src", self.host_address, check=False)
            if added.returncode == 0:
                return
            if "File exists" not in added.stderr:
                raise RuntimeError(f"ip route add {self.address}/32 failed: {added.stderr.strip()}")
        raise RuntimeError("no TEST-NET-3 address (203.0.113.0/24) is free for the internet canary: "
                           "every one is routed on this host already")

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def reachable_from_host(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=3):
                return True
        except OSError:
            return False

    def contacted_by(self, address: str) -> bool:
        return any(address in event.values() for event in self.events)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        _ip("link", "del", self.host_link, check=False)
        _ip("netns", "del", self.namespace, check=False)
        # give the kernel a moment to finish the namespace teardown before anyone looks
        for _ in range(20):
            if self.namespace not in _ip("netns", "list", check=False).stdout:
                break
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers() -> list[str]:
    """Namespaces and links of any verify run still present (for tests and `--check-clean`)."""
    found = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
             if line.startswith(NS_PREFIX)]
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(LINK_PREFIX):
            found.append(name)
    return found
