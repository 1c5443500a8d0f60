"""The container a server runs in, as pure data: every hardening decision in one reviewable place.

`container_spec` touches nothing (no engine, no filesystem): the runtime creates the mount
directories and hands `ContainerSpec.create_kwargs()` to `docker.containers.create`.

What a server container gets, and why:
  * no capabilities (`cap_drop ALL`), `no-new-privileges`, uid/gid 65534, the engine's default
    seccomp profile;
  * a read-only root filesystem; only /tmp is writable (tmpfs, noexec, nosuid, 64 MiB);
  * memory == memory+swap (no swap), CPU and PID limits from the entry's resource profile; the
    CPU limit holds from the moment the bridge is ready: until then the container may use every CPU
    of the engine (`startup_nano_cpus`, see there), and the runtime lowers it to the profile's
    `nano_cpus` (a failure to lower it fails the deploy);
  * exactly one network, the instance's own (no published ports; each replica has its own): internal for the `none` and
    `egress` profiles, with outbound NAT for `open` (egress.py); the runtime keeps it away from the
    host's own addresses in every profile;
  * an environment holding only the egress proxy's URL (profile `egress`), and resolvers chosen by
    the profile (`dns`);
  * NO secrets and NO bridge token in the environment, labels or command: both arrive as one JSON
    line on stdin (`stdin_open`), which `docker inspect` and `docker logs` never show;
  * never the engine's socket (nor a directory holding it) as a mount;
  * no restart policy: the bridge restarts its own server process; a dead bridge is the control
    plane's business (and is visible in `status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stockade.catalog import CatalogEntry
from stockade.errors import DeploymentError

LABEL_MANAGED = "io.stockade.managed"
LABEL_SERVER = "io.stockade.server"
LABEL_DEPLOYMENT = "io.stockade.deployment"
LABEL_ENTRY = "io.stockade.entry"
# Which Stockade installation (data directory) a container belongs to: several installations
# (tests, developers) may share one engine, and none may adopt or remove another's servers.
LABEL_OWNER = "io.stockade.owner"
# Which instance of a deployment (a replica; old and new side by side during a rotation).
LABEL_REPLICA = "io.stockade.replica"

RUNTIME_USER = "65534:65534"
BRIDGE_PORT = 8080
TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
# Engine sockets that must never reach a container (a socket is root on the host).
ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/podman/podman.sock",
    "/run/podman/podman.sock",
)
# Host directories that hold (or are) the engine's state or sockets.
FORBIDDEN_HOST_PATHS = ("/", "/var", "/run", "/var/run", "/var/lib/docker", "/var/lib/containers",
                        "/run/containerd", "/run/podman", "/proc", "/sys", "/dev", "/etc", "/boot")


def owner_id(data_dir: Path) -> str:
    """A short stable id of one installation (its data directory)."""
    import hashlib

    return hashlib.sha256(str(Path(data_dir).expanduser().absolute()).encode()).hexdigest()[:8]


def unit_name(slug: str, replica: int = 0) -> str:
    """The name of one instance of a deployment: its container, network, proxy and firewall key.

    Instance 0 keeps the deployment's own name; others add ".<n>" ('.' never occurs in a slug, so
    no instance of one deployment is named like another deployment).
    """
    if replica < 0:
        raise ValueError("replica numbers are never negative")
    return slug if replica == 0 else f"{slug}.{replica}"


def container_name(slug: str, owner: str | None = None) -> str:
    return f"stockade-{owner}-{slug}" if owner else f"stockade-{slug}"


def network_name(slug: str, owner: str | None = None) -> str:
    return f"stockade-{owner}-{slug}" if owner else f"stockade-{slug}"


@dataclass(frozen=True)
class MountSpec:
    source: str
    target: str
    read_only: bool

    def to_docker(self) -> Any:
        from docker.types import Mount

        return Mount(target=self.target, source=self.source, type="bind", read_only=self.read_only,
                     propagation="rprivate")


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    name: str
    hostname: str
    command: tuple[str, ...]
    user: str
    labels: Mapping[str, str]
    environment: Mapping[str, str]
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    read_only: bool
    tmpfs: Mapping[str, str]
    mem_limit: int
    memswap_limit: int
    nano_cpus: int  # the profile's limit: what the container runs under once ready
    startup_nano_cpus: int  # what it is created with (>= nano_cpus); see `startup_nano_cpus`
    pids_limit: int
    network: str
    mounts: tuple[MountSpec, ...]
    stdin_open: bool = True
    tty: bool = False
    init: bool = True
    restart_policy: Mapping[str, Any] = field(default_factory=lambda: {"Name": "no"})
    log_config: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}}
    )
    ipc_mode: str = "private"
    ports: Mapping[str, Any] = field(default_factory=dict)
    # Resolvers handed to Docker's embedded DNS (egress.BLACKHOLE_DNS for `none`/`egress`: no upstream).
    dns: tuple[str, ...] = ()

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `docker.DockerClient.containers.create`."""
        from docker.types import LogConfig

        return {
            "image": self.image,
            "name": self.name,
            "hostname": self.hostname,
            "command": list(self.command),
            "user": self.user,
            "labels": dict(self.labels),
            "environment": dict(self.environment),
            "cap_drop": list(self.cap_drop),
            "security_opt": list(self.security_opt),
            "read_only": self.read_only,
            "tmpfs": dict(self.tmpfs),
            "mem_limit": self.mem_limit,
            "memswap_limit": self.memswap_limit,
            "nano_cpus": self.startup_nano_cpus,
            "pids_limit": self.pids_limit,
            "network": self.network,
            "mounts": [m.to_docker() for m in self.mounts],
            "stdin_open": self.stdin_open,
            "tty": self.tty,
            "init": self.init,
            "restart_policy": dict(self.restart_policy),
            "log_config": LogConfig(type=self.log_config["type"], config=dict(self.log_config["config"])),
            "ipc_mode": self.ipc_mode,
            "detach": True,
            # never copy proxy settings from ~/.docker/config.json into the container's environment
            "use_config_proxy": False,
            **({"dns": list(self.dns)} if self.dns else {}),
        }


def _check_mount_source(host: Path) -> None:
    text = host.as_posix().rstrip("/") or "/"
    for socket in ENGINE_SOCKETS:
        if text == socket or socket.startswith(text + "/") or text == "/":
            raise DeploymentError(f"mount source {text} would expose the container engine's socket ({socket})")
    if text in FORBIDDEN_HOST_PATHS:
        raise DeploymentError(f"mount source {text} is a system directory and cannot be mounted into a server")
    if "docker.sock" in host.name or host.name.endswith(".sock"):
        raise DeploymentError(f"mount source {text} looks like a socket; sockets are never mounted into servers")


def resolve_mounts(entry: CatalogEntry, data_dir: Path) -> tuple[MountSpec, ...]:
    mounts = []
    for mount in entry.mounts:
        raw = mount.resolved_host_path(data_dir)
        if not raw.is_absolute():
            raise DeploymentError(f"mount {mount.host_path!r} of {entry.name!r} does not resolve to an absolute path")
        # normalise '..' lexically (pure: no filesystem access, symlinks are checked at deploy time)
        host = Path(PurePosixPath("/").joinpath(*[p for p in _normalise(raw.parts[1:])]))
        _check_mount_source(host)
        target = str(PurePosixPath(mount.container_path))
        if target in ("/", "/tmp", "/opt", "/opt/stockade", "/usr", "/etc", "/proc", "/sys", "/dev") or \
                target.startswith("/opt/stockade/"):
            raise DeploymentError(f"mount target {target} of {entry.name!r} would shadow the image")
        mounts.append(MountSpec(source=str(host), target=target, read_only=mount.read_only))
    return tuple(mounts)


def _normalise(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def bridge_command(entry: CatalogEntry, *, slug: str, bridge_port: int = BRIDGE_PORT) -> tuple[str, ...]:
    """Arguments for the image's entrypoint (`python3 -m stockade.bridge`)."""
    required = [arg for variable in entry.required_env for arg in ("--required-env", variable.name)]
    return ("--host", "0.0.0.0", "--port", str(bridge_port), "--bootstrap-stdin", "--name", slug,
            *required, "--", *entry.command)


def cpu_nanos(cpus: float) -> int:
    return int(cpus * 1_000_000_000)


def startup_nano_cpus(limit_cpus: float, engine_cpus: int | None) -> int:
    """The CPU allowance a server starts with: every CPU of the engine, never below the profile.

    Starting a server is a burst of CPU paid once while a deploy waits: the bridge's and the
    server's interpreters import their packages (mcp-server-time: 1.0-1.3 CPU seconds, about 2 s
    under the small profile's 0.5 CPU). Unthrottled, the two processes also run side by side on
    every core. The limit is there to share the machine between servers that RUN, so the runtime
    applies it from readiness on. The window is bounded: the deploy waits for readiness at most its
    ready timeout, then removes the container. `engine_cpus` None (not known): no allowance.
    """
    limit = cpu_nanos(limit_cpus)
    return limit if engine_cpus is None else max(limit, cpu_nanos(engine_cpus))


def container_spec(
    entry: CatalogEntry,
    *,
    slug: str,
    deployment_id: str,
    image: str,
    network_name: str,
    data_dir: Path,
    bridge_port: int = BRIDGE_PORT,
    owner: str | None = None,
    environment: Mapping[str, str] | None = None,
    dns: tuple[str, ...] = (),
    extra_labels: Mapping[str, str] | None = None,
    replica: int = 0,
    engine_cpus: int | None = None,
) -> ContainerSpec:
    """`environment` holds only non-secret runtime settings (the egress proxy's URL); `dns` and
    `extra_labels` come from the network profile (egress.py). `replica` numbers the instance: each
    is its own container (named by `unit_name`), the same hardening for all. `engine_cpus` (the
    engine's CPU count) sizes the start-up allowance."""
    limits = entry.resources.limits
    memory = limits.memory_mb * 1024 * 1024
    return ContainerSpec(
        image=image,
        name=container_name(unit_name(slug, replica), owner),
        hostname=slug,
        command=bridge_command(entry, slug=slug, bridge_port=bridge_port),
        user=RUNTIME_USER,
        labels={
            LABEL_MANAGED: "true",
            LABEL_SERVER: slug,
            LABEL_DEPLOYMENT: deployment_id,
            LABEL_ENTRY: entry.name,
            LABEL_REPLICA: str(replica),
            **({LABEL_OWNER: owner} if owner else {}),
            **dict(extra_labels or {}),
        },
        environment=dict(environment or {}),
        cap_drop=("ALL",),
        security_opt=("no-new-privileges:true",),
        read_only=True,
        tmpfs=dict(TMPFS),
        mem_limit=memory,
        memswap_limit=memory,
        nano_cpus=cpu_nanos(limits.cpus),
        startup_nano_cpus=startup_nano_cpus(limits.cpus, engine_cpus),
        pids_limit=limits.pids,
        network=network_name,
        mounts=resolve_mounts(entry, data_dir),
        dns=tuple(dns),
    )
