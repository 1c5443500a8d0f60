"""`stockade verify` on the real engine: a properly deployed server passes every check; servers
weakened on purpose (an extra non-internal network, a network shared with another server, an added
capability, running as root, a secret in the container's environment, an image other than the
pinned one, a shell in the image, an unreadable SBOM, an egress server without HTTPS_PROXY) fail
the check that names the weakness; the reports (JSON, JUnit, HTML, latest.json for the dashboard)
say so; nothing verify creates is left behind.

The weakened images are built here from the `time` image (and the cached local base for the
shell), offline, and removed at the end; nothing is pulled.

Network etiquette: traffic goes only to the containers, networks and namespaces created here and
to listeners verify opens on the host itself.
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import docker
import pytest
import typer
from typer.testing import CliRunner

from stockade.catalog import CatalogEntry
from stockade.cli.verify import verify_command
from stockade.config import Settings
from stockade.control.directory import seal_context
from stockade.orchestrator.images import BuiltImage, ImageBuilder
from stockade.orchestrator.runtime import Orchestrator
from stockade.orchestrator.sbom import SBOM_PATH
from stockade.orchestrator.spec import container_spec
from stockade.secrets import Sealer
from stockade.secrets.keys import load_master_key
from stockade.store.database import Database
from stockade.store.models import Deployment, DeploymentVariable
from stockade.verify import runner
from stockade.verify.render import html_report, junit_xml
from stockade.verify.runner import run_verify, verify_leftovers
from stockade.web.dashboard import read_verify_results

GOOD = "vt-good"
EXTRA_NET = "vt-extranet"
CAP = "vt-netraw"
ROOT = "vt-root"
ENV_SECRET = "vt-envsecret"
SHARED = "vt-shared"  # also attached to EXTRA_NET's network
DIGEST = "vt-digest"  # runs an image other than the one its entry pins
SHELL = "vt-shell"  # its image has /usr/bin/sh
BAD_SBOM = "vt-badsbom"  # its image's SBOM is not a CycloneDX document
NO_PROXY = "vt-noproxy"  # profile egress, but started without HTTPS_PROXY
ALL = (GOOD, EXTRA_NET, CAP, ROOT, ENV_SECRET, SHARED, DIGEST, SHELL, BAD_SBOM, NO_PROXY)
LABEL_TEST = "io.stockade.verify-test"
CHECKS = {"bridge", "host", "pivot", "egress", "hardening", "secrets"}


def verified_entry(time_entry: CatalogEntry, image_id: str | None = None, *, egress: bool = False) -> CatalogEntry:
    """The `time` entry with one secret variable (pinned to `image_id`; with `egress`, profile egress)."""
    data = time_entry.model_dump(mode="json")
    data["optional_env"] = [{"name": "PLANTED_SECRET", "secret": True}]
    data["image_digest"] = image_id
    if egress:
        data["network"], data["egress"] = "egress", ["allowed.example.test:443"]
    return CatalogEntry.model_validate(data)


def build_variant(engine: docker.DockerClient, dockerfile: str, files: dict[str, bytes] | None = None) -> str:
    """A local image from a Dockerfile and files (offline, never pulled); its id."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.images.build(fileobj=context, custom_context=True, pull=False, network_mode="none", rm=True,
                                   forcerm=True, labels={LABEL_TEST: "true"})
    return str(image.id)


@pytest.fixture(scope="module")
def variants(engine: docker.DockerClient, verify_settings: Settings, time_image: BuiltImage) -> Iterator[dict[str, str]]:
    """Weakened copies of the `time` image: another image (one label more), one with a shell
    (dash from the cached base), one whose SBOM is not CycloneDX."""
    base = ImageBuilder(engine, verify_settings).ensure_base()
    made = {
        DIGEST: build_variant(engine, f"FROM {time_image.tag}\nLABEL {LABEL_TEST}.tampered=true\n"),
        SHELL: build_variant(engine, f"FROM {base} AS shell\nFROM {time_image.tag}\n"
                                     "COPY --from=shell /usr/bin/dash /usr/bin/sh\n"),
        BAD_SBOM: build_variant(engine, f"FROM {time_image.tag}\nCOPY sbom.json {SBOM_PATH}\n",
                                {"sbom.json": b'{"bomFormat": "SPDX", "components": []}'}),
    }
    yield made
    for image_id in made.values():
        try:
            engine.images.remove(image_id, force=True)
        except docker.errors.APIError:
            pass


@dataclass
class Server:
    slug: str
    token: str
    planted: str
    container_id: str


def store_deployment(settings: Settings, slug: str, deployment_id: str, token: str, env: dict[str, str]) -> None:
    """The control plane's record of a deployment: sealed token and variables (what verify decrypts)."""
    database = Database(settings.resolved_database_url)
    database.migrate()
    sealer = Sealer(load_master_key(settings))
    try:
        with database.session() as session:
            row = Deployment(id=deployment_id, slug=slug, entry="time", status="running",
                             bridge_token=sealer.seal(token.encode(), context=seal_context(deployment_id, "bridge-token")))
            row.variables = [DeploymentVariable(name=name, secret=1, sealed_value=sealer.seal(
                value.encode(), context=seal_context(deployment_id, name))) for name, value in env.items()]
            session.add(row)
    finally:
        database.close()


def deploy(orchestrator: Orchestrator, settings: Settings, entry: CatalogEntry, slug: str,
           **weaken: Any) -> Server:
    """Deploy `slug` properly; with `weaken`, recreate its container with those create() arguments
    changed (same name, labels, network and bootstrap line), the way a careless operator might."""
    token, planted = "tok-" + secrets.token_urlsafe(18), "planted-" + secrets.token_hex(12)
    env = {"PLANTED_SECRET": planted}
    deployment_id = f"dep-{slug}"
    instance = orchestrator.deploy(entry, slug=slug, deployment_id=deployment_id, env=env, bridge_token=token)
    store_deployment(settings, slug, deployment_id, token, env)
    container_id = instance.container_id
    if weaken:
        if "environment" in weaken:
            weaken["environment"] = {k: v.replace("{planted}", planted) for k, v in weaken["environment"].items()}
        original = orchestrator.client.containers.get(container_id)
        image_id = original.attrs["Image"]  # the image deploy used (it is rebuilt when the source changes)
        original.remove(force=True)
        spec = container_spec(entry, slug=slug, deployment_id=deployment_id, image=image_id,
                              network_name=instance.network_name, data_dir=settings.data_dir, owner=orchestrator.owner)
        kwargs = {**spec.create_kwargs(), **weaken}
        container = orchestrator.client.containers.create(**kwargs)
        orchestrator._start_with_stdin(container, (json.dumps({"token": token, "env": env}) + "\n").encode())
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][instance.network_name]["IPAddress"]
        orchestrator._wait_ready(container, slug, f"http://{ip}:8080", token, 60, [token, planted])
        container_id = container.id
    return Server(slug=slug, token=token, planted=planted, container_id=container_id)


@pytest.fixture(scope="module")
def entry(time_entry: CatalogEntry, time_image: BuiltImage) -> CatalogEntry:
    return verified_entry(time_entry)


@pytest.fixture(scope="module")
def egress_entry(time_entry: CatalogEntry) -> CatalogEntry:
    return verified_entry(time_entry, egress=True)


@pytest.fixture(scope="module")
def servers(orchestrator: Orchestrator, verify_settings: Settings, engine: docker.DockerClient,
            entry: CatalogEntry, egress_entry: CatalogEntry, time_image: BuiltImage,
            variants: dict[str, str]) -> Iterator[dict[str, Server]]:
    # in reverse: SHARED holds an endpoint on EXTRA_NET's network
    for slug in reversed(ALL):
        orchestrator.remove(slug)
    extra_network = None
    made: dict[str, Server] = {}
    try:
        made[GOOD] = deploy(orchestrator, verify_settings, entry, GOOD)
        made[EXTRA_NET] = deploy(orchestrator, verify_settings, entry, EXTRA_NET)
        extra_network = engine.networks.create(f"vt-open-{secrets.token_hex(3)}", driver="bridge", internal=False,
                                               labels={LABEL_TEST: "true"})
        extra_network.connect(made[EXTRA_NET].container_id)
        made[SHARED] = deploy(orchestrator, verify_settings, entry, SHARED)
        extra_net_networks = engine.api.inspect_container(made[EXTRA_NET].container_id)["NetworkSettings"]["Networks"]
        [own_network] = [name for name in extra_net_networks if name != extra_network.name]
        engine.networks.get(own_network).connect(made[SHARED].container_id)
        made[CAP] = deploy(orchestrator, verify_settings, entry, CAP, cap_add=["NET_RAW"])
        made[ROOT] = deploy(orchestrator, verify_settings, entry, ROOT, user="0:0")
        made[ENV_SECRET] = deploy(orchestrator, verify_settings, entry, ENV_SECRET,
                                  environment={"PLANTED_SECRET": "{planted}"})
        for slug in (DIGEST, SHELL, BAD_SBOM):
            made[slug] = deploy(orchestrator, verify_settings, entry, slug, image=variants[slug])
        made[NO_PROXY] = deploy(orchestrator, verify_settings, egress_entry, NO_PROXY, environment={})
        yield made
    finally:
        for slug in reversed(ALL):
            orchestrator.remove(slug)
        if extra_network is not None:
            extra_network.remove()


@pytest.fixture(scope="module")
def overrides(time_entry: CatalogEntry, time_image: BuiltImage, engine: docker.DockerClient,
              servers: dict[str, Server]) -> dict[str, CatalogEntry]:
    """Each server's catalog entry as verify should see it: pinned to the image it runs, except
    DIGEST, whose entry pins the `time` image while it runs another."""
    pins = {slug: engine.api.inspect_container(server.container_id)["Image"] for slug, server in servers.items()}
    pins[DIGEST] = time_image.image_id
    return {slug: verified_entry(time_entry, pin, egress=slug == NO_PROXY) for slug, pin in pins.items()}


@pytest.fixture(scope="module")
def report(verify_settings: Settings, engine: docker.DockerClient, servers: dict[str, Server],
           overrides: dict[str, CatalogEntry]) -> dict[str, Any]:
    document = run_verify(verify_settings, client=engine, overrides=overrides)
    assert verify_leftovers(engine) == []
    return document


def cell(document: dict[str, Any], server: str, check: str) -> dict[str, Any]:
    [found] = [r for r in document["results"] if r["server"] == server and r["check"] == check]
    return found


def evidence(result: dict[str, Any]) -> str:
    return "\n".join(result["evidence"])


# -- the run ------------------------------------------------------------------------------------------
def test_a_proper_deployment_passes_every_check(report: dict[str, Any]) -> None:
    assert report["errors"] == []
    results = {r["check"]: r for r in report["results"] if r["server"] == GOOD}
    assert set(results) == CHECKS
    assert {c: r["status"] for c, r in results.items()} == dict.fromkeys(CHECKS, "pass"), \
        {c: r["detail"] for c, r in results.items() if r["status"] != "pass"}
    # the evidence says what was tried, from inside
    assert "127.0.0.1:8080 (the server's bridge) connected from inside" in evidence(results["host"])
    assert "172.17.0.1" in evidence(results["host"])  # docker0
    for other in (CAP, ROOT):
        assert f"{other} at " in evidence(results["pivot"])
    assert "canary by raw IP (direct)" in evidence(results["egress"])
    assert "203.0.113." in evidence(results["egress"])
    assert "Uid=65534 CapEff=0000000000000000 NoNewPrivs=1 Seccomp=2 CapBnd=0000000000000000" in evidence(results["hardening"])
    assert "PASS: image pinned by digest: the container runs sha256:" in evidence(results["hardening"])
    assert "PASS: image built from the catalog's recipe: mcp-server-time 2026.10.19" in evidence(results["hardening"])
    assert (f"PASS: SBOM {SBOM_PATH}: CycloneDX" in evidence(results["hardening"])
            and "lists pkg:pypi/mcp-server-time@2026.10.19" in evidence(results["hardening"]))
    assert "PLANTED_SECRET" in evidence(results["secrets"])


def test_an_extra_non_internal_network_fails_bridge(report: dict[str, Any]) -> None:
    bridge = cell(report, EXTRA_NET, "bridge")
    assert bridge["status"] == "fail"
    assert "Internal=false" in bridge["detail"] and "vt-open-" in bridge["detail"]
    # and hardening/secrets are not blamed for it
    assert cell(report, EXTRA_NET, "hardening")["status"] == "pass"
    assert cell(report, EXTRA_NET, "secrets")["status"] == "pass"


def test_an_added_capability_fails_hardening(report: dict[str, Any]) -> None:
    hardening = cell(report, CAP, "hardening")
    assert hardening["status"] == "fail"
    assert "capabilities added: NET_RAW" in hardening["detail"]
    # seen from inside too: the probe with the server's security context, and the server's init
    assert "FAIL: probe (same security context): capabilities in the bounding set" in evidence(hardening)
    assert "FAIL: server init (/proc/1): capabilities in the bounding set" in evidence(hardening)
    assert "CapBnd=0000000000002000" in evidence(hardening)  # bit 13: CAP_NET_RAW
    for check in ("bridge", "host", "pivot", "egress", "secrets"):
        assert cell(report, CAP, check)["status"] == "pass", cell(report, CAP, check)


def test_running_as_root_fails_hardening(report: dict[str, Any]) -> None:
    hardening = cell(report, ROOT, "hardening")
    assert hardening["status"] == "fail"
    assert "runs as root" in hardening["detail"]
    assert "Uid=0 " in evidence(hardening)
    for check in ("bridge", "host", "pivot", "egress", "secrets"):
        assert cell(report, ROOT, check)["status"] == "pass", cell(report, ROOT, check)


def test_a_secret_in_the_environment_fails_secrets(report: dict[str, Any], servers: dict[str, Server]) -> None:
    result = cell(report, ENV_SECRET, "secrets")
    assert result["status"] == "fail"
    assert "PLANTED_SECRET appears in docker inspect (container)" in result["detail"]
    # the report names the variable, never its value
    text = json.dumps(report)
    for server in servers.values():
        assert server.planted not in text and server.token not in text
    assert cell(report, ENV_SECRET, "hardening")["status"] == "pass"


def test_a_network_shared_with_another_server_fails_bridge(report: dict[str, Any]) -> None:
    bridge = cell(report, SHARED, "bridge")
    assert bridge["status"] == "fail"
    assert "is shared with another server's container" in bridge["detail"] and f"({EXTRA_NET})" in bridge["detail"]
    # the other side sees it too
    assert f"({SHARED})" in cell(report, EXTRA_NET, "bridge")["detail"]
    for check in ("hardening", "secrets"):
        assert cell(report, SHARED, check)["status"] == "pass", cell(report, SHARED, check)


def test_an_image_other_than_the_pinned_one_fails_hardening(
    report: dict[str, Any], time_image: BuiltImage, variants: dict[str, str],
) -> None:
    hardening = cell(report, DIGEST, "hardening")
    assert hardening["status"] == "fail"
    assert (f"image digest mismatch: the container runs {variants[DIGEST]}, the catalog pins {time_image.image_id}"
            == hardening["detail"])
    for check in ("bridge", "host", "pivot", "egress", "secrets"):
        assert cell(report, DIGEST, check)["status"] == "pass", cell(report, DIGEST, check)


def test_a_shell_in_the_image_fails_hardening(report: dict[str, Any]) -> None:
    hardening = cell(report, SHELL, "hardening")
    assert hardening["status"] == "fail"
    assert "shell or package manager in the image: " in hardening["detail"] and "/usr/bin/sh" in hardening["detail"]
    assert "PASS: image pinned by digest" in evidence(hardening)  # only the shell is wrong
    assert "no shell or package manager" in evidence(cell(report, GOOD, "hardening"))


def test_an_sbom_that_is_not_cyclonedx_fails_hardening(report: dict[str, Any]) -> None:
    hardening = cell(report, BAD_SBOM, "hardening")
    assert hardening["status"] == "fail"
    assert hardening["detail"] == (f"SBOM {SBOM_PATH} unreadable in the running container: "
                                   "not a CycloneDX document (bomFormat)")


def test_an_egress_server_without_https_proxy_fails_egress(report: dict[str, Any]) -> None:
    egress = cell(report, NO_PROXY, "egress")
    assert egress["status"] == "fail"
    assert "profile egress but the container has no HTTPS_PROXY" in egress["detail"]
    # its own egress proxy on its network is recognised as such, not as another server
    bridge = cell(report, NO_PROXY, "bridge")
    assert bridge["status"] == "pass" and "a sidecar of the same deployment (its egress proxy)" in evidence(bridge)
    assert cell(report, NO_PROXY, "hardening")["status"] == "pass"


def test_the_document_and_latest_json(report: dict[str, Any], verify_settings: Settings) -> None:
    assert report["exit_status"] == 1 and report["passed"] is False
    assert set(report["servers_checked"]) == set(ALL)
    assert report["summary"]["fail"] == sum(1 for r in report["results"] if r["status"] == "fail") >= 4
    latest = verify_settings.data_dir / "verify" / "latest.json"
    assert json.loads(latest.read_text())["run_id"] == report["run_id"]
    # the dashboard reads it
    matrix = read_verify_results(latest)
    assert matrix is not None and matrix.problem is None and not matrix.passed
    assert set(matrix.checks) == CHECKS
    rows = dict(matrix.rows)
    assert all(c is not None and c.status == "pass" for c in rows[GOOD])
    hardening = matrix.checks.index("hardening")
    assert rows[ROOT][hardening].status == "fail" and rows[CAP][hardening].status == "fail"


def test_junit_and_html_reports(report: dict[str, Any]) -> None:
    suite = ET.fromstring(junit_xml(report)).find("testsuite")
    assert suite is not None
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    assert len(cases) == len(report["results"])
    assert int(suite.get("failures", "0")) == report["summary"]["fail"]
    assert cases[(f"stockade.verify.{ROOT}", "hardening")].find("failure") is not None
    assert cases[(f"stockade.verify.{GOOD}", "hardening")].find("failure") is None
    page = html_report(report)
    assert page.startswith("<!DOCTYPE html>")
    # self-contained: no external stylesheet, script or image
    for needle in ("<link", " src=", "http://", "https://", "@import"):
        assert needle not in page
    assert f'data-server="{ROOT}" data-check="hardening"' in page and "FAILED" in page


# -- the command ------------------------------------------------------------------------------------
def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("verify")(verify_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `verify` a named subcommand
        pass

    return app


def test_the_command_exit_status_and_report_files(
    verify_settings: Settings, engine: docker.DockerClient, servers: dict[str, Server], tmp_path: Path,
) -> None:
    env = {"STOCKADE_DATA_DIR": str(verify_settings.data_dir),
           "STOCKADE_DATABASE_URL": verify_settings.resolved_database_url}
    runner_ = CliRunner()
    # one good server: exit 0 (the bundled catalog entry has no digest: a warning, not a failure)
    junit, html_file = tmp_path / "good.xml", tmp_path / "good.html"
    result = runner_.invoke(cli_app(), ["verify", "--server", GOOD, "--json", "--junit", str(junit),
                                        "--html", str(html_file)], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert {r["check"]: r["status"] for r in document["results"]} == {
        **dict.fromkeys(CHECKS, "pass"), "hardening": "warn"}
    assert "has no image_digest" in cell(document, GOOD, "hardening")["detail"]
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "0"
    assert "all policies enforced" in html_file.read_text()
    # everything: exit 1, a readable table naming the failures
    result = runner_.invoke(cli_app(), ["verify"], env=env, terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and f"{ROOT} / hardening" in result.stdout
    for slug in ALL:
        assert slug in result.stdout
    # an unknown server is an error, not a pass
    result = runner_.invoke(cli_app(), ["verify", "--server", "vt-no-such-server", "--json"], env=env)
    assert result.exit_code == 1
    assert "no running server named 'vt-no-such-server'" in json.loads(result.stdout)["errors"][0]
    assert verify_leftovers(engine) == []


def test_everything_is_cleaned_up_also_when_a_check_raises(
    verify_settings: Settings, engine: docker.DockerClient, servers: dict[str, Server],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    original = runner.Verifier._check_host

    def spy_then_fail(self: runner.Verifier, target: Any, probe: Any, probe_error: Any, control_ok: bool,
                      addresses: list[str], ports: list[int], canary: Any, peers: list[str]) -> Any:
        seen["port"] = canary.port
        original(self, target, probe, probe_error, control_ok, addresses, ports, canary, peers)
        raise RuntimeError("boom in the middle of a run")

    monkeypatch.setattr(runner.Verifier, "_check_host", spy_then_fail)
    document = run_verify(verify_settings, client=engine, server=GOOD, write=False)
    assert document["exit_status"] == 1
    assert any("boom in the middle of a run" in e for e in document["errors"])
    assert verify_leftovers(engine) == []  # probe containers, namespace, veth
    with pytest.raises(OSError):  # the host canary listener is closed
        socket.create_connection(("127.0.0.1", seen["port"]), timeout=2).close()
