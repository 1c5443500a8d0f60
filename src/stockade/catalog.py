"""The catalog of approved MCP servers: a versioned YAML document, validated on load.

This is a domain model shared by the orchestrator (what to build and run) and the control plane
(what may be deployed), so it lives below both and imports neither.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stockade.errors import ConfigError, ValidationFailed

CATALOG_FORMAT_VERSION = 1
SLUG_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
MAX_REPLICAS = 16  # instances of one deployment (each is a container, a network and a /28)


class ResourceProfile(str, Enum):
    small = "small"
    medium = "medium"
    large = "large"

    @property
    def limits(self) -> ResourceLimits:
        return _RESOURCE_LIMITS[self]


class ResourceLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    cpus: float
    memory_mb: int
    pids: int


_RESOURCE_LIMITS = {
    ResourceProfile.small: ResourceLimits(cpus=0.5, memory_mb=192, pids=64),
    ResourceProfile.medium: ResourceLimits(cpus=1.0, memory_mb=512, pids=128),
    ResourceProfile.large: ResourceLimits(cpus=2.0, memory_mb=1024, pids=256),
}


class NetworkProfile(str, Enum):
    """`none`: nothing beyond the gateway. `egress`: an allowlist through the proxy. `open`: anything."""

    none = "none"
    egress = "egress"
    open = "open"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variable(_Strict):
    name: Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
    description: str = ""
    secret: bool = False


class Mount(_Strict):
    """A host directory made visible to the server. `{data_dir}` in host_path is expanded."""

    host_path: str
    container_path: Annotated[str, Field(pattern=r"^/")]
    read_only: bool = True

    def resolved_host_path(self, data_dir: Path) -> Path:
        return Path(self.host_path.replace("{data_dir}", str(data_dir))).expanduser()


class Build(_Strict):
    """A recipe: one package, pinned, downloaded on the host and installed offline in the image."""

    pypi: str | None = Field(default=None, description="requirement pinned with ==, e.g. mcp-server-time==1.0")
    npm: str | None = Field(default=None, description="package pinned with @version, e.g. @scope/pkg@1.2.3")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.pypi is None) == (self.npm is None):
            raise ValueError("give exactly one of 'pypi' or 'npm'")
        if self.pypi is not None and not re.fullmatch(r"[A-Za-z0-9._-]+(\[[A-Za-z0-9,._-]+\])?==[^=\s]+", self.pypi):
            raise ValueError(f"pypi {self.pypi!r} must be pinned as NAME==VERSION")
        if self.npm is not None and not re.fullmatch(r"(@[a-z0-9._-]+/)?[a-z0-9._-]+@[0-9][^@\s]*", self.npm):
            raise ValueError(f"npm {self.npm!r} must be pinned as NAME@VERSION")
        return self

    @property
    def ecosystem(self) -> str:
        return "pypi" if self.pypi else "npm"

    @property
    def package(self) -> str:
        spec = self.pypi or self.npm or ""
        return spec.split("==")[0] if self.pypi else spec.rsplit("@", 1)[0]

    @property
    def version(self) -> str:
        spec = self.pypi or self.npm or ""
        return spec.split("==")[1] if self.pypi else spec.rsplit("@", 1)[1]


class CatalogEntry(_Strict):
    name: Annotated[str, Field(pattern=SLUG_PATTERN)]
    description: str = ""
    image: str | None = Field(default=None, description="a local image to run as is")
    build: Build | None = None
    command: Annotated[list[str], Field(min_length=1)]
    required_env: list[Variable] = []
    optional_env: list[Variable] = []
    mounts: list[Mount] = []
    resources: ResourceProfile = ResourceProfile.small
    network: NetworkProfile = NetworkProfile.none
    egress: list[Annotated[str, Field(pattern=r"^(\*\.)?[A-Za-z0-9.-]+:[0-9]{1,5}$")]] = []
    tools: list[str] = Field(default=["*"], description="default tool allowlist (glob patterns)")
    image_digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = Field(
        default=None, description="the approved image: its id (the image built or named here) or a registry "
                                  "manifest digest; deploying or verifying any other image fails")
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS, description="instances a deployment runs by default")] = 1

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.image is None) == (self.build is None):
            raise ValueError("give exactly one of 'image' or 'build'")
        if self.egress and self.network is not NetworkProfile.egress:
            raise ValueError("an 'egress' allowlist needs network: egress")
        names = [v.name for v in [*self.required_env, *self.optional_env]]
        if len(names) != len(set(names)):
            raise ValueError("a variable is declared twice in required_env/optional_env")
        return self

    def check_variables(self, env: Mapping[str, str], *, partial: bool = False) -> None:
        """Refuse values for undeclared variables, and (unless `partial`) missing required ones."""
        declared = {v.name for v in [*self.required_env, *self.optional_env]}
        missing = [] if partial else sorted(v.name for v in self.required_env if not env.get(v.name))
        unknown = sorted(set(env) - declared)
        problems = []
        if missing:
            problems.append(f"missing required variables: {', '.join(missing)}")
        if unknown:
            problems.append(f"variables not declared by catalog entry {self.name!r}: {', '.join(unknown)}")
        if problems:
            raise ValidationFailed("; ".join(problems), hint=f"see `stockade catalog show {self.name}`")

    @property
    def secret_env_names(self) -> set[str]:
        return {v.name for v in [*self.required_env, *self.optional_env] if v.secret}


class Catalog(_Strict):
    version: int = CATALOG_FORMAT_VERSION
    servers: list[CatalogEntry]

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != CATALOG_FORMAT_VERSION:
            raise ValueError(f"catalog format version {value} is not supported (expected {CATALOG_FORMAT_VERSION})")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [s.name for s in self.servers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"server names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def get(self, name: str) -> CatalogEntry:
        for entry in self.servers:
            if entry.name == name:
                return entry
        from stockade.errors import NotFoundError

        raise NotFoundError(
            f"no catalog entry named {name!r}",
            hint=f"known servers: {', '.join(s.name for s in self.servers) or 'none'}",
        )

    @classmethod
    def parse_yaml(cls, text: str, *, source: str = "catalog") -> Catalog:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {describe_validation_error(exc, data)}") from None

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        """Load `path`, or the catalog bundled with Stockade when `path` is None."""
        if path is None:
            text = resources.files("stockade").joinpath("bundled_catalog.yaml").read_text()
            return cls.parse_yaml(text, source="bundled catalog")
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read catalog {path}: {exc.strerror}") from None
        return cls.parse_yaml(text, source=str(path))


def describe_validation_error(exc: ValidationError, data: object = None) -> str:
    """One line per problem, naming the field by its path (and the server by name where known)."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if (
            len(loc) >= 2
            and loc[0] == "servers"
            and isinstance(loc[1], int)
            and isinstance(data, dict)
            and isinstance(data.get("servers"), list)
            and loc[1] < len(data["servers"])
            and isinstance(data["servers"][loc[1]], dict)
            and "name" in data["servers"][loc[1]]
        ):
            loc[1] = f"[{data['servers'][loc[1]]['name']}]"
        path = ".".join(str(p) for p in loc).replace(".[", "[") or "(document)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
