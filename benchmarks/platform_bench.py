"""Deploy speed and density of the platform, and the full-stack call benchmark.

    .venv/bin/python benchmarks/platform_bench.py [--fleet 50] [--mcp-proxy PATH] [--calls 2000]

Starts a private platform (temporary data directory, loopback ports), then prints:
deploy-to-first-successful-call with a cached image (after one warm-up deploy), the call figures
of benchmarks/bridge_bench.py with the full stack added, and with `--fleet N` N servers deployed
at once: how long until all are healthy, and memory per server. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bridge_bench import free_port

# The call benchmark's server: `time` with the `large` resource profile, so that the figures measure
# the stack rather than the small profile's CPU quota (half a CPU). The same image as `time`.
CALLS_ENTRY = """
  - name: time-bench
    description: mcp-server-time for the call benchmark (resource profile large).
    build:
      pypi: mcp-server-time==2026.10.19
    command: [mcp-server-time]
    resources: large
    network: none
"""


def bench_catalog(data_dir: Path) -> Path:
    bundled = (REPO / "src" / "stockade" / "bundled_catalog.yaml").read_text()
    path = data_dir / "bench-catalog.yaml"
    path.write_text(bundled.rstrip("\n") + "\n" + CALLS_ENTRY)
    return path


def bridge_of(data_dir: Path, slug: str) -> tuple[str, str]:
    """The endpoint and token of a deployed server's (first) bridge, read from the platform's store
    as its gateway reads them, for the "bridge in a container" baseline."""
    from sqlalchemy import select

    from stockade.config import Settings
    from stockade.control.directory import seal_context
    from stockade.secrets import Sealer, load_master_key
    from stockade.store.database import Database
    from stockade.store.models import Deployment

    settings = Settings(data_dir=data_dir)
    sealer = Sealer(load_master_key(settings, create=False))
    database = Database(settings.resolved_database_url)
    try:
        with database.session() as session:
            row = session.scalar(select(Deployment).where(Deployment.slug == slug))
            assert row is not None and row.instances, f"{slug} is not deployed"
            token = sealer.open(row.bridge_token, context=seal_context(row.id, "bridge-token")).decode()
            return row.instances[0].endpoint, token
    finally:
        database.close()


def container_processes(slug: str) -> str:
    """The host pids of a deployed server's bridge and server, as bridge_bench's --container-pids."""
    client = docker.from_env(version="auto")
    try:
        (container,) = client.containers.list(filters={"label": f"io.stockade.server={slug}"})
        top = container.top(ps_args="-eo pid,args")
    finally:
        client.close()
    roles = []
    for pid, command in top["Processes"]:
        if "docker-init" not in command:
            roles.append(f"{'bridge' if 'stockade.bridge' in command else 'server'}={pid}")
    return ",".join(roles)


def start(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], str, str]:
    gateway, control = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}, "STOCKADE_DATA_DIR": str(data_dir),
           "STOCKADE_CATALOG_FILE": str(bench_catalog(data_dir)),
           "STOCKADE_GATEWAY_PORT": str(gateway), "STOCKADE_CONTROL_PORT": str(control), "STOCKADE_LOG_LEVEL": "warning",
           "STOCKADE_RATE_LIMIT_PER_MINUTE": "10000000", "STOCKADE_RATE_LIMIT_BURST": "100000"}
    admin = subprocess.run([sys.executable, "-m", "stockade.cli", "admin-token"], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    process = subprocess.Popen([sys.executable, "-m", "stockade.cli", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx2.get(f"http://127.0.0.1:{control}/health", timeout=1).status_code == 200:
                break
        except httpx2.TransportError:
            time.sleep(0.1)
    return process, env, admin, f"http://127.0.0.1:{gateway}", f"http://127.0.0.1:{control}"  # type: ignore[return-value]


def first_call(gateway: str, token: str, slug: str) -> None:
    for _ in range(600):
        response = httpx2.post(f"{gateway}/api/v1/servers/{slug}/tools/get_current_time:call",
                               headers={"Authorization": f"Bearer {token}"}, json={"timezone": "UTC"}, timeout=30)
        if response.status_code == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{slug} never answered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", type=int, default=0, help="deploy this many servers at once")
    parser.add_argument("--mcp-proxy")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the call benchmark (the machine is shared)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    process, _env, admin, gateway, control = start(data_dir)
    api = httpx2.Client(base_url=f"{control}/api/v1", headers={"Authorization": f"Bearer {admin}"}, timeout=600)
    try:
        api.post("/deployments", json={"server": "time", "slug": "warmup"}).raise_for_status()  # builds/caches the image
        token = api.post("/members/admin/tokens", json={"name": "bench"}).json()["token"]
        timings = []
        for n in range(3):
            started = time.perf_counter()
            api.post("/deployments", json={"server": "time", "slug": f"timed-{n}"}).raise_for_status()
            first_call(gateway, token, f"timed-{n}")
            timings.append(time.perf_counter() - started)
            api.delete(f"/deployments/timed-{n}")
        print(f"deploy to first successful call (cached image): median {statistics.median(timings):.2f} s "
              f"over {len(timings)} deploys ({', '.join(f'{t:.2f}' for t in timings)})", flush=True)

        api.post("/deployments", json={"server": "time-bench", "slug": "calls"}).raise_for_status()
        endpoint, bridge_token = bridge_of(data_dir, "calls")
        bench = [sys.executable, str(REPO / "benchmarks" / "bridge_bench.py"), "--server", "time", "--calls",
                 str(args.calls), "--rounds", str(args.rounds), "--gateway", f"{gateway}/servers/calls/mcp", "--token", token,
                 "--container", f"{endpoint}/mcp", "--container-token", bridge_token,
                 "--gateway-pid", str(process.pid), "--container-pids", container_processes("calls")]
        if args.mcp_proxy:
            bench += ["--mcp-proxy", args.mcp_proxy]
        subprocess.run(bench, check=False)
        echo = [sys.executable, str(REPO / "benchmarks" / "bridge_bench.py"), "--server", "echo", "--calls", str(args.calls),
                "--rounds", str(args.rounds)]
        if args.mcp_proxy:
            echo += ["--mcp-proxy", args.mcp_proxy]
        subprocess.run(echo, check=False)

        if args.fleet:
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(lambda n: api.post("/deployments", json={"server": "time", "slug": f"fleet-{n}"}).status_code,
                                        range(args.fleet)))
            healthy = sum(1 for code in results if code == 201)
            elapsed = time.perf_counter() - started
            client = docker.from_env(version="auto")
            usage = []
            for container in client.containers.list(filters={"label": "io.stockade.managed=true"}):
                if container.labels.get("io.stockade.server", "").startswith("fleet-"):
                    usage.append(container.stats(stream=False)["memory_stats"].get("usage", 0) / 2**20)
            print(f"fleet: {healthy}/{args.fleet} deployed and ready in {elapsed:.1f} s; memory per server: "
                  f"median {statistics.median(usage):.1f} MiB, max {max(usage):.1f} MiB", flush=True)
    finally:
        for deployment in api.get("/deployments").json():
            api.delete(f"/deployments/{deployment['slug']}")
        api.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
