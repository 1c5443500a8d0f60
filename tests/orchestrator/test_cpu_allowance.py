"""The start-up CPU allowance, seen by the kernel from inside a real server on the real engine.

The server here is a tiny stdio MCP server (run by the image's own Python) that reads its cgroup's
CFS quota when it starts, which is before its bridge can be ready, and again on every call: what the
container got at creation and what holds once the deploy returned.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from typing import Any

import docker
import httpx2
import pytest

from stockade.catalog import CatalogEntry
from stockade.errors import DeploymentError
from stockade.orchestrator import runtime
from stockade.orchestrator.images import BuiltImage
from stockade.orchestrator.runtime import Orchestrator, ServerInstance
from stockade.orchestrator.spec import cpu_nanos, startup_nano_cpus

from .test_runtime import leftovers

SLUG = "orch-test-cpu"
TOKEN = "bridge-" + secrets.token_urlsafe(24)

# CPUs granted by the cgroup (v2 cpu.max, else v1 cfs quota/period); None = unlimited.
CPU_REPORTER = r"""
import json, sys

def cpus():
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
    except OSError:
        quota = open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read().strip()
        period = open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read().strip()
    return None if quota in ("max", "-1") else int(quota) / int(period)

at_start = cpus()
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method = message.get("method")
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "cpu-reporter", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "cpus", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": json.dumps({"at_start": at_start, "now": cpus()})}]}
    else:
        result = {}
    print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
"""


def reporter_entry(time_entry: CatalogEntry) -> CatalogEntry:
    return time_entry.model_copy(update={"command": ["python3", "-c", CPU_REPORTER]})


def reported_cpus(instance: ServerInstance) -> dict[str, Any]:
    with httpx2.Client(trust_env=False, timeout=30) as http:
        response = http.post(f"{instance.endpoint}/tools/cpus/call", json={},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return json.loads(response.json()["content"][0]["text"])


def kernel_cpus(engine: docker.DockerClient, container_id: str) -> float | None:
    """The cgroup's quota read from inside the container (with the image's Python), bridge or not."""
    program = CPU_REPORTER.split("at_start")[0] + "print(json.dumps(cpus()))"
    result = engine.containers.get(container_id).exec_run(["python3", "-c", program], user="65534:65534")
    assert result.exit_code == 0, result.output
    return json.loads(result.output.decode().strip())


@pytest.fixture(scope="module")
def deployed(orchestrator: Orchestrator, time_entry: CatalogEntry, time_image: BuiltImage) -> Iterator[ServerInstance]:
    orchestrator.remove(SLUG)
    yield orchestrator.deploy(reporter_entry(time_entry), slug=SLUG, deployment_id="dep-cpu", env={},
                              bridge_token=TOKEN)
    orchestrator.remove(SLUG)


def test_the_server_starts_with_every_engine_cpu_and_runs_within_its_profile(
    engine: docker.DockerClient, orchestrator: Orchestrator, deployed: ServerInstance, time_entry: CatalogEntry,
) -> None:
    limit = time_entry.resources.limits.cpus
    engine_cpus = int(engine.info()["NCPU"])
    allowance = startup_nano_cpus(limit, engine_cpus) / 1e9
    assert allowance > limit  # the small profile is below one CPU: there is something to lower
    reported = reported_cpus(deployed)
    assert reported == {"at_start": allowance, "now": limit}
    host = engine.api.inspect_container(deployed.container_id)["HostConfig"]
    assert host["NanoCpus"] == cpu_nanos(limit)


def test_the_lowered_limit_survives_a_restart_of_the_container(
    engine: docker.DockerClient, deployed: ServerInstance, time_entry: CatalogEntry,
) -> None:
    limit = time_entry.resources.limits.cpus
    container = engine.containers.get(deployed.container_id)
    container.restart(timeout=5)
    # the bridge now waits for a bootstrap line nobody sends: the quota is read beside it
    assert kernel_cpus(engine, deployed.container_id) == limit
    assert engine.api.inspect_container(deployed.container_id)["HostConfig"]["NanoCpus"] == cpu_nanos(limit)


def test_a_limit_the_engine_refuses_fails_the_deploy_and_leaves_nothing_running(
    engine: docker.DockerClient, orchestrator: Orchestrator, time_entry: CatalogEntry, time_image: BuiltImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The spec's profile limit is made one the engine refuses (more CPUs than it has): the real
    # engine's refusal of the update, and the real clean-up after it.
    slug = "orch-test-cpu-refused"
    beyond_the_engine = cpu_nanos(int(engine.info()["NCPU"]) + 1)
    original = runtime.container_spec
    monkeypatch.setattr(runtime, "container_spec",
                        lambda *a, **k: dataclasses.replace(original(*a, **k), nano_cpus=beyond_the_engine))
    with pytest.raises(DeploymentError) as raised:
        orchestrator.deploy(time_entry, slug=slug, deployment_id="dep-cpu-refused", env={}, bridge_token=TOKEN)
    assert "could not lower the CPU limit" in str(raised.value)
    assert TOKEN not in f"{raised.value} {raised.value.hint}"
    assert leftovers(engine, orchestrator, slug) == []
