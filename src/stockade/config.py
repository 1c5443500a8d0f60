"""The one configuration model: `STOCKADE_*` environment variables over an optional TOML file.

Precedence (highest first): keyword arguments, environment, the TOML file named by
`STOCKADE_CONFIG_FILE`, then the defaults below. Defaults are the safe ones: loopback binds,
never pull images.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import Field, IPvAnyAddress, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class PullPolicy(str, Enum):
    """When the engine may pull an image from a registry. Stockade builds its images locally."""

    never = "never"
    if_missing = "if-missing"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _default_data_dir() -> Path:
    return Path("/var/lib/stockade") if _is_root() else Path.home() / ".local/share/stockade"


def _default_cache_dir() -> Path:
    return Path("/var/cache/stockade") if _is_root() else Path.home() / ".cache/stockade"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKADE_", extra="forbid", validate_default=True)

    data_dir: Path = Field(default_factory=_default_data_dir, description="Database, keys, logs.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Downloaded packages and the base root filesystem; shared between data dirs.",
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite in data_dir if unset.")

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8700, ge=0, le=65535)
    control_host: str = "127.0.0.1"
    control_port: int = Field(default=8701, ge=0, le=65535)
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Sustained calls per member per minute.")
    rate_limit_burst: int = Field(default=60, ge=1, description="Calls a member may make at once.")
    oidc: dict[str, Any] | None = Field(
        default=None,
        description="OIDC issuer for JWT bearer tokens (JSON in STOCKADE_OIDC): issuer, role_map, and optionally "
        "audience (default: the gateway URL), algorithms, member_claim, role_claim, required_scopes, clock_skew_seconds.",
    )
    oidc_client_id: str | None = Field(
        default=None,
        description="Dashboard sign-in through the `oidc` issuer (authorization code + PKCE): this client's id, "
        "which ID tokens must name in `aud`. Unset: the dashboard offers token sign-in only.",
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="The dashboard client's secret (a confidential client); unset for a public client."
    )
    oidc_redirect_uri: str | None = Field(
        default=None,
        description="The redirect URI registered at the issuer; default: the control URL + /ui/auth/callback.",
    )
    oidc_scopes: str = Field(
        default="openid email profile",
        description="Scopes the dashboard asks for (space-separated, with openid); add the one that releases the "
        "role claim if the issuer needs it (e.g. groups).",
    )
    audit_retention_days: int | None = Field(
        default=365, ge=1, description="Audit records older than this are pruned hourly; unset keeps them all."
    )
    public_url: str | None = Field(default=None, description="The gateway URL clients use, if not host:port.")

    master_key: SecretStr | None = Field(default=None, description="Base64 master key (else the key file).")
    master_key_file: Path | None = Field(default=None, description="0600 key file; data_dir/master.key if unset.")
    master_key_keyring: bool = Field(
        default=False,
        description="Keep the master key in the OS keyring (Secret Service, macOS Keychain, Windows Credential "
        "Locker) instead of the key file.",
    )

    docker_host: str | None = Field(default=None, description="Engine URL; else DOCKER_HOST, else the socket.")
    pull_policy: PullPolicy = PullPolicy.never
    install_engine: bool = Field(default=True, description="On Debian as root, install docker.io if absent.")
    debian_mirror: str | None = Field(default=None, description="Mirror for the base image; else apt's own.")
    server_network_pool: str = Field(
        default="10.213.0.0/16",
        description="IPv4 pool for the per-server internal networks (a /28 each, avoiding routes in use).",
    )
    egress_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Extra name -> IP entries for the egress proxies' resolver (JSON in STOCKADE_EGRESS_HOSTS), "
        "added to each proxy's /etc/hosts; an allowlisted name still may not resolve to a private or host address.",
    )
    egress_dns: list[IPvAnyAddress] = Field(
        default_factory=list,
        description="DNS servers the egress proxies resolve allowlisted names with (JSON list in STOCKADE_EGRESS_DNS); "
        "empty: the engine's default (the host's resolvers). Unlisted names are never looked up.",
    )

    k8s_servers_namespace: str | None = Field(
        default=None,
        description="On Kubernetes: the namespace of the server Services the gateway discovers servers through "
        "(instead of the database's Docker deployments).",
    )
    k8s_kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig for discovery; else in-cluster credentials, KUBECONFIG, ~/.kube/config."
    )
    k8s_egress_proxy_url: str = Field(
        default="http://stockade-egress-proxy:3128", description="The egress proxy as servers on Kubernetes reach it."
    )

    token: SecretStr | None = Field(default=None, description="Admin token the CLI presents to the management API.")

    catalog_file: Path | None = Field(default=None, description="Catalog YAML; the bundled one if unset.")
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("STOCKADE_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'stockade.db'}"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def gateway_url(self) -> str:
        return self.public_url or f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def control_url(self) -> str:
        return f"http://{self.control_host}:{self.control_port}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning pydantic's validation error into a `ConfigError` that names fields."""
    from pydantic import ValidationError

    from stockade.errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"invalid settings: {problems}",
            hint="check STOCKADE_* environment variables and the file in STOCKADE_CONFIG_FILE",
        ) from None
