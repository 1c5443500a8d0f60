"""Finding the container engine: connect to it, or (on Debian as root) install and start it.

The engine is whatever answers the Docker Engine API: Docker itself, or Podman's Docker-compatible
service (`podman system service`; point `STOCKADE_DOCKER_HOST`/`DOCKER_HOST` at its socket, e.g.
`unix:///run/podman/podman.sock`). Nothing here is Docker-only except the optional installer.

Order of precedence for the engine address: `settings.docker_host`, then `DOCKER_HOST`, then the
default socket `/var/run/docker.sock`. Only the default local socket is ever installed/started by
us: a configured remote or alternative address that does not answer is reported, never "fixed".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from stockade.config import Settings
from stockade.errors import EngineError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
ENGINE_START_TIMEOUT = 60.0

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def engine_url(settings: Settings) -> tuple[str, bool]:
    """The engine address, and whether it is the default one (which we may install and start)."""
    if settings.docker_host:
        return settings.docker_host, False
    env = os.environ.get("DOCKER_HOST")
    if env:
        return env, False
    return DEFAULT_SOCKET, True


def _client(url: str, timeout: int = 120) -> docker.DockerClient:
    # version="auto" negotiates down to the daemon's API (Debian's 20.10 speaks 1.41).
    # TLS settings (DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) only come from the environment.
    tls: Any = False
    if os.environ.get("DOCKER_TLS_VERIFY") and url == os.environ.get("DOCKER_HOST"):
        from docker.utils import kwargs_from_env

        tls = kwargs_from_env().get("tls", False)
    return docker.DockerClient(base_url=url, version="auto", timeout=timeout, tls=tls)


def _try_connect(url: str) -> docker.DockerClient | None:
    try:
        client = _client(url)
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - any failure means "not answering"; the caller reports
        return None


def probe_engine(settings: Settings) -> docker.DockerClient | None:
    """The engine if one answers now; never installs or starts anything (for `stockade doctor`)."""
    return _try_connect(engine_url(settings)[0])


def _is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _run(cmd: list[str], *, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def apt_install(packages: list[str], progress: Progress = _noop) -> None:
    """`apt-get install -y PACKAGES`, running `apt-get update` first only when the lists are missing/stale."""
    progress(f"installing Debian packages: {' '.join(packages)}")
    result = _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])
    if result.returncode != 0:
        progress("apt-get install failed; running apt-get update and retrying")
        update = _run(["apt-get", "update", "-q"])
        if update.returncode != 0:
            raise EngineError(
                f"apt-get update failed: {_tail(update.stderr or update.stdout)}",
                hint="check the machine's apt sources (/etc/apt/sources.list.d)",
            )
        result = _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])
        if result.returncode != 0:
            raise EngineError(
                f"apt-get install {' '.join(packages)} failed: {_tail(result.stderr or result.stdout)}",
                hint=f"install {' '.join(packages)} by hand",
            )


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _dockerd_log_path(settings: Settings) -> Path:
    for directory in (settings.data_dir, Path("/var/log")):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / "dockerd.log"
            path.touch(exist_ok=True)
            return path
        except OSError:
            continue
    raise EngineError("no writable place for dockerd.log", hint="check settings.data_dir permissions")


def _start_dockerd(settings: Settings, progress: Progress) -> Path:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError("dockerd is not installed", hint="apt-get install docker.io")
    log_path = _dockerd_log_path(settings)
    progress(f"starting dockerd in the background (log: {log_path})")
    with log_path.open("ab") as log:
        # A daemon of our own: new session, so it outlives this process and its signals.
        subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    return log_path


def _wait_for_engine(url: str, log_path: Path, timeout: float = ENGINE_START_TIMEOUT) -> docker.DockerClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = _try_connect(url)
        if client is not None:
            try:
                client.info()
                return client
            except Exception:  # noqa: BLE001
                client.close()
        time.sleep(0.5)
    log_tail = ""
    try:
        log_tail = _tail(log_path.read_text(errors="replace"), 10)
    except OSError:
        pass
    raise EngineError(f"dockerd did not answer within {timeout:.0f} s; last log lines: {log_tail}",
                      hint=f"see {log_path}")


def connect_engine(settings: Settings, *, progress: Progress | None = None) -> docker.DockerClient:
    """A client for a running engine; on Debian as root (and `install_engine`), install/start Docker."""
    say = progress or _noop
    url, is_default = engine_url(settings)
    client = _try_connect(url)
    if client is not None:
        return client
    if not is_default:
        raise EngineError(
            f"no container engine answers at {url}",
            hint="start Docker (or `podman system service`) there, or unset STOCKADE_DOCKER_HOST/DOCKER_HOST",
        )
    if not (_is_root() and _is_debian() and settings.install_engine):
        why = []
        if not settings.install_engine:
            why.append("install_engine is off")
        if not _is_root():
            why.append("not running as root")
        if not _is_debian():
            why.append("not a Debian/apt system")
        raise EngineError(
            f"no container engine answers at {url} ({', '.join(why)}, so none is installed automatically)",
            hint="install and start Docker (Debian: apt-get install docker.io; dockerd &) or Podman "
            "(podman system service) and set STOCKADE_DOCKER_HOST to its socket",
        )
    say(f"no container engine answers at {url}")
    needed = [pkg for pkg, binary in (("docker.io", "dockerd"), ("iptables", "iptables")) if shutil.which(binary) is None]
    if needed:
        apt_install(needed, say)
    log_path = _start_dockerd(settings, say)
    client = _wait_for_engine(url, log_path)
    say("container engine is up")
    return client


def engine_summary(client: docker.DockerClient) -> dict[str, str]:
    """A few facts about the engine for `stockade engine`."""
    info = client.info()
    version = client.version()
    security = []
    for option in info.get("SecurityOptions") or []:
        # "name=seccomp,profile=default" -> "seccomp (profile=default)"
        parts = dict(p.split("=", 1) for p in option.split(",") if "=" in p)
        name = parts.pop("name", option)
        security.append(f"{name} ({', '.join(f'{k}={v}' for k, v in parts.items())})" if parts else name)
    product = "Podman" if any("podman" in str(c.get("Name", "")).lower() for c in version.get("Components") or []) else "Docker"
    return {
        "engine": product,
        "version": str(version.get("Version", "?")),
        "api version": str(version.get("ApiVersion", "?")),
        "os/arch": f"{version.get('Os', '?')}/{version.get('Arch', '?')}",
        "storage driver": str(info.get("Driver", "?")),
        "cgroup": f"v{info.get('CgroupVersion', '?')} ({info.get('CgroupDriver', '?')} driver)",
        "security options": ", ".join(security) or "none",
        "containers running": str(info.get("ContainersRunning", 0)),
        "images": str(info.get("Images", 0)),
    }
