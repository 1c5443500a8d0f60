"""Offline, cached image builds.

    base:    debootstrap (minbase + python3) -> tarball in the cache -> `docker import`
             -> stockade/base:bookworm-<recipe hash>
    server:  packages downloaded on the host (packages.py) + a wheel of Stockade itself, put in a
             build context with the generated Dockerfile (dockerfile.py), built with NO network
             -> stockade/server-<entry>:<build hash>

The build hash covers every input: the Dockerfile and helper scripts, the package spec, every
downloaded file, the Stockade wheel's contents and the base image's id. An image carrying that
hash is never rebuilt ("up to date"). Nothing is ever pulled: the base comes from `docker import`
and builds run with `pull=False` from that local image only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors

import stockade
from stockade.catalog import CatalogEntry
from stockade.config import Settings
from stockade.errors import ImageBuildError
from stockade.orchestrator import dockerfile, packages, sbom

Progress = Callable[[str], None]

LABEL_MANAGED = "io.stockade.managed"
LABEL_KIND = "io.stockade.kind"
LABEL_PACKAGE = "io.stockade.package"
LABEL_VERSION = "io.stockade.version"
LABEL_ECOSYSTEM = "io.stockade.ecosystem"
LABEL_BRIDGE_VERSION = "io.stockade.bridge-version"
LABEL_BUILD_HASH = "io.stockade.build-hash"
LABEL_BASE_IMAGE = "io.stockade.base-image"
LABEL_FLAVOUR = "io.stockade.flavour"
LABEL_SBOM = sbom.LABEL_SBOM
BASE_REPOSITORY = "stockade/base"

# One build at a time per process: two deployments of the same entry must not race to build it.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    built: bool
    labels: dict[str, str] = field(default_factory=dict)


def _noop(_: str) -> None:
    pass


def repo_digests(image_attrs: Mapping[str, Any]) -> list[str]:
    """The registry manifest digests an image is known by (none for an image built here)."""
    return sorted({d.rpartition("@")[2] for d in image_attrs.get("RepoDigests") or []})


def matches_pin(pin: str, image_attrs: Mapping[str, Any]) -> bool:
    """Whether an image (`docker image inspect`) is the one a catalog pin names. The pin is the image
    id -- the sha256 of the image's configuration, which names every layer by the digest of its
    content, so equal ids mean equal images -- or, for an image from a registry, a manifest digest."""
    return pin == image_attrs.get("Id") or pin in repo_digests(image_attrs)


def server_repository(entry_name: str) -> str:
    return f"stockade/server-{entry_name}"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a cached download into the context (hard links where possible), without the marker."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.as_posix() == ".complete":
            continue
        target = dst / rel
        if path.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(path), target)
        elif path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            _link_or_copy(path, target)


class ImageBuilder:
    def __init__(self, client: docker.DockerClient, settings: Settings, progress: Progress | None = None,
                 *, distroless: bool = True) -> None:
        self.client = client
        self.settings = settings
        self.progress = progress or _noop
        self.distroless = distroless
        self._wheel: tuple[Path, str] | None = None
        self._node_version: str | None = None
        # Per entry: the image this process last found up to date for it. Its build inputs are
        # what this process has cached (the wheel, the node version), so only the image itself
        # can have gone; a deploy then skips assembling and hashing a build context.
        self._up_to_date: dict[str, BuiltImage] = {}

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir

    # -- base ----------------------------------------------------------------------------------------
    def base_tag(self) -> str:
        return f"{BASE_REPOSITORY}:{packages.DEBIAN_SUITE}-{packages.sha256_hex(packages.base_recipe())[:12]}"

    def ensure_base(self) -> str:
        """The tag of the local base image (imported from the cached rootfs, debootstrapped once)."""
        tag = self.base_tag()
        if self._local_image(tag) is not None:
            self.progress(f"base image {tag}: up to date")
            return tag
        with packages.file_lock(self.cache_dir / "locks" / "base-import.lock"):
            if self._local_image(tag) is not None:  # another process imported it meanwhile
                return tag
            return self._import_base(tag)

    def _import_base(self, tag: str) -> str:
        tarball = packages.base_rootfs_tarball(self.cache_dir, self.settings.debian_mirror, self.progress)
        return self._import_rootfs(tarball, tag, kind="base", settings=['CMD ["/bin/sh"]'])

    def _import_rootfs(self, tarball: Path, tag: str, *, kind: str, settings: list[str]) -> str:
        """`docker import` a root filesystem tarball as `tag`, labelled as Stockade's image of `kind`,
        with Dockerfile `settings` (USER, CMD) on top of a plain PATH and locale."""
        repository, _, version = tag.partition(":")
        self.progress(f"importing {tarball.name} as {tag}")
        changes = [
            f'LABEL {LABEL_MANAGED}="true" {LABEL_KIND}="{kind}"',
            'ENV PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" LANG="C.UTF-8"',
            *settings,
        ]
        try:
            self.client.api.import_image_from_file(str(tarball), repository=repository, tag=version, changes=changes)
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"docker import of the {kind} rootfs failed: {exc.explanation or exc}") from None
        if self._local_image(tag) is None:
            raise ImageBuildError(f"docker import did not produce {tag}")
        return tag

    # -- the egress proxy (squid) ---------------------------------------------------------------------
    def proxy_tag(self) -> str:
        from stockade.orchestrator import egress

        return f"{egress.PROXY_REPOSITORY}:{packages.DEBIAN_SUITE}-{packages.sha256_hex(egress.proxy_recipe())[:12]}"

    def ensure_proxy_image(self) -> str:
        """The local squid image of the egress proxies: Debian's squid debootstrapped on the host
        (cached tarball) and `docker import`ed; never pulled, nothing installed in a container."""
        from stockade.orchestrator import egress

        tag = self.proxy_tag()
        if self._local_image(tag) is not None:
            return tag
        with packages.file_lock(self.cache_dir / "locks" / "egress-import.lock"):
            if self._local_image(tag) is not None:
                return tag
            tarball = egress.proxy_rootfs_tarball(self.cache_dir, self.settings.debian_mirror, self.progress)
            return self._import_rootfs(tarball, tag, kind="egress-proxy",
                                       settings=[f"USER {egress.PROXY_USER}", 'CMD ["/usr/sbin/squid", "-N"]'])

    # -- servers -------------------------------------------------------------------------------------
    def ensure_server_image(self, entry: CatalogEntry) -> BuiltImage:
        """The entry's image: the local one it names, or built from its recipe; refused when the
        catalog pins a digest (`image_digest`) and the image is not that one."""
        if entry.image is not None:
            built = self._check_prebuilt(entry)
        else:
            assert entry.build is not None
            with _BUILD_LOCK:
                built = self._still_up_to_date(entry) or self._ensure_built(entry)
                self._up_to_date[entry.name] = built
        if entry.image_digest is not None:
            attrs = self.client.api.inspect_image(built.image_id)
            if not matches_pin(entry.image_digest, attrs):
                raise ImageBuildError(
                    f"the image of catalog entry {entry.name!r} is {attrs['Id']} "
                    f"(repository digests: {', '.join(repo_digests(attrs)) or 'none'}), not the catalog's pinned "
                    f"{entry.image_digest}",
                    hint="the image differs from the one the catalog approved: review it, then pin its id "
                         "(docker image inspect) or remove image_digest from the entry",
                )
        return built

    def _check_prebuilt(self, entry: CatalogEntry) -> BuiltImage:
        """A catalog entry naming a local image: it must exist (never pulled)."""
        assert entry.image is not None
        image = self._local_image(entry.image)
        if image is None:
            raise ImageBuildError(
                f"image {entry.image!r} of catalog entry {entry.name!r} is not on this engine",
                hint="load or build it locally (docker load / docker build); Stockade never pulls images",
            )
        self.progress(f"{entry.name}: using local image {entry.image}")
        return BuiltImage(tag=entry.image, image_id=image.id, built=False, labels=dict(image.labels or {}))

    def _still_up_to_date(self, entry: CatalogEntry) -> BuiltImage | None:
        known = self._up_to_date.get(entry.name)
        if known is None or self._wheel is None or not self._wheel[0].exists():
            return None  # the wheel changed (a new source tree): the build inputs must be hashed again
        image = self._local_image(known.tag)
        if image is None or image.id != known.image_id:
            return None
        if (image.labels or {}).get(LABEL_BUILD_HASH) != known.labels.get(LABEL_BUILD_HASH):
            return None
        self.progress(f"{entry.name}: image {known.tag} is up to date")
        return replace(known, built=False)

    def _ensure_built(self, entry: CatalogEntry) -> BuiltImage:
        build = entry.build
        assert build is not None
        say = self.progress
        base = self.ensure_base()
        base_image = self._local_image(base)
        assert base_image is not None
        wheel, wheel_hash = self._stockade_wheel()

        pip_dir = packages.pip_wheel_of_pip(self.cache_dir, say)
        pip_wheels = sorted(pip_dir.glob("pip-*.whl"))
        if not pip_wheels:
            raise ImageBuildError(f"no pip wheel in {pip_dir}")
        bridge_reqs = packages.bridge_requirements()
        bridge_dir = packages.pip_download(self.cache_dir, bridge_reqs.splitlines(), say, label="bridge")
        server_dir: Path | None = None
        node: Path | None = None
        node_version: str | None = None
        if build.ecosystem == "pypi":
            assert build.pypi is not None
            server_dir = packages.pip_download(self.cache_dir, [build.pypi], say, label=entry.name)
        else:
            assert build.npm is not None
            server_dir = packages.npm_install(self.cache_dir, build.npm, say)
            node_version = self._newest_node()
            node = packages.node_binary(self.cache_dir, node_version, say)

        text = dockerfile.server_dockerfile(base_image=base, pip_wheel=pip_wheels[-1].name,
                                            ecosystem=build.ecosystem, requirement=build.pypi,
                                            package=build.package, version=build.version,
                                            distroless=self.distroless,
                                            node_version=node_version)
        contexts = self.cache_dir / "contexts"
        contexts.mkdir(parents=True, exist_ok=True)
        context = Path(tempfile.mkdtemp(prefix=f"{entry.name}.", dir=contexts))
        try:
            (context / "Dockerfile").write_text(text)
            tools = context / "tools"
            tools.mkdir()
            for name, script in (("mkvenv", dockerfile.MKVENV), ("collect-runtime", dockerfile.COLLECT_RUNTIME)):
                (tools / name).write_text(script)
                (tools / name).chmod(0o755)
            # the SBOM generator runs in the build stage as a plain script (standard library only)
            _link_or_copy(Path(sbom.__file__), context / "sbom" / "sbom.py")
            _link_or_copy(pip_wheels[-1], context / "pip" / pip_wheels[-1].name)
            _copy_tree(bridge_dir, context / "wheels-bridge")
            (context / "wheels-bridge" / "requirements.txt").write_text(bridge_reqs)
            if build.ecosystem == "pypi":
                _copy_tree(server_dir, context / "wheels-server")
            else:
                _copy_tree(server_dir, context / "npm")
                assert node is not None
                _link_or_copy(node, context / "node")
            (context / "stockade").mkdir()
            # The wheel's content hash stands for it (wheel zips carry timestamps).
            _link_or_copy(wheel, context / "stockade" / wheel.name)
            digest = self._build_hash(context, wheel_hash, base_image.id, build.pypi or build.npm or "")
            tag = f"{server_repository(entry.name)}:{digest[:16]}"
            labels = {
                LABEL_MANAGED: "true",
                LABEL_KIND: "server",
                LABEL_PACKAGE: build.package,
                LABEL_VERSION: build.version,
                LABEL_ECOSYSTEM: build.ecosystem,
                LABEL_BRIDGE_VERSION: stockade.__version__,
                LABEL_BUILD_HASH: digest,
                LABEL_BASE_IMAGE: f"{base}@{base_image.id}",
                LABEL_FLAVOUR: "distroless" if self.distroless else "plain",
                LABEL_SBOM: sbom.SBOM_PATH,
            }
            # Processes sharing the cache (and the engine) build one hash once: the second waits,
            # then finds the first one's image.
            with packages.file_lock(self.cache_dir / "locks" / f"build-{digest[:16]}.lock"):
                existing = self._image_with_hash(tag, digest)
                if existing is not None:
                    if tag not in (existing.tags or []):
                        existing.tag(server_repository(entry.name), digest[:16])
                    say(f"{entry.name}: image {tag} is up to date")
                    return BuiltImage(tag=tag, image_id=existing.id, built=False, labels=dict(existing.labels or {}))
                say(f"{entry.name}: building {tag} ({build.ecosystem} {build.package} {build.version}, no network)")
                image_id = self._docker_build(context, tag, labels, entry.name)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        image = self.client.images.get(tag)
        if not image.id.endswith(image_id.removeprefix("sha256:")) and not image.id.startswith(f"sha256:{image_id}"):
            say(f"{entry.name}: note: build reported {image_id}, tag points to {image.id}")
        say(f"{entry.name}: built {tag}")
        return BuiltImage(tag=tag, image_id=image.id, built=True, labels=dict(image.labels or {}))

    @staticmethod
    def _build_hash(context: Path, wheel_hash: str, base_id: str, spec: str) -> str:
        digest = hashlib.sha256()
        for part in sorted(p for p in context.iterdir() if p.name != "stockade"):
            digest.update(part.name.encode() + b"\0")
            digest.update((packages.hash_tree(part) if part.is_dir() else packages.sha256_hex(part.read_bytes())).encode())
        for part in (f"stockade-wheel:{wheel_hash}", f"base:{base_id}", f"spec:{spec}"):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()

    def _docker_build(self, context: Path, tag: str, labels: dict[str, str], name: str) -> str:
        image_id: str | None = None
        recent: list[str] = []
        try:
            stream = self.client.api.build(
                path=str(context), tag=tag, rm=True, forcerm=True, pull=False, network_mode="none",
                labels=labels, decode=True, use_config_proxy=False,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    tail = " | ".join(recent[-8:])
                    raise ImageBuildError(f"building the image of {name!r} failed: {detail.strip()}; last output: {tail}")
                line = str(chunk.get("stream", "")).rstrip()
                if line:
                    for part in line.splitlines():
                        recent.append(part)
                        if part.startswith("Step ") and " : LABEL " in part:
                            continue
                        if part.startswith(("Step ", " ---> Using cache")):
                            self.progress(f"{name}: {part.strip()}")
                        elif part.strip() and not part.startswith((" ---> ", "Removing intermediate")):
                            self.progress(f"{name}:   {part.strip()}")
                    del recent[:-50]
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"building the image of {name!r} failed: {exc.explanation or exc}") from None
        if image_id is None:
            match = next((m for line in reversed(recent) if (m := re.match(r"Successfully built ([0-9a-f]+)", line))), None)
            if match is None:
                raise ImageBuildError(f"building the image of {name!r} produced no image; last output: {' | '.join(recent[-8:])}")
            image_id = match.group(1)
        return image_id

    # -- helpers -------------------------------------------------------------------------------------
    def _stockade_wheel(self) -> tuple[Path, str]:
        if self._wheel is None or not self._wheel[0].exists():
            self._wheel = packages.stockade_wheel(self.cache_dir, self.progress)
        return self._wheel

    def _newest_node(self) -> str:
        if self._node_version is None:
            self._node_version = packages.newest_node_version(self.cache_dir, self.progress)
        return self._node_version

    def _local_image(self, name: str) -> Any:
        try:
            return self.client.images.get(name)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"cannot inspect image {name!r}: {exc.explanation or exc}") from None

    def _image_with_hash(self, tag: str, digest: str) -> Any:
        # By name first: listing with a label filter walks every image the engine has (slow on a
        # busy engine); the tag is derived from the digest, so it is the usual way to find it.
        tagged = self._local_image(tag)
        if tagged is not None and (tagged.labels or {}).get(LABEL_BUILD_HASH) == digest:
            return tagged
        found = self.client.images.list(filters={"label": [f"{LABEL_BUILD_HASH}={digest}", f"{LABEL_MANAGED}=true"]})
        return found[0] if found else None
