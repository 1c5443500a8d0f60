"""Running servers: one hardened container on one internal network per instance of a deployment.

A deployment runs as one or more instances (replicas), numbered; each is a complete unit of its
own (network, host firewall, egress proxy, container) named by `spec.unit_name`, and every
operation below takes the instance's number (`replica`, 0 by default).

deploy = ensure image -> host firewall for the deployment's bridge interface and the server's network
(internal; with NAT for the `open` profile), side by side, both complete before anything is
attached to the network -> the host's route to it checked -> for `egress`: host firewall for an
outbound network and the outbound network (side by side), the squid proxy (egress.py) on both
networks, answering -> container (spec.py; proxy URL in its environment, resolvers per profile;
created with the start-up CPU allowance) -> attach stdin, start, write the bootstrap line, close ->
wait for the bridge's /ready (Bearer token) -> lower the CPU limit to the profile's ->
ServerInstance. Any failure removes what was made and raises `DeploymentError` with the exit code
and the last log lines (values of variables redacted).

Everything here blocks (the docker SDK is synchronous): async callers use threads.
Containers and networks carry labels, so `instances()` finds them again after a restart of the
control plane (adoption); the bridge keeps its token in memory, so an adopted instance needs
nothing re-sent.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx2
from docker.types import IPAMConfig, IPAMPool

from stockade import metrics
from stockade.catalog import CatalogEntry, NetworkProfile
from stockade.config import Settings
from stockade.errors import DeploymentError, EngineError
from stockade.orchestrator import egress, firewall, subnets
from stockade.orchestrator.engine import connect_engine
from stockade.orchestrator.images import BuiltImage, ImageBuilder
from stockade.orchestrator.spec import (
    BRIDGE_PORT,
    LABEL_DEPLOYMENT,
    LABEL_ENTRY,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_REPLICA,
    LABEL_SERVER,
    container_name,
    container_spec,
    network_name,
    owner_id,
    unit_name,
)

Progress = Callable[[str], None]
LOG_LINES_ON_FAILURE = 30
# How long an instance taken out of service may finish its calls: the engine's stop timeout, above
# the bridge's own drain (20 s by default) so that the bridge ends them, not SIGKILL.
DRAIN_SECONDS = 30
# Once a bridge listens it answers /ready in a few ms: ask often. Inspecting the container (has it
# exited?) costs the engine more and only matters for failures: look less often.
READY_POLL_SECONDS = 0.02
EXIT_CHECK_SECONDS = 0.25
log = logging.getLogger("stockade.orchestrator")


@dataclass(frozen=True)
class ServerInstance:
    slug: str
    deployment_id: str
    container_id: str
    container_name: str
    network_id: str
    network_name: str
    ip: str
    port: int
    entry: str = ""
    network_profile: str = "none"
    egress_proxy: str | None = None  # the name of the server's egress proxy container (profile egress)
    replica: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"


@dataclass(frozen=True)
class ResourceUse:
    memory_bytes: int
    memory_limit_bytes: int
    cpu_percent: float
    pids: int


@dataclass(frozen=True)
class InstanceStatus:
    slug: str
    state: str  # created | running | restarting | exited | dead | paused | absent
    running: bool
    exit_code: int | None
    oom_killed: bool
    restart_count: int
    started_at: str | None
    finished_at: str | None
    error: str | None
    container_id: str | None = None
    replica: int = 0


def _noop(_: str) -> None:
    pass


def redact(text: str, secrets: list[str]) -> str:
    for value in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text


class Orchestrator:
    def __init__(self, settings: Settings, client: docker.DockerClient | None = None,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.progress = progress or _noop
        self._client = client
        self._builder: ImageBuilder | None = None
        self._lock = threading.Lock()
        self._slug_locks: dict[str, threading.Lock] = {}
        # Containers, networks and firewall rules are scoped to this installation (data directory):
        # another Stockade on the same engine neither sees nor removes ours, and a slug may be
        # deployed by both.
        self.owner = owner_id(settings.data_dir)
        self._denials_seen: dict[str, int] = {}
        self._engine_cpus: int | None = None

    # -- plumbing ------------------------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        """The engine, connected (and on Debian as root installed/started) on first use."""
        with self._lock:
            if self._client is None:
                self._client = connect_engine(self.settings, progress=self.progress)
            return self._client

    @property
    def builder(self) -> ImageBuilder:
        client = self.client
        with self._lock:
            if self._builder is None:
                self._builder = ImageBuilder(client, self.settings, progress=self.progress)
            return self._builder

    @property
    def engine_cpus(self) -> int:
        """The engine's CPU count (it sizes a server's start-up CPU allowance); asked once."""
        if self._engine_cpus is None:
            self._engine_cpus = int(self.client.info()["NCPU"])
        return self._engine_cpus

    def _slug_lock(self, slug: str) -> threading.Lock:
        with self._lock:
            return self._slug_locks.setdefault(slug, threading.Lock())

    def key(self, slug: str, replica: int = 0) -> str:
        """This installation's name for an instance of a deployment (firewall rules, interface name)."""
        return f"{self.owner}-{unit_name(slug, replica)}"

    def _labels(self, slug: str | None = None) -> list[str]:
        return [f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={self.owner}", f"{LABEL_SERVER}={slug}" if slug else LABEL_SERVER]

    # -- API -------------------------------------------------------------------------------------------
    def ensure_image(self, entry: CatalogEntry) -> BuiltImage:
        return self.builder.ensure_server_image(entry)

    def deploy(self, entry: CatalogEntry, *, slug: str, deployment_id: str, env: Mapping[str, str],
               bridge_token: str, ready_timeout: float = 60.0, replica: int = 0) -> ServerInstance:
        """Run instance `replica` of deployment `slug` and wait until its bridge is ready."""
        if not bridge_token:
            raise DeploymentError("a bridge token is required")
        with self._slug_lock(unit_name(slug, replica)):
            image = self.ensure_image(entry)
            self._remove(slug, replica)  # a leftover of an earlier deploy of this instance is replaced, never reused
            secrets = [bridge_token, *env.values()]
            try:
                return self._deploy(entry, slug=slug, deployment_id=deployment_id, env=env,
                                    bridge_token=bridge_token, image=image, ready_timeout=ready_timeout,
                                    secrets=secrets, replica=replica)
            except DeploymentError:
                self._remove(slug, replica)
                raise
            except docker.errors.APIError as exc:
                self._remove(slug, replica)
                raise DeploymentError(f"deploying {slug!r} failed: {redact(str(exc.explanation or exc), secrets)}") from None
            except BaseException:
                self._remove(slug, replica)
                raise

    def remove(self, slug: str, replica: int | None = None) -> None:
        """Remove one instance of a deployment, or (`replica` None) every instance it has."""
        for number in self.replicas(slug) if replica is None else [replica]:
            with self._slug_lock(unit_name(slug, number)):
                self._remove(slug, number)

    def drain(self, slug: str, replica: int, timeout: float = DRAIN_SECONDS) -> None:
        """Take an instance out of service gracefully, then remove it.

        SIGTERM lets its bridge finish the calls in flight (the gateway no longer routes new ones
        to it); the engine kills it after `timeout` seconds at the latest.
        """
        with self._slug_lock(unit_name(slug, replica)):
            for container in self._containers(slug, replica):
                try:
                    container.stop(timeout=int(timeout))
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    log.warning("stopping %s gracefully failed (%s); removing it", container.name, exc.explanation or exc)
            self._remove(slug, replica)

    def replicas(self, slug: str) -> list[int]:
        """The numbers of every instance of `slug` that has anything on the engine (and 0)."""
        found = {0}
        labelled = [*self._list_containers({"label": self._labels(slug)}),
                    *self.client.networks.list(filters={"label": self._labels(slug)})]
        for thing in labelled:
            number = _replica_of(thing.attrs.get("Labels") or thing.attrs.get("Config", {}).get("Labels") or {})
            if number is not None:
                found.add(number)
        return sorted(found)

    def instances(self) -> list[ServerInstance]:
        """Running server containers of this installation, found by their labels (adoption).

        The host firewall of each is re-asserted (idempotent): rules lost with a firewall reload
        come back before the control plane routes to an adopted server again.
        """
        found = []
        for container in self._list_containers(running_only=True, filters={"label": self._labels()}):
            instance = self._instance_of(container)
            if instance is not None:
                firewall.block_host(self.key(instance.slug, instance.replica))
                if instance.egress_proxy is not None:
                    firewall.block_host(egress.outbound_key(self.key(instance.slug, instance.replica)))
                    self._ensure_proxy_running(instance.slug, instance.replica)
                found.append(instance)
        return sorted(found, key=lambda i: (i.slug, i.replica))

    def running_units(self) -> set[tuple[str, int]]:
        """(slug, instance number) of every server container of this installation running now.

        One listing without inspecting each container: cheap enough to ask every supervision pass,
        beside the gateway's event loop in the same process.
        """
        found = set()
        for container in self.client.containers.list(filters={"label": self._labels(), "status": "running"}, sparse=True):
            labels = container.attrs.get("Labels") or {}
            replica = _replica_of(labels)
            if labels.get(LABEL_SERVER) and replica is not None:
                found.add((labels[LABEL_SERVER], replica))
        return found

    def instance(self, slug: str, replica: int = 0) -> ServerInstance | None:
        container = self._container(slug, replica)
        if container is None or container.status != "running":
            return None
        return self._instance_of(container)

    def status(self, slug: str, replica: int = 0) -> InstanceStatus:
        container = self._container(slug, replica)
        if container is None:
            return InstanceStatus(slug=slug, state="absent", running=False, exit_code=None, oom_killed=False,
                                  restart_count=0, started_at=None, finished_at=None, error=None, replica=replica)
        state = container.attrs.get("State", {})
        zero_time = "0001-01-01T00:00:00Z"
        return InstanceStatus(
            slug=slug,
            state=str(state.get("Status", "unknown")),
            running=bool(state.get("Running")),
            exit_code=None if state.get("Running") or state.get("Status") == "created" else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            restart_count=int(container.attrs.get("RestartCount", 0)),
            started_at=None if state.get("StartedAt") in (None, "", zero_time) else state.get("StartedAt"),
            finished_at=None if state.get("FinishedAt") in (None, "", zero_time) else state.get("FinishedAt"),
            error=state.get("Error") or None,
            container_id=container.id,
            replica=replica,
        )

    def logs(self, slug: str, *, tail: int = 100, replica: int = 0) -> str:
        container = self._container(slug, replica)
        if container is None:
            return ""
        try:
            return container.logs(tail=tail, stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.NotFound:
            return ""  # removed since it was found (a restart or scale-down in parallel): no output left

    def resource_use(self, slug: str, replica: int = 0) -> ResourceUse | None:
        """Memory and CPU use of an instance's container now (one sample from the engine)."""
        container = self._container(slug, replica)
        if container is None or container.status != "running":
            return None
        try:
            stats = container.stats(stream=False)
        except docker.errors.NotFound:
            return None  # removed since it was found: it uses nothing now
        memory = stats.get("memory_stats", {})
        cpu, precpu = stats.get("cpu_stats", {}), stats.get("precpu_stats", {})
        cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - precpu.get("cpu_usage", {}).get("total_usage", 0)
        system_delta = cpu.get("system_cpu_usage", 0) - precpu.get("system_cpu_usage", 0)
        cpus = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
        return ResourceUse(
            memory_bytes=int(memory.get("usage", 0)),
            memory_limit_bytes=int(memory.get("limit", 0)),
            cpu_percent=round(100.0 * cpu_delta / system_delta * cpus, 1) if system_delta > 0 else 0.0,
            pids=int(stats.get("pids_stats", {}).get("current", 0)),
        )

    # -- deploy --------------------------------------------------------------------------------------
    def _deploy(self, entry: CatalogEntry, *, slug: str, deployment_id: str, env: Mapping[str, str],
                bridge_token: str, image: BuiltImage, ready_timeout: float, secrets: list[str],
                replica: int) -> ServerInstance:
        say = self.progress
        unit = unit_name(slug, replica)
        net_name = network_name(unit, self.owner)
        profile = entry.network
        shape = egress.server_network_config(profile)
        labels = {LABEL_MANAGED: "true", LABEL_OWNER: self.owner, LABEL_SERVER: slug, LABEL_REPLICA: str(replica),
                  LABEL_DEPLOYMENT: deployment_id, LABEL_ENTRY: entry.name, egress.LABEL_PROFILE: profile.value}
        try:
            allowlist = egress.parse_allowlist(entry.egress)
        except ValueError as exc:
            raise DeploymentError(f"the egress allowlist of {entry.name!r} is invalid: {exc}") from None
        if profile is NetworkProfile.open:
            log.warning("SERVER %r USES THE 'open' NETWORK PROFILE: it can reach ANY address outside this host "
                        "(NAT), with no allowlist; only the host itself and other servers stay unreachable", slug)
            say(f"{slug}: WARNING: network profile 'open' -- unrestricted outbound network access")

        # 1-2. the host firewall and the instance's own network: internal (no route out) unless the
        # profile is `open`
        say(f"{unit}: creating network {net_name} (profile {profile.value})")
        network = self._network_behind_firewall(self.key(slug, replica), net_name, labels, internal=shape["internal"],
                                                masquerade=shape["masquerade"], icc=shape["proxy"])
        self._check_host_route(network, unit)
        environment: dict[str, str] = {}
        extra_labels = {egress.LABEL_PROFILE: profile.value}
        if shape["proxy"]:
            proxy_ip, proxy_name = self._start_proxy(slug, replica, deployment_id, allowlist, network, labels)
            environment = egress.proxy_environment(proxy_ip)
            extra_labels[egress.LABEL_PROXY_NAME] = proxy_name
        # 3. the container
        spec = container_spec(entry, slug=slug, deployment_id=deployment_id, image=image.tag,
                              network_name=net_name, data_dir=self.settings.data_dir, bridge_port=BRIDGE_PORT,
                              owner=self.owner, environment=environment, dns=shape["dns"],
                              extra_labels=extra_labels, replica=replica, engine_cpus=self.engine_cpus)
        for mount in spec.mounts:
            self._prepare_mount(Path(mount.source), writable=not mount.read_only)
        container = self.client.containers.create(**spec.create_kwargs())
        # 4. the bootstrap line: attached before start, so the bridge cannot miss it
        say(f"{unit}: starting container {container.name}")
        line = (json.dumps({"token": bridge_token, "env": dict(env)}) + "\n").encode()
        self._start_with_stdin(container, line)
        # 5. ready?
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"].get(net_name, {}).get("IPAddress") or ""
        if not ip:
            raise DeploymentError(f"container of {slug!r} has no address on {net_name}",
                                  hint=self._failure_details(container, secrets))
        self._wait_ready(container, slug, f"http://{ip}:{BRIDGE_PORT}", bridge_token, ready_timeout, secrets)
        # 6. from now on the profile's CPU limit, not the start-up allowance
        if spec.startup_nano_cpus != spec.nano_cpus:
            self._lower_cpu_limit(container, spec.nano_cpus)
        say(f"{unit}: ready at http://{ip}:{BRIDGE_PORT}")
        return ServerInstance(slug=slug, deployment_id=deployment_id, container_id=container.id,
                              container_name=container.name, network_id=network.id, network_name=net_name,
                              ip=ip, port=BRIDGE_PORT, entry=entry.name, network_profile=profile.value,
                              egress_proxy=extra_labels.get(egress.LABEL_PROXY_NAME), replica=replica)

    @staticmethod
    def _check_host_route(network: Any, unit: str) -> None:
        """The host must reach the instance's network through its own bridge, where it holds the
        gateway address. An engine that gives the host no address on an internal network (Podman)
        would send the proxy probe and the bridge token out by the default route instead: refuse
        before any request."""
        ipam = network.attrs["IPAM"]["Config"][0]
        gateway = str(ipam.get("Gateway", "")).split("/")[0]
        member = str(ipaddress.ip_network(ipam["Subnet"])[2])
        try:
            source = subnets.route_source(member, BRIDGE_PORT)
        except OSError:
            source = "nowhere (no route)"
        if source != gateway:
            raise DeploymentError(
                f"the host has no route to {unit} on its own network: traffic to {member} would leave from "
                f"{source}, not from the network's gateway {gateway or '(none)'}",
                hint="the container engine gave the host no address on the server's internal network "
                     "(Podman does this); run Stockade on Docker",
            )

    def _start_proxy(self, slug: str, replica: int, deployment_id: str, allowlist: tuple[egress.AllowRule, ...],
                     network: Any, labels: dict[str, str]) -> tuple[str, str]:
        """The instance's squid: outbound network (host-blocked, NAT) + a pinned address on the
        instance's internal network; started and answering before the server exists. Returns (ip, name)."""
        say = self.progress
        unit = unit_name(slug, replica)
        image = self.builder.ensure_proxy_image()
        out_name = egress.outbound_network_name(unit, self.owner)
        say(f"{unit}: creating outbound network {out_name} for the egress proxy")
        outbound = self._network_behind_firewall(egress.outbound_key(self.key(slug, replica)), out_name,
                                                 {**labels, egress.LABEL_ROLE: egress.ROLE_OUTBOUND},
                                                 internal=False, masquerade=True)
        subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
        out_subnet = outbound.attrs["IPAM"]["Config"][0]["Subnet"]
        proxy_ip = str(subnet.broadcast_address - 1)
        deny = [*egress.host_addresses(), self.settings.server_network_pool, str(subnet), out_subnet]
        kwargs = egress.proxy_container_kwargs(
            image=image, slug=unit, owner=self.owner, allowlist=[str(r) for r in allowlist],
            outbound_network=out_name, listen_ip=proxy_ip, extra_hosts=self.settings.egress_hosts,
            deny_addresses=deny, nameservers=[str(ip) for ip in self.settings.egress_dns])
        # named after the instance; labelled with the deployment (and the instance's number)
        kwargs["labels"].update({LABEL_DEPLOYMENT: deployment_id, egress.LABEL_PROXY_FOR: slug, LABEL_REPLICA: str(replica)})
        say(f"{unit}: starting egress proxy {kwargs['name']} ({len(allowlist)} allowed destinations)")
        container = self.client.containers.create(**kwargs)
        network.connect(container, ipv4_address=proxy_ip)
        container.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((proxy_ip, egress.PROXY_PORT), timeout=1):
                    break
            except OSError:
                pass
            container.reload()
            if container.status not in ("created", "running", "restarting") or time.monotonic() >= deadline:
                raise DeploymentError(f"the egress proxy of {slug!r} did not start",
                                      hint=self._failure_details(container, []))
            time.sleep(0.2)
        return proxy_ip, container.name

    def _proxy_containers(self, slug: str, replica: int) -> list[Any]:
        """The egress proxy of one instance of a deployment."""
        labelled = [c for c in self._list_containers({"label": [
                        f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={self.owner}", f"{egress.LABEL_PROXY_FOR}={slug}"]})
                    if _replica_of(c.labels or {}) == replica]
        name = egress.proxy_container_name(unit_name(slug, replica), self.owner)
        named = self._list_containers({"name": f"^/{name.replace('.', '[.]')}$"})
        return list({c.id: c for c in [*labelled, *named]}.values())

    def _ensure_proxy_running(self, slug: str, replica: int) -> None:
        for container in self._proxy_containers(slug, replica):
            if container.status != "running":
                try:
                    container.start()
                except docker.errors.APIError as exc:
                    log.error("cannot restart the egress proxy of %r: %s", unit_name(slug, replica), exc)

    def _egress_proxies(self) -> list[tuple[str, int, bool]]:
        """(slug, instance number, running) of every egress proxy of this installation: one listing
        without inspecting each container."""
        found = []
        for container in self.client.containers.list(all=True, sparse=True, filters={"label": [
                f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={self.owner}", egress.LABEL_PROXY_FOR]}):
            labels = container.attrs.get("Labels") or {}
            replica = _replica_of(labels)
            if replica is not None:
                found.append((labels[egress.LABEL_PROXY_FOR], replica, container.attrs.get("State") == "running"))
        return found

    def revive_egress_proxies(self) -> list[str]:
        """Start every egress proxy that stopped (its server's way out is closed while it is down);
        returns the instances whose proxy was started. The supervisor calls this periodically."""
        revived = []
        for slug, replica, running in self._egress_proxies():
            if not running:
                self._ensure_proxy_running(slug, replica)
                revived.append(unit_name(slug, replica))
        return revived

    def egress_denials(self, slug: str) -> int:
        """Requests the egress proxies of the server's instances refused (TCP_DENIED lines in their
        logs); 0 without a proxy."""
        total = 0
        for container in [c for n in self.replicas(slug) for c in self._proxy_containers(slug, n)]:
            try:
                text = container.logs(stdout=True, stderr=False).decode(errors="replace")
            except docker.errors.APIError:
                continue
            total += egress.count_denials(text)
        return total

    def record_egress_denials(self, slugs: list[str] | None = None) -> dict[str, int]:
        """Bring `metrics.EGRESS_DENIALS` up to date (the control plane calls this periodically).

        Returns the new denials per slug since the last call. A proxy that was recreated (count
        going down) counts from zero again.
        """
        if slugs is None:
            slugs = sorted({slug for slug, _, _ in self._egress_proxies()})
        added: dict[str, int] = {}
        for slug in slugs:
            count = self.egress_denials(slug)
            seen = self._denials_seen.get(slug, 0)
            delta = count - seen if count >= seen else count
            self._denials_seen[slug] = count
            if delta > 0:
                metrics.EGRESS_DENIALS.labels(slug).inc(delta)
            added[slug] = delta
        return added

    def _network_behind_firewall(self, key: str, name: str, labels: dict[str, str], *, internal: bool,
                                 masquerade: bool, icc: bool = False) -> Any:
        """The host firewall rules for `key`'s bridge interface and the network that brings the
        interface up, made side by side (tens of ms each). The rules match the interface by name, so
        they hold whichever comes first; what matters is that both are complete before anything is
        attached to the network, and nothing is until this returns."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            rules = pool.submit(firewall.block_host, key)
            network = self._create_network(name, firewall.bridge_interface(key), labels, internal=internal,
                                           masquerade=masquerade, icc=icc)
            rules.result()  # a rule that could not be installed fails the deploy, which removes the network
        return network

    def _create_network(self, name: str, interface: str, labels: dict[str, str], *, internal: bool = True,
                        masquerade: bool = False, icc: bool = False) -> Any:
        """A bridge network on a /28 of our pool (several tries: others allocate too): internal
        (no route out) unless asked otherwise; the host firewall (by interface) applies either way.
        `icc` (container-to-container on the network) only where the server must reach its proxy:
        that network holds exactly those two containers."""
        options = {
            "com.docker.network.bridge.name": interface,
            "com.docker.network.bridge.enable_ip_masquerade": "true" if masquerade else "false",
            "com.docker.network.bridge.enable_icc": "true" if icc else "false",
        }
        used = subnets.engine_subnets(n.attrs for n in self.client.networks.list(greedy=False))
        try:
            candidates = subnets.free_subnets(self.settings.server_network_pool, [*used, *subnets.host_routes()])
        except ValueError as exc:
            raise DeploymentError(str(exc), hint="set STOCKADE_SERVER_NETWORK_POOL to an IPv4 CIDR") from None
        last_error = "the pool is exhausted"
        for _attempt, subnet in zip(range(8), candidates, strict=False):
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))])
            try:
                return self.client.networks.create(name, driver="bridge", internal=internal, labels=labels,
                                                   check_duplicate=True, options=options, ipam=ipam)
            except docker.errors.APIError as exc:
                last_error = str(exc.explanation or exc)
                if "overlap" not in last_error.lower():
                    raise
        raise DeploymentError(
            f"no free subnet for network {name} in {self.settings.server_network_pool}: {last_error}",
            hint="remove unused deployments or widen STOCKADE_SERVER_NETWORK_POOL",
        )

    def _start_with_stdin(self, container: Any, line: bytes) -> None:
        sock = self.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        try:
            container.start()
            raw.sendall(line)
            try:
                raw.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        finally:
            try:
                sock.close()
            finally:
                raw.close()

    def _lower_cpu_limit(self, container: Any, nano_cpus: int) -> None:
        """Hold a running container to its profile's CPU limit (it started with more, see
        spec.startup_nano_cpus). The engine keeps the value in the container's configuration, so it
        also holds if the container is started again."""
        api = self.client.api
        # docker-py's update_container sets CpuQuota only, which the engine refuses to change on a
        # container created with NanoCpus: the engine's update endpoint itself, then.
        response = api.post(f"{api.base_url}/v{api.api_version}/containers/{container.id}/update",
                            json={"NanoCpus": nano_cpus})
        if response.status_code != 200:
            raise DeploymentError(
                f"could not lower the CPU limit of {container.name} to its profile's {nano_cpus / 1e9:g} CPUs "
                f"(the engine answered {response.status_code}: {response.text.strip()[:300]}); it was removed",
                hint="check that the engine supports `docker update --cpus` on a running container, then deploy again",
            )

    def _wait_ready(self, container: Any, slug: str, endpoint: str, token: str, timeout: float,
                    secrets: list[str]) -> None:
        deadline = time.monotonic() + timeout
        next_exit_check = time.monotonic() + EXIT_CHECK_SECONDS
        last = "no answer yet"
        # trust_env=False: never route this through a proxy from the environment
        with httpx2.Client(timeout=2.0, trust_env=False) as http:
            while True:
                try:
                    response = http.get(f"{endpoint}/ready", headers={"Authorization": f"Bearer {token}"})
                    if response.status_code == 200:
                        return
                    last = f"/ready answered {response.status_code}: {response.text[:200]}"
                except httpx2.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                now = time.monotonic()
                if now >= next_exit_check or now >= deadline:
                    next_exit_check = now + EXIT_CHECK_SECONDS
                    container.reload()
                    if container.status not in ("created", "running"):
                        code = container.attrs.get("State", {}).get("ExitCode")
                        oom = " (killed: out of memory)" if container.attrs.get("State", {}).get("OOMKilled") else ""
                        raise DeploymentError(
                            f"the container of {slug!r} exited with code {code}{oom} before it was ready",
                            hint=self._failure_details(container, secrets),
                        )
                    if now >= deadline:
                        raise DeploymentError(
                            f"the bridge of {slug!r} was not ready within {timeout:.0f} s ({redact(last, secrets)})",
                            hint=self._failure_details(container, secrets),
                        )
                time.sleep(READY_POLL_SECONDS)

    def _failure_details(self, container: Any, secrets: list[str]) -> str:
        try:
            logs = container.logs(tail=LOG_LINES_ON_FAILURE, stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.APIError:
            logs = ""
        logs = redact(logs.strip(), secrets)
        return f"last log lines:\n{logs}" if logs else "the container wrote no log lines"

    def _prepare_mount(self, path: Path, *, writable: bool) -> None:
        if path.exists():
            if not path.is_dir():
                raise DeploymentError(f"mount source {path} exists and is not a directory")
            return
        path.mkdir(parents=True, mode=0o750)
        if writable:
            import os

            try:  # the server runs as 65534: a directory we create for it must be its own
                os.chown(path, 65534, 65534)
            except PermissionError:
                path.chmod(0o777)

    # -- lookup and removal --------------------------------------------------------------------------
    def _list_containers(self, filters: dict[str, Any], *, running_only: bool = False) -> list[Any]:
        """The engine's containers matching `filters`. Listing inspects each one it finds; one removed in
        between (a drain running in parallel) is left out rather than failing the whole listing."""
        return self.client.containers.list(all=not running_only, filters=filters, ignore_removed=True)

    def _containers(self, slug: str, replica: int) -> list[Any]:
        by_label = [c for c in self._list_containers({"label": self._labels(slug)})
                    if _replica_of(c.labels or {}) == replica]
        name = container_name(unit_name(slug, replica), self.owner)
        by_name = self._list_containers({"name": f"^/{name.replace('.', '[.]')}$"})
        seen: dict[str, Any] = {}
        for container in [*by_label, *by_name]:
            seen.setdefault(container.id, container)
        return list(seen.values())

    def _container(self, slug: str, replica: int) -> Any:
        containers = self._containers(slug, replica)
        if not containers:
            return None
        running = [c for c in containers if c.status == "running"]
        return (running or containers)[0]

    def _remove(self, slug: str, replica: int) -> None:
        unit = unit_name(slug, replica)
        for container in self._containers(slug, replica):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise EngineError(f"cannot remove the container of {unit!r}: {exc.explanation or exc}") from None
        for container in self._proxy_containers(slug, replica):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise EngineError(f"cannot remove the egress proxy of {unit!r}: {exc.explanation or exc}") from None
        self._denials_seen.pop(slug, None)
        names = {network_name(unit, self.owner), egress.outbound_network_name(unit, self.owner)}
        networks = [n for n in self.client.networks.list(filters={"label": self._labels(slug)})
                    if _replica_of(n.attrs.get("Labels") or {}) == replica]
        for name in names:
            networks += [n for n in self.client.networks.list(names=[name]) if n.name == name]
        for network in {n.id: n for n in networks}.values():
            try:
                network.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise EngineError(f"cannot remove the network of {unit!r}: {exc.explanation or exc}") from None
        firewall.unblock_host(self.key(slug, replica))
        firewall.unblock_host(egress.outbound_key(self.key(slug, replica)))

    def _instance_of(self, container: Any) -> ServerInstance | None:
        labels = container.labels or {}
        slug = labels.get(LABEL_SERVER)
        replica = _replica_of(labels)
        if not slug or replica is None or labels.get(LABEL_OWNER) != self.owner:
            return None
        net_name = network_name(unit_name(slug, replica), self.owner)
        network = container.attrs.get("NetworkSettings", {}).get("Networks", {}).get(net_name)
        if not network or not network.get("IPAddress"):
            return None
        return ServerInstance(slug=slug, deployment_id=labels.get(LABEL_DEPLOYMENT, ""), container_id=container.id,
                              container_name=container.name, network_id=network.get("NetworkID", ""),
                              network_name=net_name, ip=network["IPAddress"], port=BRIDGE_PORT,
                              entry=labels.get(LABEL_ENTRY, ""),
                              network_profile=labels.get(egress.LABEL_PROFILE, "none"),
                              egress_proxy=labels.get(egress.LABEL_PROXY_NAME) or None, replica=replica)


def _replica_of(labels: Mapping[str, str]) -> int | None:
    """The instance number a resource is labelled with (0 for those made before replicas existed)."""
    value = labels.get(LABEL_REPLICA, "0")
    return int(value) if value.isdigit() else None
