"""Fixtures of the isolation tests: a fake "internet" in a network namespace, real servers on the real engine.

The internet: a network namespace created here, joined to the host by a veth pair, with three
addresses from TEST-NET-3 (documentation addresses) and a host route to EACH of them (/32), never to
the whole range: on the development machines the package registries themselves answer at another
TEST-NET-3 address (203.0.113.80), and a /24 route would cut every apt/pip/npm client on the machine
off while the tests run. It runs small HTTP listeners on ports 80, 443 and 8443 that say
which address and port answered. Test names (`*.example.test`) map to those addresses through
`Settings.egress_hosts` (the proxies' /etc/hosts), and through the namespace's own DNS server
(tests.listener.DnsRecorder at DNS_IP, the proxies' `Settings.egress_dns`), which records every
question it gets: never through a real resolver. One address of the namespace is link-local
(169.254.0.0/16, what cloud metadata services use), so that a proxy wrongly connecting there would
reach this namespace and nothing else.

Network etiquette: traffic goes only to this namespace, to the containers made here and to a
listener on the host itself. Nothing skips: without Docker, root or `ip`, these tests fail.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from stockade.catalog import Catalog, CatalogEntry
from stockade.config import Settings
from stockade.orchestrator.engine import connect_engine
from stockade.orchestrator.images import BuiltImage, ImageBuilder
from tests.conftest import REPO
from tests.listener import HostListener, dns_answer_addresses, dns_query

HOST_SIDE = "203.0.113.1"
ALLOWED_IP = "203.0.113.10"
OTHER_IP = "203.0.113.11"
WILD_IP = "203.0.113.12"
DNS_IP = "203.0.113.53"
LINK_LOCAL_IP = "169.254.77.77"
INTERNET_IPS = (ALLOWED_IP, OTHER_IP, WILD_IP, DNS_IP, LINK_LOCAL_IP)
# what the namespace's DNS server answers (A records); every other name: NXDOMAIN
INTERNET_DNS = {
    "resolved.example.test": [ALLOWED_IP],                    # listed, resolvable only through DNS
    "portonly.example.test": [ALLOWED_IP],                    # listed for one port only
    "metadata.example.test": [LINK_LOCAL_IP],                 # listed, resolves link-local
    "loopback.example.test": ["127.0.0.1"],                   # listed, resolves to loopback
    "rebind-first.example.test": [LINK_LOCAL_IP, ALLOWED_IP],  # listed, one forbidden address among good ones
    "rebind-last.example.test": [ALLOWED_IP, LINK_LOCAL_IP],
}
INTERNET_PORTS = (80, 443, 8443)

LISTENER = r"""
import http.server, socketserver, sys, threading
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = self.connection.getsockname()[:2]
        body = f"internet {host}:{port} host={self.headers.get('Host')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
servers = [Server(("0.0.0.0", int(p)), Handler) for p in sys.argv[1:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Internet:
    netns: str
    host_veth: str
    process: subprocess.Popen[str]
    dns: subprocess.Popen[str]
    dns_queries: list[dict[str, str]]  # {"peer", "name", "transport"} of every question DNS_IP got

    def dns_names(self) -> set[str]:
        return {query["name"] for query in list(self.dns_queries)}


def _collect(stream: Any, into: list[dict[str, str]]) -> None:
    for line in stream:
        into.append(json.loads(line))


@pytest.fixture(scope="session")
def internet() -> Iterator[Internet]:
    tag = secrets.token_hex(3)
    netns, host_veth, ns_veth = f"stk-inet-{tag}", f"stkih{tag}", f"stkin{tag}"
    for ip in INTERNET_IPS:
        route = sh("ip", "-4", "-o", "route", "show", "match", ip, check=False).stdout
        specific = [line for line in route.splitlines() if not line.startswith("default")]
        assert not specific, f"{ip} is already routed on this host ({specific}); a leftover of an earlier run?"
    process = dns = None
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", ns_veth)
        sh("ip", "link", "set", ns_veth, "netns", netns)
        sh("ip", "addr", "add", f"{HOST_SIDE}/32", "dev", host_veth)
        sh("ip", "link", "set", host_veth, "up")
        for ip in INTERNET_IPS:
            sh("ip", "route", "add", f"{ip}/32", "dev", host_veth, "src", HOST_SIDE)
            sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ip}/32", "dev", ns_veth)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", ns_veth, "up")
        # the way back: containers' traffic arrives NATed to the host side of the veth
        sh("ip", "netns", "exec", netns, "ip", "route", "add", f"{HOST_SIDE}/32", "dev", ns_veth)
        process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", LISTENER,
                                    *map(str, INTERNET_PORTS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", process.stderr.read() if process.stderr else ""
        # bound to DNS_IP itself: a UDP reply must come from the address asked, or NAT drops it
        dns = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "tests.listener", DNS_IP, "53",
                                json.dumps(INTERNET_DNS)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        assert dns.stdout is not None
        assert dns.stdout.readline().strip() == "ready", dns.stderr.read() if dns.stderr else ""
        dns_queries: list[dict[str, str]] = []
        threading.Thread(target=_collect, args=(dns.stdout, dns_queries), daemon=True).start()
        # control: the host reaches the internet and its DNS server (so "unreachable" from a container means something)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.connect((DNS_IP, 53))  # connected: a reply from another address would not count
            udp.send(dns_query("resolved.example.test"))
            assert dns_answer_addresses(udp.recv(4096)) == (0, [ALLOWED_IP])
        for port in INTERNET_PORTS:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection((ALLOWED_IP, port), timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield Internet(netns=netns, host_veth=host_veth, process=process, dns=dns, dns_queries=dns_queries)
    finally:
        for child in (process, dns):
            if child is None:
                continue
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for ip in INTERNET_IPS:
            sh("ip", "route", "del", f"{ip}/32", "dev", host_veth, check=False)
        sh("ip", "link", "del", host_veth, check=False)
        sh("ip", "netns", "del", netns, check=False)


@pytest.fixture(scope="session")
def host_listener() -> Iterator[HostListener]:
    listener = HostListener()
    yield listener
    listener.close()


def host_ipv4_addresses(device: str | None = None) -> list[str]:
    out = sh("ip", "-4", "-o", "addr", "show", *(["dev", device] if device else [])).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line and "inet " in line]


@pytest.fixture(scope="session")
def isolation_settings(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Settings:
    [docker0] = host_ipv4_addresses("docker0")
    return Settings(data_dir=tmp_path_factory.mktemp("isolation-data"), egress_dns=[DNS_IP], egress_hosts={
        "allowed.example.test": ALLOWED_IP,
        "other.example.test": OTHER_IP,
        "sub.wild.example.test": WILD_IP,
        "wild.example.test": WILD_IP,
        # listed in the allowlist, but it is the host's own (private) address: must stay denied
        "private.example.test": docker0,
    })


@pytest.fixture(scope="session")
def engine(isolation_settings: Settings) -> Iterator[docker.DockerClient]:
    client = connect_engine(isolation_settings)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def time_entry() -> CatalogEntry:
    return Catalog.load().get("time")


@pytest.fixture(scope="session")
def time_image(engine: docker.DockerClient, isolation_settings: Settings, time_entry: CatalogEntry) -> BuiltImage:
    return ImageBuilder(engine, isolation_settings).ensure_server_image(time_entry)


PROBE = r"""
import json, socket, sys

def tcp(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "connected"
    except OSError as exc:
        return "error " + type(exc).__name__
    finally:
        s.close()

def recv_all(s, limit=65536):
    data = b""
    while len(data) < limit:
        try:
            chunk = s.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data

def status_of(data):
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

def proxy_connect(proxy, target):
    # CONNECT (what an HTTPS client does), then HTTP through the tunnel (our listener is plain HTTP)
    host, port = proxy.rsplit(":", 1)
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((host, int(port)))
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        code = status_of(head)
        if code != 200:
            return f"status {code}"
        s.sendall(f"GET / HTTP/1.0\r\nHost: {target}\r\n\r\n".encode())
        body = recv_all(s)
        return f"tunnel {status_of(body)} " + body.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    except OSError as exc:
        return "error " + type(exc).__name__
    finally:
        s.close()

def proxy_get(proxy, url):
    host, port = proxy.rsplit(":", 1)
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((host, int(port)))
        netloc = url.split("/")[2]
        s.sendall(f"GET {url} HTTP/1.0\r\nHost: {netloc}\r\n\r\n".encode())
        data = recv_all(s)
        code = status_of(data)
        return f"status {code} " + (data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace") if code == 200 else "")
    except OSError as exc:
        return "error " + type(exc).__name__
    finally:
        s.close()

def http_direct(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = recv_all(s)
        return f"status {status_of(data)} " + data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    except OSError as exc:
        return "error " + type(exc).__name__
    finally:
        s.close()

def dns(name):
    try:
        return "resolved " + ",".join(sorted({a[4][0] for a in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)}))
    except OSError as exc:
        return "error " + type(exc).__name__

def dns_udp(server, port, query_hex):
    # a DNS question built by the test (tests.listener.dns_query), sent as is: "reply <hex>" or "error"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    try:
        s.sendto(bytes.fromhex(query_hex), (server, port))
        return "reply " + s.recv(4096).hex()
    except OSError as exc:
        return "error " + type(exc).__name__
    finally:
        s.close()

def dns_tcp(server, port, query_hex):
    query = bytes.fromhex(query_hex)
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((server, port))
        s.sendall(len(query).to_bytes(2, "big") + query)
        data = recv_all(s)
        return "reply " + data[2:].hex() if len(data) > 2 else "error empty"
    except OSError as exc:
        return "error " + type(exc).__name__
    finally:
        s.close()

def run(check):
    kind, *args = check
    return json.dumps(check), {"tcp": tcp, "connect": proxy_connect, "get": proxy_get, "dns": dns,
                               "http": http_direct, "dns_udp": dns_udp, "dns_tcp": dns_tcp}[kind](*args)

# independent checks run concurrently (bounded): timeouts do not add up
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(max_workers=16) as pool:
    results = dict(pool.map(run, json.loads(sys.argv[1])))
print(json.dumps(results))
"""


def probe(engine: docker.DockerClient, image: str, container_id: str, checks: list[list]) -> dict[str, str]:
    """Checks run INSIDE the server's network namespace, as the server's user, without capabilities,
    with the image's own python3. Keys are the JSON of each check."""
    python = engine.images.get(image).attrs["Config"]["Entrypoint"][0]
    output = engine.containers.run(
        image, ["-c", PROBE, json.dumps(checks)], entrypoint=[python], network_mode=f"container:{container_id}",
        user="65534:65534", cap_drop=["ALL"], security_opt=["no-new-privileges:true"], read_only=True,
        remove=True, stdout=True, stderr=True, labels={"io.stockade.test": "probe"},
    )
    results = json.loads(output.decode().strip().splitlines()[-1])
    return {key: value for key, value in results.items()}


def key(*check: object) -> str:
    return json.dumps(list(check))


def data_dir_of(settings: Settings) -> Path:
    return settings.data_dir
