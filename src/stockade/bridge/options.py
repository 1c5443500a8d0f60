"""The bridge's command line and bootstrap (standard library only).

    python3 -m stockade.bridge [--host H] [--port P]
        (--bootstrap-stdin | --bootstrap-file PATH | --token-env VAR | --no-auth-loopback)
        [--ready-timeout S] [--name NAME] [--required-env NAME ...] -- COMMAND [ARGS...]

Bootstrap JSON (one line on stdin, or a file): {"token": "...", "env": {"NAME": "value"}}. The token
guards every endpoint but /health; `env` goes to the server process only, never to logs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stockade.errors import ConfigError

MAX_BOOTSTRAP_BYTES = 1024 * 1024
DEFAULT_MAX_BODY = 4 * 1024 * 1024

# What the server process inherits from the bridge's own environment (nothing secret): the image
# sets these, and the Kubernetes renderer points egress at its allowlisting proxy through the
# *_PROXY variables. Everything else comes from the bootstrap `env` only.
INHERITED_ENV = (
    "PYTHONPATH", "NODE_PATH", "PYTHONUTF8", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "NODE_ENV", "TZ",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Options:
    command: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    server_env: Mapping[str, str] = field(default_factory=dict)
    secret_values: tuple[str, ...] = ()
    name: str = "mcp-server"
    required_env: tuple[str, ...] = ()
    ready_timeout: float = 60.0
    request_timeout: float = 600.0
    drain_timeout: float = 20.0
    stop_timeout: float = 5.0
    max_body: int = DEFAULT_MAX_BODY
    allowed_origins: tuple[str, ...] = ()
    max_sessions: int = 1000
    session_idle_timeout: float = 3600.0
    max_restarts: int = 5
    restart_window: float = 300.0
    log_level: str = "info"

    @property
    def missing_env(self) -> list[str]:
        return [name for name in self.required_env if not self.server_env.get(name)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_environment(own: Mapping[str, str], bootstrap_env: Mapping[str, str]) -> dict[str, str]:
    """The clean environment of the server process: PATH, HOME, LANG, a few inherited runtime
    variables (`INHERITED_ENV`), then the bootstrap variables (which win)."""
    env = {"PATH": own.get("PATH") or DEFAULT_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}
    for name in INHERITED_ENV:
        if own.get(name):
            env[name] = own[name]
    env.update(bootstrap_env)
    return env


def parse_bootstrap(raw: bytes | str) -> tuple[str, dict[str, str]]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ConfigError("the bootstrap is not JSON", hint='send one line: {"token": "...", "env": {...}}') from exc
    if not isinstance(document, dict):
        raise ConfigError("the bootstrap must be a JSON object")
    token = document.get("token")
    if not isinstance(token, str) or not token:
        raise ConfigError("the bootstrap has no token", hint='give "token" as a non-empty string')
    env = document.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError('the bootstrap "env" must map names to string values')
    for name in env:
        if not name or "=" in name or "\0" in name:
            raise ConfigError(f"the bootstrap names an invalid environment variable {name!r}")
    return token, dict(env)


def read_bootstrap_line(fd: int, timeout: float) -> bytes:
    """Exactly one line from `fd` (bounded in size and time); never reads past the newline."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConfigError(f"no bootstrap line on stdin within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            if data.strip():
                return bytes(data)
            raise ConfigError("stdin closed before the bootstrap line arrived")
        if chunk == b"\n":
            if data.strip():
                return bytes(data)
            continue
        data += chunk
        if len(data) > MAX_BOOTSTRAP_BYTES:
            raise ConfigError("the bootstrap line is too long")


def _detach_stdin() -> None:
    """After the bootstrap, stdin is of no further use: point fd 0 at /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    except OSError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m stockade.bridge",
        description="Run a stdio MCP server and serve it over MCP Streamable HTTP (and a small REST API).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    auth = parser.add_mutually_exclusive_group(required=True)
    auth.add_argument("--bootstrap-stdin", action="store_true", help="read one JSON line {token, env} from stdin")
    auth.add_argument("--bootstrap-file", metavar="PATH", help="read the bootstrap JSON {token, env} from a file")
    auth.add_argument("--token-env", metavar="VAR", help="take the bearer token from this environment variable")
    auth.add_argument("--no-auth-loopback", action="store_true", help="no token; only with a loopback --host")
    parser.add_argument("--ready-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--request-timeout", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--drain-timeout", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--bootstrap-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument("--name", default="mcp-server")
    parser.add_argument("--required-env", action="append", default=[], metavar="NAME")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN")
    parser.add_argument("--max-sessions", type=int, default=1000)
    parser.add_argument("--max-restarts", type=int, default=5, help="exits within --restart-window before giving up")
    parser.add_argument("--restart-window", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None, stdin_fd: int = 0) -> Options:
    environ = os.environ if environ is None else environ
    argv = list(argv)
    if "--" not in argv:
        raise ConfigError("no server command", hint="put it after `--`: python3 -m stockade.bridge ... -- COMMAND ARGS")
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
    if not command:
        raise ConfigError("no server command after `--`")
    parser = build_parser()
    args = parser.parse_args(own)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is out of range")

    token: str | None
    bootstrap_env: dict[str, str] = {}
    if args.bootstrap_stdin:
        token, bootstrap_env = parse_bootstrap(read_bootstrap_line(stdin_fd, args.bootstrap_timeout))
        if stdin_fd == 0:
            _detach_stdin()
    elif args.bootstrap_file:
        try:
            with open(args.bootstrap_file, "rb") as handle:
                raw = handle.read(MAX_BOOTSTRAP_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the bootstrap file {args.bootstrap_file}: {exc.strerror}") from exc
        if len(raw) > MAX_BOOTSTRAP_BYTES:
            raise ConfigError("the bootstrap file is too large")
        token, bootstrap_env = parse_bootstrap(raw)
    elif args.token_env:
        token = environ.get(args.token_env) or None
        if token is None:
            raise ConfigError(f"--token-env {args.token_env}: the variable is not set or empty")
    else:
        if not is_loopback(args.host):
            raise ConfigError(
                f"--no-auth-loopback refuses to listen on {args.host}: without a token the bridge only binds a "
                "loopback address",
                hint="use --host 127.0.0.1, or give a token with --bootstrap-stdin or --token-env",
            )
        token = None

    secrets = tuple(sorted({v for v in bootstrap_env.values() if len(v) >= 4} | ({token} if token else set()),
                           key=len, reverse=True))
    return Options(
        command=tuple(command),
        host=args.host,
        port=args.port,
        token=token,
        server_env=server_environment(environ, bootstrap_env),
        secret_values=secrets,
        name=args.name,
        required_env=tuple(args.required_env),
        ready_timeout=args.ready_timeout,
        request_timeout=args.request_timeout,
        drain_timeout=args.drain_timeout,
        max_body=args.max_body,
        allowed_origins=tuple(o.rstrip("/") for o in args.allow_origin),
        max_sessions=args.max_sessions,
        max_restarts=args.max_restarts,
        restart_window=args.restart_window,
        log_level=args.log_level,
    )


def main_error(message: str) -> None:
    print(f"stockade.bridge: {message}", file=sys.stderr, flush=True)
