"""The hardened runtime, on the real engine with the real bridge and `mcp-server-time`.

Network etiquette: traffic goes only to the containers and networks created here and to a
listener this test opens on the host itself.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx2
import pytest

from stockade.catalog import CatalogEntry
from stockade.errors import DeploymentError
from stockade.orchestrator import firewall
from stockade.orchestrator.images import BuiltImage
from stockade.orchestrator.runtime import Orchestrator, ServerInstance
from stockade.orchestrator.spec import LABEL_REPLICA
from tests.listener import HostListener

SLUG = "orch-test-time"
OTHER_SLUG = "orch-test-other"
PLANTED = "planted-" + secrets.token_hex(12)
TOKEN = "bridge-" + secrets.token_urlsafe(24)


def hardened_time_entry(time_entry: CatalogEntry, **extra: object) -> CatalogEntry:
    data = time_entry.model_dump(mode="json")
    data.update({
        "optional_env": [{"name": "PLANTED_SECRET", "secret": True}],
        "mounts": [{"host_path": "{data_dir}/time-reference", "container_path": "/reference", "read_only": True}],
    })
    data.update(extra)
    return CatalogEntry.model_validate(data)


def leftovers(engine: docker.DockerClient, orchestrator: Orchestrator, slug: str) -> list[str]:
    """Containers, networks and firewall rules of this installation's deployment `slug`."""
    owner = [f"io.stockade.server={slug}", f"io.stockade.owner={orchestrator.owner}"]
    name = f"stockade-{orchestrator.owner}-{slug}"
    found = [c.name for c in engine.containers.list(all=True, filters={"label": owner})]
    found += [c.name for c in engine.containers.list(all=True, filters={"name": name})]
    found += [n.name for n in engine.networks.list(filters={"label": owner})]
    found += [n.name for n in engine.networks.list(names=[name])]
    found += firewall.rules_for(orchestrator.key(slug))
    return found


@pytest.fixture(scope="module")
def deployed(orchestrator: Orchestrator, time_entry: CatalogEntry, time_image: BuiltImage) -> Iterator[ServerInstance]:
    orchestrator.remove(SLUG)
    instance = orchestrator.deploy(hardened_time_entry(time_entry), slug=SLUG, deployment_id="dep-orch-test",
                                   env={"PLANTED_SECRET": PLANTED}, bridge_token=TOKEN)
    yield instance
    orchestrator.remove(SLUG)


def test_bridge_is_ready_over_the_container_address(deployed: ServerInstance) -> None:
    assert deployed.endpoint == f"http://{deployed.ip}:8080"
    with httpx2.Client(trust_env=False, timeout=10) as http:
        assert http.get(f"{deployed.endpoint}/ready", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert http.get(f"{deployed.endpoint}/ready", headers={"Authorization": "Bearer wrong"}).status_code in (401, 403)
        assert http.get(f"{deployed.endpoint}/health").status_code == 200


def test_mcp_server_time_answers_through_the_bridge(deployed: ServerInstance) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "orchestrator-test", "version": "1"}}}
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
    with httpx2.Client(trust_env=False, timeout=30) as http:
        response = http.post(f"{deployed.endpoint}/mcp", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert "mcp-time" in response.text  # serverInfo.name of mcp-server-time


def test_docker_inspect_shows_the_hardening(
    engine: docker.DockerClient, orchestrator: Orchestrator, deployed: ServerInstance, data_dir: Path,
) -> None:
    info = engine.api.inspect_container(deployed.container_id)
    host = info["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert info["Config"]["User"] == "65534:65534"
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp"} and "noexec" in host["Tmpfs"]["/tmp"]
    assert host["Memory"] == 192 * 1024 * 1024 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert not host.get("PortBindings") and host["PublishAllPorts"] is False
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["NetworkMode"] == deployed.network_name
    assert set(info["NetworkSettings"]["Networks"]) == {deployed.network_name}
    network = engine.api.inspect_network(deployed.network_id)
    assert network["Internal"] is True and network["Name"] == deployed.network_name
    subnet = ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])
    assert subnet.prefixlen == 28 and subnet.subnet_of(ipaddress.ip_network(orchestrator.settings.server_network_pool))
    assert deployed.network_name.startswith("stockade-") and deployed.network_name.endswith(SLUG)
    assert network["Labels"]["io.stockade.server"] == SLUG
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert set(mounts) == {"/reference"}
    assert mounts["/reference"]["Source"] == str(data_dir / "time-reference") and mounts["/reference"]["RW"] is False
    assert (data_dir / "time-reference").is_dir()  # created by the runtime
    assert not any("docker.sock" in (m.get("Source") or "") for m in info["Mounts"])
    assert info["Config"]["Labels"]["io.stockade.deployment"] == "dep-orch-test"
    assert info["Config"]["Labels"]["io.stockade.owner"] == orchestrator.owner
    # the processes really run as nobody
    top = engine.api.top(deployed.container_id, ps_args="-o pid,uid,gid,comm")
    uid, gid = top["Titles"].index("UID"), top["Titles"].index("GID")
    assert top["Processes"] and all(row[uid] == "65534" and row[gid] == "65534" for row in top["Processes"])


def test_planted_value_and_token_appear_nowhere(engine: docker.DockerClient, deployed: ServerInstance) -> None:
    documents = [
        json.dumps(engine.api.inspect_container(deployed.container_id)),
        json.dumps(engine.api.inspect_network(deployed.network_id)),
        engine.api.logs(deployed.container_id, stdout=True, stderr=True).decode(errors="replace"),
    ]
    cli = subprocess.run(["docker", "inspect", deployed.container_id], capture_output=True, text=True, check=False)
    if cli.returncode == 0:
        documents.append(cli.stdout)
    for document in documents:
        assert PLANTED not in document
        assert TOKEN not in document


def _host_ipv4_addresses(device: str | None = None) -> list[str]:
    """The host's own IPv4 addresses (of one device, or all but loopback)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", *(["dev", device] if device else [])],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line and "inet " in line]


PROBE = r"""
import json, socket, sys
results = {}
for target in json.loads(sys.argv[1]):
    host, port = target
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        results[f"{host}:{port}"] = "connected"
    except OSError as exc:
        results[f"{host}:{port}"] = type(exc).__name__ + ": " + str(exc)
    finally:
        s.close()
print(json.dumps(results))
"""


def probe(engine: docker.DockerClient, image: str, container_id: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    """TCP connects from INSIDE the server's network namespace, as the server's user, without capabilities."""
    python = engine.images.get(image).attrs["Config"]["Entrypoint"][0]
    output = engine.containers.run(
        image, ["-c", PROBE, json.dumps(targets)], entrypoint=[python], network_mode=f"container:{container_id}",
        user="65534:65534", cap_drop=["ALL"], security_opt=["no-new-privileges:true"], read_only=True,
        remove=True, stdout=True, stderr=True, labels={"io.stockade.test": "probe"},
    )
    return json.loads(output.decode().strip().splitlines()[-1])


def test_container_cannot_reach_the_host_but_the_host_reaches_it(
    engine: docker.DockerClient, orchestrator: Orchestrator, deployed: ServerInstance, time_image: BuiltImage,
) -> None:
    # the host's addresses on the server's own bridge (its gateway) and on docker0
    [gateway_ip] = _host_ipv4_addresses(firewall.bridge_interface(orchestrator.key(SLUG)))
    network = engine.api.inspect_network(deployed.network_id)
    assert network["IPAM"]["Config"][0].get("Gateway", gateway_ip) == gateway_ip
    [docker0_ip] = _host_ipv4_addresses("docker0")
    host_ips = sorted({gateway_ip, docker0_ip, *_host_ipv4_addresses()})
    listener = HostListener()
    try:
        # control: the listener does answer on the host's addresses (from the host itself)
        for ip in (gateway_ip, docker0_ip):
            with socket.create_connection((ip, listener.port), timeout=5):
                pass
        results = probe(engine, time_image.tag, deployed.container_id,
                        [("127.0.0.1", 8080), *((ip, listener.port) for ip in host_ips)])
    finally:
        listener.close()
    # control: the probe can connect at all (to the bridge in its own namespace)
    assert results["127.0.0.1:8080"] == "connected", results
    for ip in host_ips:
        assert results[f"{ip}:{listener.port}"] != "connected", results
    assert deployed.ip not in listener.peers
    # and the host (the gateway's side) still reaches the bridge
    with httpx2.Client(trust_env=False, timeout=10) as http:
        assert http.get(f"{deployed.endpoint}/ready", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert firewall.rules_for(orchestrator.key(SLUG))


def test_instances_and_status_find_the_running_server(orchestrator: Orchestrator, deployed: ServerInstance) -> None:
    found = {i.slug: i for i in orchestrator.instances()}
    assert found[SLUG] == deployed
    assert (SLUG, 0) in orchestrator.running_units()
    # a fresh orchestrator (a restarted control plane) adopts it by its labels
    adopted = {i.slug: i for i in Orchestrator(orchestrator.settings, client=orchestrator.client).instances()}
    assert adopted[SLUG].container_id == deployed.container_id and adopted[SLUG].endpoint == deployed.endpoint
    status = orchestrator.status(SLUG)
    assert status.running and status.state == "running" and status.exit_code is None
    assert status.oom_killed is False and status.started_at


def test_another_installation_neither_sees_nor_removes_it(
    engine: docker.DockerClient, orchestrator: Orchestrator, deployed: ServerInstance, tmp_path: Path,
) -> None:
    stranger = Orchestrator(orchestrator.settings.model_copy(update={"data_dir": tmp_path}), client=engine)
    assert stranger.owner != orchestrator.owner
    assert SLUG not in {i.slug for i in stranger.instances()}
    assert SLUG not in {slug for slug, _ in stranger.running_units()}
    assert stranger.status(SLUG).state == "absent"
    stranger.remove(SLUG)
    assert orchestrator.status(SLUG).running
    assert firewall.rules_for(orchestrator.key(SLUG))


def test_servers_cannot_reach_each_other_and_remove_leaves_nothing(
    engine: docker.DockerClient, orchestrator: Orchestrator, deployed: ServerInstance,
    time_entry: CatalogEntry, time_image: BuiltImage,
) -> None:
    other_token = secrets.token_urlsafe(24)
    other = orchestrator.deploy(time_entry, slug=OTHER_SLUG, deployment_id="dep-other", env={}, bridge_token=other_token)
    try:
        assert other.network_name != deployed.network_name
        results = probe(engine, time_image.tag, deployed.container_id, [(other.ip, 8080)])
        assert results[f"{other.ip}:8080"] != "connected", results
        # deploying a slug again replaces its container
        again = orchestrator.deploy(time_entry, slug=OTHER_SLUG, deployment_id="dep-other", env={}, bridge_token=other_token)
        assert again.container_id != other.container_id
        assert [i.container_id for i in orchestrator.instances() if i.slug == OTHER_SLUG] == [again.container_id]
    finally:
        orchestrator.remove(OTHER_SLUG)
    assert leftovers(engine, orchestrator, OTHER_SLUG) == []
    orchestrator.remove(OTHER_SLUG)  # idempotent
    assert orchestrator.status(OTHER_SLUG).state == "absent"
    assert OTHER_SLUG not in {i.slug for i in orchestrator.instances()}
    assert leftovers(engine, orchestrator, SLUG)  # the other deployment is untouched


def test_failed_deploy_reports_redacted_and_cleans_up(
    engine: docker.DockerClient, orchestrator: Orchestrator, time_entry: CatalogEntry, time_image: BuiltImage,
) -> None:
    broken = hardened_time_entry(time_entry, command=["mcp-server-time-does-not-exist", PLANTED])
    slug = "orch-test-broken"
    with pytest.raises(DeploymentError) as raised:
        orchestrator.deploy(broken, slug=slug, deployment_id="dep-broken", env={"PLANTED_SECRET": PLANTED},
                            bridge_token=TOKEN, ready_timeout=30)
    text = str(raised.value)
    assert slug in text
    assert TOKEN not in text and PLANTED not in text  # log lines are redacted
    assert leftovers(engine, orchestrator, slug) == []


def test_draining_one_instance_survives_siblings_removed_while_listed(
    engine: docker.DockerClient, orchestrator: Orchestrator, time_entry: CatalogEntry, time_image: BuiltImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scaling down drains instances side by side: listing a deployment's containers inspects each
    one, and the siblings' drains keep removing them in between. That must not fail the drain (it
    once answered the management API's scale with a 500)."""
    first = orchestrator.deploy(time_entry, slug=OTHER_SLUG, deployment_id="dep-other", env={},
                                bridge_token=secrets.token_urlsafe(24))
    labels = engine.containers.get(first.container_id).labels
    siblings = {engine.containers.create(time_image.tag, labels={**labels, LABEL_REPLICA: str(number)}).id
                for number in range(1, 9)}
    inspect = engine.api.inspect_container
    removed_while_listed: list[str] = []

    def a_sibling_drained_meanwhile(container: str) -> object:
        if container in siblings and container not in removed_while_listed:
            engine.api.remove_container(container, force=True)  # the real engine loses it mid-listing
            removed_while_listed.append(container)
        return inspect(container)

    monkeypatch.setattr(engine.api, "inspect_container", a_sibling_drained_meanwhile)
    try:
        assert (OTHER_SLUG, 0) in orchestrator.running_units()
        assert not {(OTHER_SLUG, number) for number in range(1, 9)} & orchestrator.running_units()  # created, not started
        orchestrator.drain(OTHER_SLUG, 0, timeout=1)
        assert removed_while_listed  # the race happened, on every listing
        assert (OTHER_SLUG, 0) not in orchestrator.running_units()
        assert orchestrator.status(OTHER_SLUG, 0).state == "absent"
        assert first.container_id not in {c.id for c in engine.containers.list(all=True)}
    finally:
        monkeypatch.undo()
        orchestrator.remove(OTHER_SLUG)
    assert leftovers(engine, orchestrator, OTHER_SLUG) == []


def test_logs_and_resource_use_of_an_instance_removed_meanwhile_are_empty(
    engine: docker.DockerClient, orchestrator: Orchestrator, time_entry: CatalogEntry, time_image: BuiltImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dashboard and the API ask for logs and resource use while a restart or a scale-down may
    remove the container between finding it and asking the engine: nothing to show, not an error."""
    instance = orchestrator.deploy(time_entry, slug=OTHER_SLUG, deployment_id="dep-other", env={},
                                   bridge_token=secrets.token_urlsafe(24))
    try:
        assert orchestrator.resource_use(OTHER_SLUG) is not None
        for method in ("logs", "stats"):
            original = getattr(engine.api, method)

            def removed_first(container: str, *args: object, _original=original, **kwargs: object) -> object:
                engine.api.remove_container(container, force=True)
                return _original(container, *args, **kwargs)

            monkeypatch.setattr(engine.api, method, removed_first)
        assert orchestrator.logs(OTHER_SLUG) == ""
        instance = orchestrator.deploy(time_entry, slug=OTHER_SLUG, deployment_id="dep-other", env={},
                                       bridge_token=secrets.token_urlsafe(24))
        assert orchestrator.resource_use(OTHER_SLUG) is None
        assert instance.container_id not in {c.id for c in engine.containers.list(all=True)}
    finally:
        monkeypatch.undo()
        orchestrator.remove(OTHER_SLUG)
    assert leftovers(engine, orchestrator, OTHER_SLUG) == []
