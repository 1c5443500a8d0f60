"""The container spec is pure data: every hardening decision checked without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stockade.catalog import Catalog, CatalogEntry
from stockade.errors import DeploymentError
from stockade.orchestrator.spec import container_spec

SECRET = "planted-secret-value-4711"
TOKEN = "planted-bridge-token-0815"


def entry(**overrides: object) -> CatalogEntry:
    data: dict[str, object] = {
        "name": "demo",
        "build": {"pypi": "mcp-server-time==2026.10.19"},
        "command": ["mcp-server-time", "--local-timezone", "UTC"],
        "required_env": [{"name": "API_KEY", "secret": True}, {"name": "REGION"}],
        "optional_env": [{"name": "DEBUG"}],
        "resources": "medium",
    }
    data.update(overrides)
    return CatalogEntry.model_validate(data)


def spec_of(e: CatalogEntry, data_dir: Path = Path("/srv/stockade")):
    return container_spec(e, slug="demo-1", deployment_id="dep-123", image="stockade/server-demo:abc",
                          network_name="stockade-demo-1", data_dir=data_dir)


def test_hardening_fields() -> None:
    spec = spec_of(entry())
    kwargs = spec.create_kwargs()
    assert kwargs["cap_drop"] == ["ALL"]
    assert "cap_add" not in kwargs
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["user"] == "65534:65534"
    assert kwargs["read_only"] is True
    assert set(kwargs["tmpfs"]) == {"/tmp"}
    tmp_options = kwargs["tmpfs"]["/tmp"].split(",")
    assert {"rw", "noexec", "nosuid", "size=64m"} <= set(tmp_options)
    assert kwargs["restart_policy"] == {"Name": "no"}
    assert "privileged" not in kwargs and "pid_mode" not in kwargs and "network_mode" not in kwargs
    assert kwargs["ipc_mode"] == "private"
    assert kwargs["stdin_open"] is True and kwargs["tty"] is False
    assert kwargs["use_config_proxy"] is False
    assert kwargs["detach"] is True


def test_resource_limits_follow_the_profile() -> None:
    for profile in ("small", "medium", "large"):
        e = entry(resources=profile)
        limits = e.resources.limits
        spec = spec_of(e)
        kwargs = spec.create_kwargs()
        assert kwargs["mem_limit"] == limits.memory_mb * 1024 * 1024
        assert kwargs["memswap_limit"] == kwargs["mem_limit"]  # no swap
        assert spec.nano_cpus == spec.startup_nano_cpus == kwargs["nano_cpus"] == int(limits.cpus * 1e9)
        assert kwargs["pids_limit"] == limits.pids


@pytest.mark.parametrize(("profile", "engine_cpus", "startup_cpus"), [
    ("small", 2, 2.0), ("medium", 8, 8.0), ("large", 2, 2.0), ("small", 1, 1.0), ("large", 1, 2.0),
])
def test_a_server_is_created_with_every_engine_cpu_and_keeps_its_profile_limit(
    profile: str, engine_cpus: int, startup_cpus: float,
) -> None:
    e = entry(resources=profile)
    spec = container_spec(e, slug="demo-1", deployment_id="dep-123", image="i", network_name="n",
                          data_dir=Path("/srv/stockade"), engine_cpus=engine_cpus)
    # created with the allowance (never below the profile), held to the profile once ready
    assert spec.create_kwargs()["nano_cpus"] == spec.startup_nano_cpus == int(startup_cpus * 1e9)
    assert spec.nano_cpus == int(e.resources.limits.cpus * 1e9)


def test_network_and_no_published_ports() -> None:
    kwargs = spec_of(entry()).create_kwargs()
    assert kwargs["network"] == "stockade-demo-1"
    assert "ports" not in kwargs and "publish_all_ports" not in kwargs


def test_labels() -> None:
    spec = spec_of(entry())
    assert dict(spec.labels) == {
        "io.stockade.managed": "true",
        "io.stockade.server": "demo-1",
        "io.stockade.deployment": "dep-123",
        "io.stockade.entry": "demo",
        "io.stockade.replica": "0",
    }
    assert spec.name == "stockade-demo-1"


def test_command_runs_the_bridge_around_the_server() -> None:
    spec = spec_of(entry())
    assert list(spec.command) == [
        "--host", "0.0.0.0", "--port", "8080", "--bootstrap-stdin", "--name", "demo-1",
        "--required-env", "API_KEY", "--required-env", "REGION",
        "--", "mcp-server-time", "--local-timezone", "UTC",
    ]
    assert spec.image == "stockade/server-demo:abc"
    assert "entrypoint" not in spec.create_kwargs()  # the image's bridge entrypoint is used


def test_no_secret_or_token_anywhere_in_the_spec() -> None:
    # The spec function is never given values at all; check nothing value-like slipped in.
    spec = spec_of(entry())
    kwargs = spec.create_kwargs()
    assert kwargs["environment"] == {}
    text = json.dumps({k: v for k, v in kwargs.items() if k not in ("mounts", "log_config")}, default=str)
    for forbidden in (SECRET, TOKEN, "token", "TOKEN"):
        assert forbidden not in text


def test_mounts_resolved_with_data_dir_and_read_only_honoured(tmp_path: Path) -> None:
    e = entry(mounts=[
        {"host_path": "{data_dir}/shared", "container_path": "/data", "read_only": False},
        {"host_path": "{data_dir}/reference", "container_path": "/ref"},
    ])
    spec = spec_of(e, data_dir=tmp_path)
    mounts = {m.target: m for m in spec.mounts}
    assert mounts["/data"].source == str(tmp_path / "shared") and mounts["/data"].read_only is False
    assert mounts["/ref"].source == str(tmp_path / "reference") and mounts["/ref"].read_only is True
    docker_mounts = spec.create_kwargs()["mounts"]
    assert {m["Target"]: m["ReadOnly"] for m in docker_mounts} == {"/data": False, "/ref": True}
    assert all(m["Type"] == "bind" for m in docker_mounts)
    assert not (tmp_path / "shared").exists()  # pure: the runtime creates directories, not the spec


def test_bundled_catalog_specs_never_mount_the_engine_socket(tmp_path: Path) -> None:
    for e in Catalog.load().servers:
        spec = container_spec(e, slug=e.name, deployment_id="d", image="x", network_name="n", data_dir=tmp_path)
        for mount in spec.create_kwargs()["mounts"]:
            assert "docker.sock" not in mount["Source"]
            assert not mount["Source"].startswith(("/var/run", "/run"))


@pytest.mark.parametrize("host_path", [
    "/var/run/docker.sock", "/run/docker.sock", "/var/run", "/run", "/var", "/",
    "{data_dir}/../../../var/run/docker.sock", "/srv/../run", "/run/podman/podman.sock", "/tmp/other.sock",
])
def test_engine_socket_and_system_directories_are_refused(host_path: str) -> None:
    e = entry(mounts=[{"host_path": host_path, "container_path": "/data"}])
    with pytest.raises(DeploymentError):
        spec_of(e, data_dir=Path("/srv/stockade"))


@pytest.mark.parametrize("target", ["/", "/tmp", "/opt/stockade", "/opt/stockade/app", "/usr", "/etc"])
def test_mounts_cannot_shadow_the_image(target: str) -> None:
    with pytest.raises(DeploymentError):
        spec_of(entry(mounts=[{"host_path": "/srv/data", "container_path": target}]))


def test_owner_scopes_names_and_labels() -> None:
    e = entry()
    spec = container_spec(e, slug="demo-1", deployment_id="d", image="i", network_name="n",
                          data_dir=Path("/srv/a"), owner="0a1b2c3d")
    assert spec.name == "stockade-0a1b2c3d-demo-1"
    assert spec.labels["io.stockade.owner"] == "0a1b2c3d"
    from stockade.orchestrator.spec import owner_id

    assert owner_id(Path("/srv/a")) == owner_id(Path("/srv/a")) != owner_id(Path("/srv/b"))


def test_each_replica_is_its_own_equally_hardened_container() -> None:
    from stockade.orchestrator.spec import network_name, unit_name

    first = container_spec(entry(), slug="demo", deployment_id="d", image="i", network_name="n0",
                           data_dir=Path("/srv/a"), owner="0a1b2c3d")
    third = container_spec(entry(), slug="demo", deployment_id="d", image="i", network_name="n2",
                           data_dir=Path("/srv/a"), owner="0a1b2c3d", replica=2)
    assert (first.name, third.name) == ("stockade-0a1b2c3d-demo", "stockade-0a1b2c3d-demo.2")
    assert (first.labels["io.stockade.replica"], third.labels["io.stockade.replica"]) == ("0", "2")
    assert first.labels["io.stockade.server"] == third.labels["io.stockade.server"] == "demo"
    same = {k: v for k, v in first.create_kwargs().items() if k not in ("name", "labels", "network", "mounts", "log_config")}
    assert same == {k: v for k, v in third.create_kwargs().items() if k not in ("name", "labels", "network", "mounts", "log_config")}
    # '.' never occurs in a slug: no replica is named like another deployment (nor its instance 0)
    assert unit_name("demo", 1) == "demo.1" != unit_name("demo-1", 0)
    assert network_name(unit_name("demo", 1), "o") != network_name("demo-1", "o")
    with pytest.raises(ValueError):
        unit_name("demo", -1)
