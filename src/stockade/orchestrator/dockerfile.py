"""The Dockerfile of a server image (pure text generation; see images.py for the build context).

Layout inside the image (all read-only at run time, owned by root, readable by everyone):

    /opt/stockade/bridge   a virtual environment: the bridge's pinned requirements
                           (+ a .pth naming /opt/stockade/app); the entrypoint's interpreter
    /opt/stockade/app      the Stockade package itself (installed --no-deps, the LAST layer)
    /opt/stockade/server   PyPI servers: a virtual environment of their own (console scripts in
                           bin/); npm servers: the `npm install` tree (executables in
                           node_modules/.bin)
    /opt/stockade/node     npm servers: the Node.js binary (bin/node)
    /usr/share/stockade/sbom.cdx.json
                           the image's SBOM (CycloneDX 1.5, sbom.py), mode 0444, named by the
                           io.stockade.sbom label

The bridge and the server live in separate environments so that their dependencies can never
conflict, and the server sees none of the bridge's packages. Virtual environments are made by hand
(a pyvenv.cfg next to a python3 symlink): Debian's minbase has neither pip nor ensurepip, and
pip runs from its own wheel.

Layer order, most stable first: node -> bridge requirements -> server package -> runtime
collection -> SBOM -> Stockade's own code. A change to Stockade's code rebuilds only the last small
layer (the SBOM names Stockade by version, so it need not be regenerated for every code change).

Two final stages:
  * distroless (default): `FROM scratch` plus only what runs: the interpreter and its stdlib, the
    two environments, node, `env` (npm executables start with `#!/usr/bin/env node`), the shared
    libraries all of those load (found with `ldd`), zoneinfo, and a two-line /etc/passwd.
    No shell, no package manager, no coreutils beyond `env`.
  * plain: the build stage itself (a Debian minbase with a shell), for debugging.
"""

from __future__ import annotations

import json
import shlex

import stockade
from stockade.orchestrator.sbom import SBOM_PATH

BRIDGE_PYTHON = "/opt/stockade/bridge/bin/python3"
ENTRYPOINT = [BRIDGE_PYTHON, "-m", "stockade.bridge"]
RUNTIME_USER = "65534:65534"
SERVER_PATH = (
    "/opt/stockade/server/bin:/opt/stockade/server/node_modules/.bin:/opt/stockade/node/bin"
    ":/usr/local/bin:/usr/bin:/bin"
)
RUNTIME_ENV = {
    "PATH": SERVER_PATH,
    "LANG": "C.UTF-8",
    "PYTHONUTF8": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp",
    "NODE_ENV": "production",
}

PURELIB = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'

MKVENV = r"""#!/bin/sh
# mkvenv DIR: a virtual environment over Debian's python3, without the venv/ensurepip packages.
set -eu
mkdir -p "$1/bin"
ln -sf /usr/bin/python3 "$1/bin/python3"
ln -sf python3 "$1/bin/python"
version=$(/usr/bin/python3 -c 'import platform; print(platform.python_version())')
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' "$version" > "$1/pyvenv.cfg"
"""

COLLECT_RUNTIME = r"""#!/bin/sh
# collect-runtime ROOT: copy what the server runs into an empty root filesystem ("distroless").
set -eu
R=$1
mkdir -p "$R/etc" "$R/tmp"
chmod 1777 "$R/tmp"
copy() {
  for p in "$@"; do
    if [ -e "$p" ] || [ -L "$p" ]; then cp -a --parents "$p" "$R/"; fi
  done
}
# merged-/usr: /bin, /lib, /lib64, /sbin are symlinks into /usr
for link in bin lib lib64 sbin; do
  if [ -L "/$link" ]; then cp -a "/$link" "$R/"; fi
done
copy /usr/bin/python3 /usr/bin/python3.11 /usr/bin/env /usr/lib/python3.11 /usr/lib/python3/dist-packages \
     /opt/stockade /usr/share/zoneinfo /etc/localtime /etc/nsswitch.conf
rm -rf "$R/usr/lib/python3.11/test" "$R/usr/lib/python3.11/idlelib" "$R/usr/lib/python3.11/tkinter" \
       "$R/usr/lib/python3.11/ensurepip" "$R/usr/lib/python3.11/lib2to3/tests"
# glibc loads libgcc_s at run time (thread cancellation/unwinding): ldd cannot see it
for extra in /usr/lib/x86_64-linux-gnu/libgcc_s.so.1; do copy "$extra"; done
# every shared library any ELF file in the new root loads, with the symlinks leading to it
find "$R" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print | while read -r f; do
  ldd "$f" 2>/dev/null || true
done | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u | while read -r lib; do
  dir=$(readlink -f "$(dirname "$lib")")
  copy "$dir/$(basename "$lib")" "$(readlink -f "$lib")"
done
printf 'root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
# the result must run on its own: check it before it becomes the image
chroot "$R" /opt/stockade/bridge/bin/python3 -c 'import asyncio, json, ssl, uuid, zoneinfo'
if [ -x "$R/opt/stockade/node/bin/node" ]; then chroot "$R" /opt/stockade/node/bin/node --version >/dev/null; fi
"""


def _env_lines() -> str:
    return "ENV " + " ".join(f"{key}={json.dumps(value)}" for key, value in RUNTIME_ENV.items())


def sbom_command(*, ecosystem: str, package: str, version: str, distroless: bool, node_version: str | None) -> str:
    """The build step writing the SBOM (sbom.py, copied to sbom/ in the context) with Debian's python3."""
    args = ["/usr/bin/python3", "/build/sbom/sbom.py", "--root", "/rootfs" if distroless else "/", "--out", SBOM_PATH,
            "--ecosystem", ecosystem, "--package", package, "--version", version,
            "--stockade-version", stockade.__version__]
    if node_version:
        args += ["--node-version", node_version]
    return "RUN " + " ".join(shlex.quote(a) for a in args)


def server_dockerfile(*, base_image: str, pip_wheel: str, ecosystem: str, requirement: str | None,
                      package: str, version: str, distroless: bool = True, node_version: str | None = None) -> str:
    """The Dockerfile for one server image. `pip_wheel` is the file name under pip/ in the context;
    `package` and `version` (the catalog's pin) and `node_version` (npm servers) go into the SBOM."""
    pip = f"/build/pip/{pip_wheel}/pip"
    lines = [
        "# Generated by stockade.orchestrator.dockerfile; built with no network (network_mode=none).",
        f"FROM {base_image} AS build",
        (
            "ENV LANG=C.UTF-8 PYTHONUTF8=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 "
            "PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1"
        ),
        "COPY tools/ /build/bin/",
        "COPY pip/ /build/pip/",
    ]
    if ecosystem == "npm":
        lines.append("COPY node /opt/stockade/node/bin/node")
    lines += [
        "COPY wheels-bridge/ /build/wheels-bridge/",
        (
            "RUN /build/bin/mkvenv /opt/stockade/bridge"
            f" && {BRIDGE_PYTHON} {pip} install --quiet --no-index --find-links /build/wheels-bridge"
            " -r /build/wheels-bridge/requirements.txt"
            f" && echo /opt/stockade/app > \"$({BRIDGE_PYTHON} -c {shlex.quote(PURELIB)})/stockade-app.pth\""
        ),
    ]
    if ecosystem == "pypi":
        if not requirement:
            raise ValueError("a PyPI server needs its requirement")
        lines += [
            "COPY wheels-server/ /build/wheels-server/",
            (
                "RUN /build/bin/mkvenv /opt/stockade/server"
                f" && /opt/stockade/server/bin/python3 {pip} install --quiet --no-index"
                f" --find-links /build/wheels-server {shlex.quote(requirement)}"
            ),
        ]
    elif ecosystem == "npm":
        lines.append("COPY npm/ /opt/stockade/server/")
    else:
        raise ValueError(f"unknown ecosystem {ecosystem!r}")
    if distroless:
        lines.append("RUN /build/bin/collect-runtime /rootfs")
    lines += ["COPY sbom/ /build/sbom/",
              sbom_command(ecosystem=ecosystem, package=package, version=version, distroless=distroless,
                           node_version=node_version)]
    lines += [
        "COPY stockade/ /build/stockade/",
        (
            f"RUN {BRIDGE_PYTHON} {pip} install --quiet --no-index --no-deps --no-compile --target /opt/stockade/app"
            " /build/stockade/*.whl && rm -rf /opt/stockade/app/bin"
            f" && {BRIDGE_PYTHON} -m compileall -q /opt/stockade/app"
        ),
    ]
    if distroless:
        lines += [
            "",
            "FROM scratch",
            "COPY --from=build /rootfs/ /",
            "COPY --from=build /opt/stockade/app/ /opt/stockade/app/",
            f"COPY --from=build {SBOM_PATH} {SBOM_PATH}",
        ]
    lines += [
        _env_lines(),
        f"USER {RUNTIME_USER}",
        "WORKDIR /tmp",
        # Smoke test (exec form: no shell needed): the bridge imports as the runtime user.
        f"RUN {json.dumps([BRIDGE_PYTHON, '-c', 'import stockade.bridge'])}",
        f"ENTRYPOINT {json.dumps(ENTRYPOINT)}",
        "CMD []",
    ]
    return "\n".join(lines) + "\n"
