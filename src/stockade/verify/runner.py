"""`stockade verify`: prove from inside each running server's sandbox that every policy holds.

Per server (this installation's running containers, found by label, without repairing anything):
one probe container joins its namespaces with its security context and reports what it can reach
and what it is; the checks below turn that plus `docker inspect` and the store into named results.

Everything verify creates -- the host canary listener, the "internet" namespace with its veth and
child process, probe containers (label `io.stockade.verify=<run id>`), temporary `--compare`
deployments -- lives in one ExitStack and is removed on the way out, errors included.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors

from stockade.catalog import Catalog, CatalogEntry, NetworkProfile
from stockade.config import Settings
from stockade.orchestrator.images import LABEL_PACKAGE, LABEL_VERSION, matches_pin
from stockade.orchestrator.sbom import LABEL_SBOM, MAX_SBOM_BYTES, SbomError, package_purl, read_sbom
from stockade.orchestrator.spec import (
    BRIDGE_PORT,
    LABEL_ENTRY,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_SERVER,
    owner_id,
)
from stockade.verify.canaries import HostCanary, InternetCanary, host_addresses
from stockade.verify.model import FAIL, PASS, WARN, CheckResult, Findings, report_document
from stockade.verify.probe import LABEL_VERIFY, ProbeError, run_probe

Progress = Callable[[str], None]
FORBIDDEN_EXECUTABLES = ("sh", "bash", "dash", "ash", "zsh", "ksh", "busybox", "apt", "apt-get", "aptitude", "dpkg",
                         "rpm", "yum", "dnf", "apk", "pip", "npm", "npx", "yarn", "pnpm", "su", "sudo")
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# set by the orchestrator's network profiles (orchestrator/egress.py); read as plain strings here
LABEL_PROFILE = "io.stockade.network-profile"
LABEL_PROXY_FOR = "io.stockade.egress-proxy-for"
LABEL_PROXY_NAME = "io.stockade.egress-proxy"


def _noop(_: str) -> None:
    pass


def _forbidden(name: str) -> bool:
    if name in FORBIDDEN_EXECUTABLES:
        return True
    # pip3, pip3.11, python-pip style variants
    return name.startswith("pip") and name[3:].replace(".", "").isdigit()


@dataclass
class Target:
    """One running server container and what is known about it."""

    slug: str
    container: dict[str, Any]
    image: dict[str, Any]
    entry: CatalogEntry | None
    ips: list[str] = field(default_factory=list)

    @property
    def profile(self) -> str:
        return self.entry.network.value if self.entry is not None else "unknown"

    def env(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in (self.container.get("Config") or {}).get("Env") or [])
        return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


class Verifier:
    def __init__(self, settings: Settings, client: docker.DockerClient | None = None,
                 progress: Progress | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self._client = client
        self.progress = progress or _noop
        self.owner = owner_id(settings.data_dir)
        self._catalog = catalog
        self.run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            from stockade.orchestrator.engine import connect_engine

            self._client = connect_engine(self.settings, progress=self.progress)
        return self._client

    @property
    def catalog(self) -> Catalog | None:
        if self._catalog is None:
            try:
                self._catalog = Catalog.load(self.settings.catalog_file)
            except Exception:  # noqa: BLE001 - a broken catalog must not stop verification: entries become unknown
                return None
        return self._catalog

    def _entry(self, name: str, overrides: dict[str, CatalogEntry], slug: str) -> CatalogEntry | None:
        if slug in overrides:
            return overrides[slug]
        catalog = self.catalog
        if catalog is None or not name:
            return None
        try:
            return catalog.get(name)
        except Exception:  # noqa: BLE001 - an unknown entry is reported as such
            return None

    def targets(self, server: str | None = None, overrides: dict[str, CatalogEntry] | None = None) -> list[Target]:
        """This installation's running server containers (by label), inspected."""
        overrides = overrides or {}
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={self.owner}", LABEL_SERVER]
        found = []
        # the low-level listing: a container removed while we look is skipped, not an error
        for container in self.client.api.containers(filters={"label": labels}):
            container_labels = container.get("Labels") or {}
            slug = container_labels.get(LABEL_SERVER)
            if not slug or (server is not None and slug != server):
                continue
            try:
                attrs = self.client.api.inspect_container(container["Id"])
            except docker.errors.NotFound:  # removed while we looked
                continue
            try:
                image = self.client.api.inspect_image(attrs["Image"])
            except docker.errors.NotFound:
                image = {}
            entry = self._entry(container_labels.get(LABEL_ENTRY, ""), overrides, slug)
            networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
            ips = sorted({ip for n in networks.values() for ip in (n.get("IPAddress"), n.get("GlobalIPv6Address")) if ip})
            found.append(Target(slug=slug, container=attrs, image=image, entry=entry, ips=ips))
        return sorted(found, key=lambda t: t.slug)

    # -- the run --------------------------------------------------------------------------------
    def run(self, server: str | None = None, *, overrides: dict[str, CatalogEntry] | None = None,
            checks: tuple[str, ...] | None = None, secrets_check: bool = True,
            only: set[str] | None = None, internet: InternetCanary | None = None,
            allowed_control: tuple[str, int] | None = None) -> tuple[list[CheckResult], list[str]]:
        """Verify every running server (or `server`, or the slugs in `only`); returns (results, errors).

        `internet`: a canary the caller already set up (and removes); `allowed_control`: an allowlisted
        name:port that the egress proxies map to that canary (only `--compare` sets one up), tried
        through the proxy as the positive control.
        """
        errors: list[str] = []
        results: list[CheckResult] = []
        targets = [t for t in self.targets(server, overrides) if only is None or t.slug in only]
        if server is not None and not targets:
            errors.append(f"no running server named {server!r} in this installation")
            return results, errors
        everyone = targets if server is None else self.targets(None, overrides)
        with contextlib.ExitStack() as stack:
            host_canary = stack.enter_context(HostCanary())
            if internet is None:
                internet = stack.enter_context(InternetCanary())
            for target in targets:
                self.progress(f"{target.slug}: probing from inside its sandbox")
                results += self._verify_one(target, everyone, host_canary, internet, checks, secrets_check,
                                            allowed_control)
        return results, errors

    def _verify_one(self, target: Target, everyone: list[Target], host_canary: HostCanary, internet: InternetCanary,
                    checks: tuple[str, ...] | None, secrets_check: bool,
                    allowed_control: tuple[str, int] | None = None) -> list[CheckResult]:
        wanted = checks or ("bridge", "host", "pivot", "egress", "hardening", "secrets")
        others = [t for t in everyone if t.container["Id"] != target.container["Id"]]
        gateways = self._bridge_gateways()
        host_targets = sorted(set(host_addresses()) | set(gateways))
        ports = sorted({self.settings.gateway_port, self.settings.control_port, host_canary.port})
        proxy = self._proxy_of(target)
        unlisted = f"unlisted-{secrets.token_hex(4)}.example.test"
        config: dict[str, Any] = {
            "tcp": [["control:loopback-bridge", "127.0.0.1", BRIDGE_PORT]]
            + [[f"host:{ip}:{port}", ip, port] for ip in host_targets for port in ports]
            + [[f"pivot:{o.slug}:{ip}", ip, BRIDGE_PORT] for o in others for ip in o.ips]
            + [["egress:canary", internet.address, internet.port]],
            "http": [[f"pivot:{o.slug}:{ip}", ip, BRIDGE_PORT, "/mcp"] for o in others for ip in o.ips],
            "resolve": [["egress:unlisted", unlisted]],
            "dns": [["egress:canary-dns", internet.address, unlisted]],
            "proxy": [],
            "path_dirs": self._path_dirs(target),
        }
        if proxy is not None:
            config["proxy"] = [["egress:proxy-canary-ip", proxy[0], proxy[1], f"{internet.address}:{internet.port}"],
                               ["egress:proxy-unlisted", proxy[0], proxy[1], f"{unlisted}:443"]]
            if allowed_control is not None:
                config["proxy"].append(["egress:proxy-allowed", proxy[0], proxy[1],
                                        f"{allowed_control[0]}:{allowed_control[1]}"])
        events_before = len(internet.events)
        peers_before = len(host_canary.peers)
        probe: dict[str, Any] | None
        probe_error = None
        try:
            probe = run_probe(self.client, target.container, target.image, config, run_id=self.run_id)
        except ProbeError as exc:
            probe, probe_error = None, str(exc)
        canary_events = internet.events[events_before:]
        host_peers = host_canary.peers[peers_before:]
        control_ok = probe is not None and probe["tcp"].get("control:loopback-bridge") == "connected"
        results = []
        if "bridge" in wanted:
            results.append(self._check_bridge(target, everyone))
        if "host" in wanted:
            results.append(self._check_host(target, probe, probe_error, control_ok, host_targets, ports, host_canary,
                                            host_peers))
        if "pivot" in wanted:
            results.append(self._check_pivot(target, others, probe, probe_error, control_ok))
        if "egress" in wanted:
            results.append(self._check_egress(target, probe, probe_error, control_ok, internet, canary_events, proxy))
        if "hardening" in wanted:
            results.append(self._check_hardening(target, probe, probe_error))
        if "secrets" in wanted and secrets_check:
            results.append(self._check_secrets(target))
        return results

    # -- helpers --------------------------------------------------------------------------------
    def _bridge_gateways(self) -> list[str]:
        gateways = []
        for network in self.client.api.networks(filters={"driver": "bridge"}):
            try:
                details = self.client.api.inspect_network(network["Id"])
            except docker.errors.NotFound:
                continue
            for config in (details.get("IPAM") or {}).get("Config") or []:
                if config.get("Gateway"):
                    gateways.append(config["Gateway"].split("/")[0])
        return gateways

    def _path_dirs(self, target: Target) -> list[str]:
        image_env = (target.image.get("Config") or {}).get("Env") or []
        path = next((e.split("=", 1)[1] for e in image_env if e.startswith("PATH=")), "")
        container_path = target.env().get("PATH", "")
        dirs = [d for d in f"{container_path}:{path}".split(":") if d.startswith("/")]
        return list(dict.fromkeys([*dirs, *STANDARD_PATH]))

    @staticmethod
    def _proxy_of(target: Target) -> tuple[str, int] | None:
        env = target.env()
        raw = env.get("HTTPS_PROXY") or env.get("https_proxy") or env.get("HTTP_PROXY") or env.get("http_proxy")
        if not raw:
            return None
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        if not parts.hostname:
            return None
        return parts.hostname, parts.port or 3128

    def _own_proxy_addresses(self, target: Target) -> list[str]:
        """The addresses of the deployment's own egress proxy: the container its label names (else
        the one labelled as its proxy) of this installation, on the networks of the server."""
        named = ((target.container.get("Config") or {}).get("Labels") or {}).get(LABEL_PROXY_NAME)
        filters = {"label": [f"{LABEL_OWNER}={self.owner}", f"{LABEL_PROXY_FOR}={target.slug}"]}
        if named:
            filters = {"label": [f"{LABEL_OWNER}={self.owner}"], "name": f"^/{named}$"}
        server_networks = set((target.container.get("NetworkSettings") or {}).get("Networks") or {})
        found = []
        for proxy in self.client.api.containers(filters=filters):
            networks = (proxy.get("NetworkSettings") or {}).get("Networks") or {}
            found += [n["IPAddress"] for name, n in networks.items() if name in server_networks and n.get("IPAddress")]
        return sorted(found)

    @staticmethod
    def _inconclusive(findings: Findings, probe: dict[str, Any] | None, probe_error: str | None, control_ok: bool) -> bool:
        if probe is None:
            findings.fail(f"probe did not run: {probe_error}")
            return True
        if not control_ok:
            findings.fail("probe control failed: the server's own bridge on 127.0.0.1:8080 did not answer from "
                          f"inside its namespace ({probe['tcp'].get('control:loopback-bridge')}); results inconclusive")
            return True
        findings.ok("probe control: 127.0.0.1:8080 (the server's bridge) connected from inside its namespace")
        return False

    # -- checks ---------------------------------------------------------------------------------
    def _check_bridge(self, target: Target, everyone: list[Target]) -> CheckResult:
        f = Findings(target.slug, "bridge")
        host = target.container.get("HostConfig") or {}
        mode = host.get("NetworkMode") or ""
        if mode in ("host",) or mode.startswith("container:"):
            f.fail(f"network mode {mode!r}: not a network of its own")
        networks = (target.container.get("NetworkSettings") or {}).get("Networks") or {}
        if not networks:
            f.warn("attached to no network")
        deployed_as = ((target.container.get("Config") or {}).get("Labels") or {}).get(LABEL_PROFILE)
        if target.entry is None:
            f.warn("catalog entry unknown: checked as profile none")
        elif deployed_as and deployed_as != target.profile:
            f.fail(f"deployed with network profile {deployed_as!r} but the catalog entry says {target.profile!r}")
        else:
            f.ok(f"network profile {target.profile}" + (" (container label agrees)" if deployed_as else ""))
        open_allowed = target.profile == NetworkProfile.open.value
        ours = {t.container["Id"] for t in everyone}
        for name, attachment in sorted(networks.items()):
            try:
                network = self.client.api.inspect_network(attachment.get("NetworkID") or name)
            except docker.errors.NotFound:
                f.fail(f"network {name} is attached but cannot be inspected")
                continue
            internal = bool(network.get("Internal"))
            if internal:
                f.ok(f"network {name}: Internal=true")
            elif open_allowed:
                f.ok(f"network {name}: Internal=false (allowed: catalog profile is open)")
            else:
                f.fail(f"network {name}: Internal=false (profile {target.profile} requires internal networks)")
            for cid, member in sorted((network.get("Containers") or {}).items()):
                if cid == target.container["Id"]:
                    continue
                try:
                    labels = self.client.api.inspect_container(cid)["Config"].get("Labels") or {}
                except docker.errors.NotFound:
                    continue
                slug = labels.get(LABEL_SERVER)
                who = member.get("Name") or cid[:12]
                sidecar_of = labels.get(LABEL_PROXY_FOR)
                if (slug == target.slug or sidecar_of == target.slug) and labels.get(LABEL_OWNER) == self.owner:
                    f.ok(f"network {name}: shared with {who}, a sidecar of the same deployment (its egress proxy)")
                elif sidecar_of:
                    f.fail(f"network {name} is shared with the egress proxy of another server: {who} ({sidecar_of})")
                elif slug or cid in ours:
                    f.fail(f"network {name} is shared with another server's container {who} ({slug})")
                else:
                    f.warn(f"network {name} is shared with a container that is not a Stockade server: {who}")
        internal_text = ("non-internal allowed by profile open" if open_allowed
                         else f"internal as required by profile {target.profile}")
        return f.result(f"{len(networks)} network(s), none shared, {internal_text}")

    def _check_host(self, target: Target, probe: dict[str, Any] | None, probe_error: str | None, control_ok: bool,
                    addresses: list[str], ports: list[int], canary: HostCanary, peers: list[str]) -> CheckResult:
        f = Findings(target.slug, "host")
        if self._inconclusive(f, probe, probe_error, control_ok):
            return f.result("")
        assert probe is not None
        host_side = [ip for ip in addresses if ":" not in ip and canary.reachable_from_host(ip)]
        f.ok(f"control: the canary listener on port {canary.port} answers on the host itself at "
             f"{', '.join(host_side) or 'no address'}")
        reached = []
        for ip in addresses:
            for port in ports:
                outcome = probe["tcp"].get(f"host:{ip}:{port}", "not probed")
                if outcome == "connected":
                    reached.append(f"{ip}:{port}")
                    f.fail(f"reached the host at {ip}:{port}")
                else:
                    f.ok(f"{ip}:{port} unreachable ({outcome})")
        if peers and not reached:
            f.fail(f"the host canary saw connections from {sorted(set(peers))} during the probe")
        return f.result(f"{len(addresses)} host address(es) x ports {', '.join(map(str, ports))}: all unreachable")

    def _check_pivot(self, target: Target, others: list[Target], probe: dict[str, Any] | None, probe_error: str | None,
                     control_ok: bool) -> CheckResult:
        f = Findings(target.slug, "pivot")
        if self._inconclusive(f, probe, probe_error, control_ok):
            return f.result("")
        assert probe is not None
        if not others:
            f.ok("no other server is running: nothing to pivot to")
        for other in others:
            for ip in other.ips:
                key = f"pivot:{other.slug}:{ip}"
                tcp, http = probe["tcp"].get(key, "not probed"), probe.get("http", {}).get(key, "not probed")
                if tcp == "connected" or http.startswith("answered"):
                    f.fail(f"reached {other.slug} at {ip}:{BRIDGE_PORT} (tcp {tcp}; POST /mcp {http})")
                else:
                    f.ok(f"{other.slug} at {ip}:{BRIDGE_PORT}: tcp {tcp}; unauthenticated POST /mcp {http}")
        return f.result(f"{len(others)} other server(s): none reachable")

    def _check_egress(self, target: Target, probe: dict[str, Any] | None, probe_error: str | None, control_ok: bool,
                      internet: InternetCanary, events: list[dict[str, Any]], proxy: tuple[str, int] | None) -> CheckResult:
        f = Findings(target.slug, "egress")
        if self._inconclusive(f, probe, probe_error, control_ok):
            return f.result("")
        assert probe is not None
        profile = target.profile
        direct = probe["tcp"].get("egress:canary", "not probed")
        dns = probe["dns"].get("egress:canary-dns", "not probed")
        resolved = probe["resolve"].get("egress:unlisted", "not probed")
        f.ok(f"control: the internet canary {internet.address}:{internet.port} answers from the host: "
             f"{internet.reachable_from_host()}")
        if profile == NetworkProfile.open.value:
            f.warn(f"profile open: egress is unrestricted by design (canary by IP: {direct}; canary DNS: {dns}; "
                   f"unlisted name: {resolved})")
            return f.result("")
        if profile not in (NetworkProfile.none.value, NetworkProfile.egress.value):
            f.warn("catalog entry unknown: checked as profile none")
        for label, outcome, bad in (("canary by raw IP (direct)", direct, direct == "connected"),
                                    ("DNS query to the canary resolver", dns, dns.startswith("answered")),
                                    ("unlisted name resolution", resolved, resolved.startswith("resolved"))):
            (f.fail if bad else f.ok)(f"{label}: {outcome}")
        # the positive control (an allowlisted name the proxy maps to the canary) accounts for one TCP contact
        tried_allowed = "egress:proxy-allowed" in (probe.get("proxy") or {})
        unexplained = events
        if tried_allowed and [e for e in events if "tcp" in e][:1] == [e for e in events if "tcp" in e]:
            unexplained = [e for e in events if "tcp" not in e]
        if unexplained:
            f.fail(f"the internet canary saw {len(unexplained)} contact(s) during the probe: {unexplained[:3]}")
        if profile == NetworkProfile.egress.value:
            if proxy is None:
                f.fail("profile egress but the container has no HTTPS_PROXY: the egress proxy is not configured "
                       "(NOT VERIFIED: proxy enforcement)")
            elif proxy[0] not in (own := self._own_proxy_addresses(target)):
                f.fail(f"HTTPS_PROXY points to {proxy[0]}:{proxy[1]}, which is not this deployment's egress proxy "
                       f"({', '.join(own) or 'none running'}) (NOT VERIFIED: proxy enforcement)")
            else:
                f.ok(f"proxy {proxy[0]}:{proxy[1]} from HTTPS_PROXY: this deployment's own egress proxy")
                for key, what in (("egress:proxy-canary-ip", "CONNECT to the canary by raw IP"),
                                  ("egress:proxy-unlisted", "CONNECT to an unlisted name")):
                    outcome = probe.get("proxy", {}).get(key, "not probed")
                    allowed = outcome.startswith("answered") and " 200" in outcome.split("answered: ", 1)[-1][:16]
                    if outcome.startswith("error") or outcome in ("timeout", "proxy refused"):
                        f.warn(f"{what} through the proxy: the proxy did not answer ({outcome})")
                    else:
                        (f.fail if allowed else f.ok)(f"{what} through the proxy: {outcome}")
                allowed_outcome = probe.get("proxy", {}).get("egress:proxy-allowed")
                if allowed_outcome is not None:
                    let_through = allowed_outcome.startswith("answered") and " 200" in allowed_outcome[:30]
                    (f.ok if let_through else f.warn)(
                        f"positive control: CONNECT to the allowlisted name through the proxy: {allowed_outcome}")
        return f.result(f"profile {profile}: the canary is unreachable and unlisted names do not resolve")

    def _check_hardening(self, target: Target, probe: dict[str, Any] | None, probe_error: str | None) -> CheckResult:
        f = Findings(target.slug, "hardening")
        c, host = target.container, target.container.get("HostConfig") or {}
        user = (c.get("Config") or {}).get("User") or ""
        uid = user.split(":")[0]
        if uid in ("", "0", "root"):
            f.fail(f"runs as root (User={user!r} in docker inspect)")
        else:
            f.ok(f"User={user}")
        if host.get("Privileged"):
            f.fail("privileged container")
        cap_add, cap_drop = host.get("CapAdd") or [], host.get("CapDrop") or []
        if cap_add:
            f.fail(f"capabilities added: {', '.join(cap_add)}")
        if "ALL" not in [x.upper() for x in cap_drop]:
            f.fail(f"CapDrop does not include ALL ({cap_drop})")
        elif not cap_add:
            f.ok("CapDrop=ALL, no CapAdd")
        security_opt = host.get("SecurityOpt") or []
        if not any(o.replace("=", ":") in ("no-new-privileges:true", "no-new-privileges") for o in security_opt):
            f.fail(f"no-new-privileges not set (SecurityOpt={security_opt})")
        if any(o.startswith("seccomp") and "unconfined" in o for o in security_opt):
            f.fail("seccomp=unconfined")
        if host.get("ReadonlyRootfs"):
            f.ok("ReadonlyRootfs=true")
        else:
            f.fail("root filesystem is writable (ReadonlyRootfs=false)")
        if host.get("Memory"):
            f.ok(f"memory limit {host['Memory'] // (1024 * 1024)} MiB")
            if host.get("MemorySwap") not in (host["Memory"], None, 0) and host.get("MemorySwap") != host["Memory"]:
                f.warn(f"swap allowed beyond the memory limit (MemorySwap={host.get('MemorySwap')})")
        else:
            f.fail("no memory limit")
        if host.get("NanoCpus") or host.get("CpuQuota"):
            f.ok(f"cpu limit {host.get('NanoCpus') or host.get('CpuQuota')}")
        else:
            f.fail("no cpu limit")
        if (host.get("PidsLimit") or 0) > 0:
            f.ok(f"pids limit {host['PidsLimit']}")
        else:
            f.fail("no pids limit")
        self._check_image(target, f)
        # from inside
        if probe is None:
            f.fail(f"probe did not run: {probe_error}")
            return f.result("")
        for name, status in (("probe (same security context)", probe.get("self_status") or {}),
                             ("server init (/proc/1)", probe.get("init_status") or {})):
            if "error" in status:
                (f.fail if name.startswith("probe") else f.warn)(f"{name}: status unreadable ({status['error']})")
                continue
            uid_inside = (status.get("Uid") or "?")
            cap_eff = status.get("CapEff", "?")
            cap_bnd = status.get("CapBnd", "?")
            values = (f"Uid={uid_inside} CapEff={cap_eff} NoNewPrivs={status.get('NoNewPrivs')} "
                      f"Seccomp={status.get('Seccomp')} CapBnd={cap_bnd}")
            bad = []
            if uid_inside == "0":
                bad.append("uid 0")
            if cap_eff.strip("0") != "" or cap_eff == "?":
                bad.append("effective capabilities")
            # a non-root process has CapEff 0 even with --cap-add: the bounding set still shows the grant
            if cap_bnd.strip("0") != "" or cap_bnd == "?":
                bad.append("capabilities in the bounding set")
            if status.get("NoNewPrivs") != "1":
                bad.append("NoNewPrivs not 1")
            if status.get("Seccomp") != "2":
                bad.append("seccomp not in filter mode")
            if bad:
                f.fail(f"{name}: {', '.join(bad)} ({values})")
            else:
                f.ok(f"{name}: {values}")
        write = probe.get("rootfs_write", "")
        if write == "written":
            f.fail("the probe could write to / inside the sandbox")
        else:
            f.ok(f"writing to / inside: {write}")
        executables = probe.get("executables") or {}
        count = sum(len(names) for names in executables.values())
        found = sorted({f"{d}/{n}" for d, names in executables.items() for n in names if _forbidden(n)})
        if found:
            f.fail(f"shell or package manager in the image: {', '.join(found)}")
        else:
            f.ok(f"{count} executable(s) on PATH, no shell or package manager")
        return f.result("non-root, no capabilities, no-new-privileges, seccomp, read-only, limits, no shell")

    def _check_image(self, target: Target, f: Findings) -> None:
        """The image: the one the catalog approved (pinned digest), built from the entry's recipe,
        with an SBOM that lists the entry's package."""
        # Docker records the image's id (the sha256 of its configuration, which names every layer by
        # its content digest) when it creates the container: the image that runs, whatever a tag
        # points to now.
        image_id = target.container.get("Image", "")
        entry = target.entry
        if not target.image:
            f.fail(f"the container's image {image_id} is no longer on the engine: it cannot be checked")
            return
        if entry is None:
            f.warn(f"catalog entry unknown: image {image_id} cannot be compared with a pinned digest")
        elif entry.image_digest is None:
            f.warn(f"image not pinned: catalog entry {entry.name!r} has no image_digest (the container runs "
                   f"{image_id}; pin it to make any other image fail this check)")
        elif matches_pin(entry.image_digest, target.image):
            f.ok(f"image pinned by digest: the container runs {entry.image_digest}, as the catalog pins")
        else:
            f.fail(f"image digest mismatch: the container runs {image_id}, the catalog pins {entry.image_digest}")
        labels = (target.image.get("Config") or {}).get("Labels") or {}
        if entry is not None and entry.build is not None:
            built_from = (labels.get(LABEL_PACKAGE), labels.get(LABEL_VERSION))
            if built_from == (entry.build.package, entry.build.version):
                f.ok(f"image built from the catalog's recipe: {entry.build.package} {entry.build.version}")
            else:
                f.fail(f"the image is not built from the catalog's recipe ({entry.build.package} "
                       f"{entry.build.version}): its labels name {built_from[0]} {built_from[1]}")
        self._check_sbom(target, labels, f)

    def _check_sbom(self, target: Target, labels: dict[str, str], f: Findings) -> None:
        path = labels.get(LABEL_SBOM)
        if not path:
            f.fail(f"no SBOM: the image has no {LABEL_SBOM} label naming one")
            return
        try:
            data = self._read_file(target.container["Id"], path)
            components = read_sbom(data)
        except (SbomError, docker.errors.APIError, tarfile.TarError) as exc:
            reason = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
            f.fail(f"SBOM {path} unreadable in the running container: {reason}")
            return
        kinds = Counter(component["purl"][4:].split("/", 1)[0] for component in components)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        entry = target.entry
        if entry is not None and entry.build is not None:
            wanted = package_purl(entry.build.ecosystem, entry.build.package, entry.build.version)
            if not any(c["purl"] == wanted for c in components):
                f.fail(f"SBOM {path} ({summary}) does not list the catalog's package {wanted}")
                return
            f.ok(f"SBOM {path}: CycloneDX, {len(components)} components ({summary}), lists {wanted}")
        else:
            f.ok(f"SBOM {path}: CycloneDX, {len(components)} components ({summary})")

    def _read_file(self, container_id: str, path: str) -> bytes:
        """One file from the running container's own filesystem (the engine's archive API: no
        process is started inside, so it works in images with no shell)."""
        try:
            stream, stat = self.client.api.get_archive(container_id, path)
        except docker.errors.NotFound:
            raise SbomError("no such file") from None
        if int(stat.get("size") or 0) > MAX_SBOM_BYTES:
            raise SbomError(f"larger than {MAX_SBOM_BYTES} bytes")
        buffer = io.BytesIO()
        for chunk in stream:
            buffer.write(chunk)
            if buffer.tell() > MAX_SBOM_BYTES + 1024 * 1024:
                raise SbomError(f"larger than {MAX_SBOM_BYTES} bytes")
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as archive:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            member = next((m for m in archive.getmembers() if m.name == name and m.isfile()), None)
            handle = archive.extractfile(member) if member is not None else None
            if handle is None:
                raise SbomError("not a regular file")
            return handle.read()

    def _check_secrets(self, target: Target) -> CheckResult:
        f = Findings(target.slug, "secrets")
        try:
            values = load_secret_values(self.settings, target.slug)
        except Exception as exc:  # noqa: BLE001 - the store or key may be missing on a host that only runs servers
            f.warn(f"the deployment's values could not be read from the store: {type(exc).__name__}: {exc}")
            return f.result("")
        if values is None:
            f.warn(f"no deployment named {target.slug!r} in the store (deployed outside the control plane?)")
            return f.result("")
        if not values:
            f.ok("the deployment has no secret values")
            return f.result("")
        sources: dict[str, str] = {}
        sources["docker inspect (container)"] = json.dumps(target.container)
        sources["docker inspect (image)"] = json.dumps(target.image)
        try:
            sources["container logs"] = self.client.api.logs(target.container["Id"], stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.APIError as exc:
            f.warn(f"container logs unreadable: {exc.explanation or exc}")
        try:
            sources["audit records"] = audit_text(self.settings)
        except Exception as exc:  # noqa: BLE001 - reported as a result, never raised past the run
            f.warn(f"audit records unreadable: {type(exc).__name__}")
        for name, value in sorted(values.items()):
            hits = [where for where, text in sources.items() if value and value in text]
            if hits:
                f.fail(f"the value of {name} appears in {', '.join(hits)}")
        if not any(s == FAIL for s, _ in f.items):
            f.ok(f"{len(values)} secret value(s) ({', '.join(sorted(values))}) absent from {', '.join(sources)}")
        return f.result(f"{len(values)} secret value(s) absent from inspect, logs and audit")


# -- the store ----------------------------------------------------------------------------------------
def load_secret_values(settings: Settings, slug: str) -> dict[str, str] | None:
    """The decrypted secret values of deployment `slug` (variables marked secret and the bridge token);
    None when the store has no such deployment. The values stay in memory and are never printed."""
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy import select

    from stockade.control.directory import seal_context
    from stockade.secrets import Sealer
    from stockade.secrets.keys import load_master_key
    from stockade.store.database import Database
    from stockade.store.models import Deployment

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    database = Database(url)
    try:
        if not sa_inspect(database.engine).has_table("deployments"):
            return None
        with database.session() as session:
            row = session.scalar(select(Deployment).where(Deployment.slug == slug))
            if row is None:
                return None
            sealer = Sealer(load_master_key(settings, create=False))
            values = {v.name: sealer.open(v.sealed_value, context=seal_context(row.id, v.name)).decode()
                      for v in row.variables if v.secret}
            values["bridge token"] = sealer.open(row.bridge_token, context=seal_context(row.id, "bridge-token")).decode()
            return values
    finally:
        database.close()


def audit_text(settings: Settings) -> str:
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy import select

    from stockade.store.database import Database
    from stockade.store.models import AuditRecord

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return ""
    database = Database(url)
    try:
        if not sa_inspect(database.engine).has_table("audit"):
            return ""
        parts = []
        with database.session() as session:
            for record in session.scalars(select(AuditRecord).order_by(AuditRecord.id)):
                parts.append(json.dumps([record.member, record.token_id, record.server, record.method, record.tool,
                                         record.outcome, record.error_code, record.request_id]))
        return "\n".join(parts)
    finally:
        database.close()


# -- whole runs -----------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_latest(settings: Settings, document: dict[str, Any], name: str = "latest.json") -> Path:
    directory = settings.data_dir / "verify"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f".latest.{secrets.token_hex(4)}.json"
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(path)
    return path


def verify_leftovers(client: docker.DockerClient) -> list[str]:
    """Anything a verify run left behind: probe containers, canary namespaces and links."""
    from stockade.verify.canaries import leftovers

    found = [name.lstrip("/") for c in client.api.containers(all=True, filters={"label": LABEL_VERIFY})
             for name in c.get("Names") or []]
    return found + leftovers()


def run_verify(settings: Settings, *, server: str | None = None, client: docker.DockerClient | None = None,
               progress: Progress | None = None, overrides: dict[str, CatalogEntry] | None = None,
               compare: str | None = None, write: bool = True) -> dict[str, Any]:
    """One verification run; returns the report document and writes `<data_dir>/verify/latest.json`.

    This is the function behind `stockade verify` and the dashboard's re-run button.
    """
    verifier = Verifier(settings, client=client, progress=progress)
    errors: list[str] = []
    results: list[CheckResult] = []
    comparison = None
    try:
        if compare is not None:
            from stockade.verify.compare import run_compare

            comparison = run_compare(verifier, compare)
        else:
            results, errors = verifier.run(server, overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - reported as a result, never raised past the run
        errors.append(f"verification aborted: {type(exc).__name__}: {exc}")
    document = report_document(run_id=verifier.run_id, generated_at=now_iso(), results=results, errors=errors,
                               compare=comparison)
    if write:
        # a --compare run (temporary deployments) must not replace the dashboard's view of the real servers
        document["path"] = str(write_latest(settings, document, "compare-latest.json" if compare else "latest.json"))
    return document


__all__ = ["FAIL", "PASS", "WARN", "Verifier", "load_secret_values", "run_verify", "verify_leftovers"]
