import pytest

from stockade.catalog import Catalog, NetworkProfile, ResourceProfile
from stockade.errors import ConfigError, NotFoundError


def test_bundled_catalog_has_the_example_servers() -> None:
    catalog = Catalog.load()
    assert {s.name for s in catalog.servers} >= {"time", "everything", "filesystem"}
    time = catalog.get("time")
    assert time.build is not None and time.build.ecosystem == "pypi" and time.build.package == "mcp-server-time"
    assert time.network is NetworkProfile.none and time.resources is ResourceProfile.small
    filesystem = catalog.get("filesystem")
    assert filesystem.mounts and filesystem.mounts[0].container_path == "/data"


def test_errors_name_the_server_and_the_field() -> None:
    text = """
version: 1
servers:
  - name: broken
    build: {pypi: "unpinned-package"}
    command: [x]
    resources: huge
"""
    with pytest.raises(ConfigError) as caught:
        Catalog.parse_yaml(text, source="test.yaml")
    message = caught.value.message
    assert "test.yaml" in message
    assert "servers[broken].resources" in message
    assert "servers[broken].build" in message and "NAME==VERSION" in message


def test_rejects_duplicates_unknown_fields_and_bad_yaml() -> None:
    entry = "  - {name: a, image: 'x:1', command: [x]}\n"
    with pytest.raises(ConfigError, match="repeated: a"):
        Catalog.parse_yaml("servers:\n" + entry + entry)
    with pytest.raises(ConfigError, match="Extra inputs"):
        Catalog.parse_yaml("servers:\n  - {name: a, image: 'x:1', command: [x], colour: red}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Catalog.parse_yaml("servers: [\n")
    with pytest.raises(ConfigError, match="format version 7"):
        Catalog.parse_yaml("version: 7\nservers: []\n")


def test_egress_list_requires_the_egress_profile() -> None:
    with pytest.raises(ConfigError, match="needs network: egress"):
        Catalog.parse_yaml("servers:\n  - {name: a, image: 'x:1', command: [x], egress: ['api.example.test:443']}\n")
    ok = Catalog.parse_yaml(
        "servers:\n  - {name: a, image: 'x:1', command: [x], network: egress, egress: ['*.example.test:443']}\n"
    )
    assert ok.servers[0].egress == ["*.example.test:443"]


def test_unknown_entry_lists_the_known_ones() -> None:
    with pytest.raises(NotFoundError) as caught:
        Catalog.load().get("nope")
    assert "time" in (caught.value.hint or "")
