"""`stockade k8s render|apply` through Typer's runner (the sub-app, as the lead mounts it)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stockade.catalog import Catalog
from stockade.cli.k8s import app
from stockade.errors import ConfigError, EngineError, NotFoundError, SecretsError
from tests.k8s.support import documents, pod_specs, restricted_violations, validate_all

runner = CliRunner()


def test_render_prints_every_bundled_entry() -> None:
    result = runner.invoke(app, ["render", "--namespace", "mcp", "--image-prefix", "registry.test/stockade"])
    assert result.exit_code == 0, result.output
    docs = documents(result.stdout)
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == "mcp"
    servers = {d["metadata"]["labels"]["io.stockade/server"] for d in docs if d["kind"] == "Deployment"}
    assert servers == {e.name for e in Catalog.load().servers}
    assert all(d["metadata"].get("namespace") == "mcp" for d in docs[1:])
    assert validate_all(docs) == len(docs)
    assert all(restricted_violations(spec) == [] for _, spec in pod_specs(docs))
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in docs if d["kind"] == "Deployment"}
    assert "registry.test/stockade/server-time:2026.10.19" in images
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert secret["metadata"]["annotations"]["io.stockade/placeholder"] == "true"
    assert "placeholders" in result.stderr


def test_render_named_entries_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "servers.yaml"
    result = runner.invoke(app, ["render", "time", "--no-namespace-manifest", "--output", str(out), "--pull-policy", "Never"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    docs = documents(out.read_text())
    assert [d["kind"] for d in docs] == ["NetworkPolicy", "Secret", "Service", "Deployment"]
    assert docs[-1]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_render_unknown_entry_fails() -> None:
    result = runner.invoke(app, ["render", "nope"])
    assert isinstance(result.exception, NotFoundError)


def test_render_warns_loudly_about_open_networks(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "version: 1\nservers:\n"
        "  - {name: wide, image: 'x:1', command: [x], network: open}\n"
        "  - {name: narrow, image: 'y:1', command: [y], network: egress, egress: ['api.example.com:443']}\n"
    )
    result = runner.invoke(app, ["render", "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    assert "WARNING wide: network: open" in result.stderr
    assert "egressProxy.allowedDestinations" in result.stderr and "api.example.com:443" in result.stderr
    assert validate_all(documents(result.stdout)) == 1 + 2 * 4  # Namespace; policy, secret, service, deployment each


def test_apply_needs_a_bootstrap_file_per_server(tmp_path: Path) -> None:
    result = runner.invoke(app, ["apply", "time", "--bootstrap-dir", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)
    assert f"{tmp_path}/time.json" in str(result.exception)


def test_apply_reads_bootstraps_and_the_master_key_then_needs_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STOCKADE_MASTER_KEY", raising=False)
    bootstraps = tmp_path / "bootstrap"
    bootstraps.mkdir()
    (bootstraps / "time.json").write_text(json.dumps({"env": {}}))
    apply_time = ["apply", "time", "--bootstrap-dir", str(bootstraps), "--kubeconfig", str(tmp_path / "missing")]
    # No master key: no token can be derived, and none is made up.
    result = runner.invoke(app, apply_time)
    assert isinstance(result.exception, SecretsError) and "no master key" in str(result.exception)
    monkeypatch.setenv("STOCKADE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    result = runner.invoke(app, apply_time)
    assert isinstance(result.exception, EngineError)
    (bootstraps / "time.json").write_text(json.dumps({"token": "tok-PLANTED", "env": {}}))
    result = runner.invoke(app, apply_time)
    assert isinstance(result.exception, ConfigError) and "derived from the master key" in str(result.exception)
    assert "PLANTED" not in str(result.exception)
    (bootstraps / "time.json").write_text("{not json PLANTED")
    result = runner.invoke(app, apply_time)
    assert isinstance(result.exception, ConfigError) and "PLANTED" not in str(result.exception)