"""The SBOM built into a server image (read back from the real `time` image), and the digest pin
of an entry built from a recipe: the built image must be the pinned one, or deploying is refused."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from stockade.catalog import CatalogEntry
from stockade.config import Settings
from stockade.errors import ImageBuildError
from stockade.orchestrator.images import BuiltImage, ImageBuilder
from stockade.orchestrator.sbom import LABEL_SBOM, SBOM_PATH, SbomError, package_purl, purl, read_sbom


@pytest.fixture(scope="module")
def sbom_member(engine: docker.DockerClient, time_image: BuiltImage) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    container = engine.containers.create(time_image.tag, labels={"io.stockade.verify-test": "true"})
    try:
        stream, _ = container.get_archive(SBOM_PATH)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            [member] = archive.getmembers()
            handle = archive.extractfile(member)
            assert handle is not None
            yield member, handle.read()
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def bom(sbom_member: tuple[tarfile.TarInfo, bytes]) -> dict[str, Any]:
    return json.loads(sbom_member[1])


def purls(bom: dict[str, Any], kind: str) -> dict[str, str]:
    return {c["name"]: c["purl"] for c in bom["components"] if c["purl"].startswith(f"pkg:{kind}/")}


def test_the_image_names_its_sbom_which_is_read_only(time_image: BuiltImage,
                                                     sbom_member: tuple[tarfile.TarInfo, bytes]) -> None:
    assert time_image.labels[LABEL_SBOM] == SBOM_PATH
    member, _ = sbom_member
    assert (member.uid, member.gid, member.mode & 0o777) == (0, 0, 0o444)


def test_the_sbom_is_cyclonedx_1_5(bom: dict[str, Any], sbom_member: tuple[tarfile.TarInfo, bytes]) -> None:
    assert (bom["bomFormat"], bom["specVersion"], bom["version"]) == ("CycloneDX", "1.5", 1)
    assert bom["serialNumber"].startswith("urn:uuid:")
    assert bom["metadata"]["component"]["name"] == "stockade-server/mcp-server-time"
    assert {"name": "stockade:flavour", "value": "distroless"} in bom["metadata"]["properties"]
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(refs) == len(set(refs))  # bom-refs are unique
    assert read_sbom(sbom_member[1]) == bom["components"]


def test_the_sbom_lists_the_debian_packages_that_are_in_the_distroless_image(bom: dict[str, Any]) -> None:
    debian = purls(bom, "deb")
    assert debian["libc6"].startswith("pkg:deb/debian/libc6@") and "arch=amd64" in debian["libc6"]
    assert "distro=debian-12" in debian["libc6"]
    assert {"python3.11-minimal", "libpython3.11-stdlib", "libssl3"} <= set(debian)
    # in the debootstrap base, but none of their files is in the final image
    assert not {"bash", "dash", "apt", "dpkg", "debconf", "perl-base"} & set(debian)


def test_the_sbom_lists_the_python_packages_with_purls(bom: dict[str, Any]) -> None:
    python = purls(bom, "pypi")
    assert python["mcp-server-time"] == package_purl("pypi", "mcp-server-time", "2026.10.19")
    assert python["stockade"].startswith("pkg:pypi/stockade@")
    assert {"uvicorn", "starlette", "anyio", "mcp"} <= set(python)  # the bridge's and the server's
    shared = next(c for c in bom["components"] if c["name"] == "anyio")
    # both environments have it: listed once, with both places
    assert {p["value"] for p in shared["properties"]} >= {"/opt/stockade/bridge/lib/python3.11/site-packages",
                                                          "/opt/stockade/server/lib/python3.11/site-packages"}


def test_package_urls_are_encoded() -> None:
    assert package_purl("npm", "@modelcontextprotocol/server-everything", "2026.8.31") == \
        "pkg:npm/%40modelcontextprotocol/server-everything@2026.8.31"
    assert package_purl("pypi", "Typing_Extensions", "4.1") == "pkg:pypi/typing-extensions@4.1"
    assert purl("deb", "libc6", "2.36-9+deb12u4", namespace="debian", qualifiers={"distro": "debian-12", "arch": "amd64"}) \
        == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"


@pytest.mark.parametrize(("data", "problem"), [
    (b"{not json", "not JSON"),
    (b'{"bomFormat": "SPDX"}', "not a CycloneDX document"),
    (b'{"bomFormat": "CycloneDX", "specVersion": "1.4", "components": []}', "specVersion '1.4'"),
    (b'{"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}', "no components"),
    (b'{"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"name": "x", "version": "1"}]}',
     "without name, version and purl"),
])
def test_unreadable_sboms_say_why(data: bytes, problem: str) -> None:
    with pytest.raises(SbomError, match=problem):
        read_sbom(data)


def test_a_built_entry_pinned_to_another_digest_is_refused(
    engine: docker.DockerClient, verify_settings: Settings, time_entry: CatalogEntry,
) -> None:
    builder = ImageBuilder(engine, verify_settings)
    # the image of the current sources (other work may have changed them since `time_image`)
    current = builder.ensure_server_image(time_entry).image_id
    pinned = CatalogEntry.model_validate({**time_entry.model_dump(mode="json"), "image_digest": current})
    assert builder.ensure_server_image(pinned).image_id == current
    other = CatalogEntry.model_validate({**time_entry.model_dump(mode="json"), "image_digest": "sha256:" + "1" * 64})
    with pytest.raises(ImageBuildError, match="not the catalog's pinned sha256:1111") as caught:
        builder.ensure_server_image(other)
    assert current in str(caught.value)
