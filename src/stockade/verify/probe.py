"""The probe: a short-lived container that runs INSIDE a server's sandbox and reports what it can do.

It joins the server container's network namespace (`network_mode=container:<id>`) and PID namespace
(`pid_mode=container:<id>`, so `/proc/1` is the server's init), and runs with the server's own
security context copied from `docker inspect` (user, capabilities, no-new-privileges, seccomp,
read-only root, limits) -- never privileged. The images are distroless: the probe is a Python
program run by the image's own interpreter (its entrypoint's first element).

The program below takes one JSON argument and prints one JSON line; it only connects to the
targets it is given (the host's own addresses, this installation's containers, verify's canaries).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import docker
import docker.errors

LABEL_VERIFY = "io.stockade.verify"
FALLBACK_PYTHONS = ("/opt/stockade/bridge/bin/python3", "/usr/local/bin/python3", "/usr/bin/python3")

PROBE_SCRIPT = r'''
import json, os, socket, struct, sys, concurrent.futures as cf
cfg = json.loads(sys.argv[1])
out = {}

def attempt(kind, address, timeout, talk, refused="refused"):
    """Open a socket to `address`, run `talk(sock)`, and name the outcome; never raises."""
    s = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, kind)
    s.settimeout(timeout)
    try:
        return talk(s)
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return refused
    except OSError as exc:
        return "error: " + (exc.strerror or type(exc).__name__)
    finally:
        s.close()

def first_line(data):
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return "answered: " + line if line else "closed"

def tcp(host, port, timeout=2.5):
    def talk(s):
        s.connect((host, port))
        return "connected"
    return attempt(socket.SOCK_STREAM, (host, port), timeout, talk)

def http_post(host, port, path, timeout=3.0):
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
    def talk(s):
        s.connect((host, port))
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                  b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        return first_line(s.recv(256))
    return attempt(socket.SOCK_STREAM, (host, port), timeout, talk)

def resolve(name):
    try:
        infos = socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)
        return "resolved: " + ",".join(sorted({i[4][0] for i in infos}))
    except socket.gaierror as exc:
        return "not resolved: " + str(exc.strerror or exc)
    except OSError as exc:
        return "error: " + (exc.strerror or type(exc).__name__)

def dns_udp(server, name, timeout=2.0):
    query = struct.pack(">HHHHHH", 0x5743, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack(">HH", 1, 1)
    def talk(s):
        s.sendto(query, (server, 53))
        return "answered: %d bytes" % len(s.recv(512))
    return attempt(socket.SOCK_DGRAM, (server, 53), timeout, talk)

def via_proxy(proxy_host, proxy_port, target, timeout=4.0):
    def talk(s):
        s.connect((proxy_host, proxy_port))
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
        return first_line(s.recv(256))
    return attempt(socket.SOCK_STREAM, (proxy_host, proxy_port), timeout, talk, refused="proxy refused")

jobs = {}
with cf.ThreadPoolExecutor(max_workers=12) as pool:
    for key, host, port in cfg.get("tcp", []):
        jobs[("tcp", key)] = pool.submit(tcp, host, port)
    for key, host, port, path in cfg.get("http", []):
        jobs[("http", key)] = pool.submit(http_post, host, port, path)
    for key, name in cfg.get("resolve", []):
        jobs[("resolve", key)] = pool.submit(resolve, name)
    for key, server, name in cfg.get("dns", []):
        jobs[("dns", key)] = pool.submit(dns_udp, server, name)
    for key, phost, pport, target in cfg.get("proxy", []):
        jobs[("proxy", key)] = pool.submit(via_proxy, phost, pport, target)
    for (kind, key), job in jobs.items():
        out.setdefault(kind, {})[key] = job.result()

def status(path):
    wanted = ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return {"error": exc.strerror or type(exc).__name__}
    found = {}
    for line in lines:
        k, _, v = line.partition(":")
        if k in wanted:
            found[k] = v.split()[0] if v.split() else ""
    return found

out["self_status"] = status("/proc/self/status")
out["init_status"] = status("/proc/1/status")
try:
    with open("/proc/1/cmdline", "rb") as f:
        out["init_cmdline"] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
except OSError as exc:
    out["init_cmdline"] = "unreadable: " + (exc.strerror or "")
try:
    fd = os.open("/.stockade-verify-write-test", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    try:
        os.unlink("/.stockade-verify-write-test")
    except OSError:
        pass
    out["rootfs_write"] = "written"
except OSError as exc:
    out["rootfs_write"] = "refused: " + (exc.strerror or type(exc).__name__)
executables = {}
for d in cfg.get("path_dirs", []):
    try:
        names = sorted(os.listdir(d))
    except OSError:
        continue
    for n in names:
        p = os.path.join(d, n)
        try:
            if os.path.isfile(p) and os.access(p, os.X_OK):
                executables.setdefault(d, []).append(n)
        except OSError:
            pass
out["executables"] = executables
print(json.dumps(out))
'''


class ProbeError(Exception):
    pass


def probe_python(image_attrs: dict[str, Any]) -> str:
    entrypoint = (image_attrs.get("Config") or {}).get("Entrypoint") or []
    if entrypoint and "python" in entrypoint[0].rsplit("/", 1)[-1]:
        return entrypoint[0]
    return FALLBACK_PYTHONS[0]


def run_probe(client: docker.DockerClient, container: dict[str, Any], image: dict[str, Any], config: dict[str, Any],
              *, run_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """Run the probe in `container`'s sandbox (inspect documents of the container and its image)."""
    host = container.get("HostConfig") or {}
    user = (container.get("Config") or {}).get("User") or ""
    security_opt = [o for o in host.get("SecurityOpt") or [] if not o.startswith("label")]
    kwargs: dict[str, Any] = {
        "image": container["Image"],
        "entrypoint": [probe_python(image)],
        "command": ["-c", PROBE_SCRIPT, json.dumps(config)],
        "name": f"stockade-verify-{run_id}-{secrets.token_hex(3)}",
        "network_mode": f"container:{container['Id']}",
        "pid_mode": f"container:{container['Id']}",
        "user": user,
        "cap_drop": list(host.get("CapDrop") or []),
        "cap_add": list(host.get("CapAdd") or []),
        "security_opt": security_opt,
        "read_only": bool(host.get("ReadonlyRootfs")),
        "labels": {LABEL_VERIFY: run_id},
        "mem_limit": host.get("Memory") or 256 * 1024 * 1024,
        "pids_limit": host.get("PidsLimit") or 64,
        "detach": True,
        "privileged": False,
        "use_config_proxy": False,
        "environment": {"PYTHONDONTWRITEBYTECODE": "1"},
    }
    if host.get("Memory"):
        kwargs["memswap_limit"] = host.get("MemorySwap") or host["Memory"]
    if host.get("NanoCpus"):
        kwargs["nano_cpus"] = host["NanoCpus"]
    probe = None
    try:
        probe = client.containers.create(**kwargs)
        probe.start()
        result = probe.wait(timeout=timeout)
        logs = probe.logs(stdout=True, stderr=True).decode(errors="replace")
        lines = [line for line in logs.strip().splitlines() if line.startswith("{")]
        if result.get("StatusCode") != 0 or not lines:
            raise ProbeError(f"the probe exited with {result.get('StatusCode')}: {logs.strip()[-400:]}")
        return json.loads(lines[-1])
    except docker.errors.APIError as exc:
        raise ProbeError(f"the probe could not run: {exc.explanation or exc}") from None
    except Exception as exc:  # requests' ReadTimeout from wait(), JSON errors
        if isinstance(exc, ProbeError):
            raise
        raise ProbeError(f"the probe failed: {type(exc).__name__}: {exc}") from None
    finally:
        if probe is not None:
            try:
                probe.remove(force=True)
            except docker.errors.APIError:
                pass
