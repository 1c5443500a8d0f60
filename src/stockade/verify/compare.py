"""`stockade verify --compare ENTRY`: the same catalog entry deployed as `none`, `egress` and `open`
(temporary slugs), the reachability checks run against each, shown side by side, then removed."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from stockade.catalog import CatalogEntry, NetworkProfile
from stockade.errors import NotFoundError
from stockade.verify.canaries import InternetCanary
from stockade.verify.model import FAIL, REACHABILITY_CHECKS

if TYPE_CHECKING:
    from stockade.verify.runner import Verifier

PROFILES = (NetworkProfile.none, NetworkProfile.egress, NetworkProfile.open)
# the allowlist of the temporary `egress` deployment: a name that only verify's own canary could answer
ALLOWED = ("allowed.example.test", 443)
COMPARE_ALLOWLIST = [f"{ALLOWED[0]}:{ALLOWED[1]}"]


def resolve_entry(verifier: Verifier, name_or_image: str) -> CatalogEntry:
    catalog = verifier.catalog
    if catalog is None:
        raise NotFoundError("the catalog could not be loaded")
    for entry in catalog.servers:
        if name_or_image in (entry.name, entry.image):
            return entry
    raise NotFoundError(f"{name_or_image!r} is neither a catalog entry nor the image of one",
                        hint=f"known entries: {', '.join(e.name for e in catalog.servers)}")


def variant(entry: CatalogEntry, profile: NetworkProfile) -> CatalogEntry:
    data = entry.model_dump(mode="json")
    data["network"] = profile.value
    data["egress"] = COMPARE_ALLOWLIST if profile is NetworkProfile.egress else []
    return CatalogEntry.model_validate(data)


def run_compare(verifier: Verifier, name_or_image: str, *, ready_timeout: float = 90.0) -> dict[str, Any]:
    from stockade.orchestrator.runtime import Orchestrator

    entry = resolve_entry(verifier, name_or_image)
    tag = secrets.token_hex(3)
    with InternetCanary() as internet:
        # the egress proxy resolves the allowlisted test name to verify's canary: the positive control
        settings = verifier.settings.model_copy(
            update={"egress_hosts": {**getattr(verifier.settings, "egress_hosts", {}), ALLOWED[0]: internet.address}})
        orchestrator = Orchestrator(settings, client=verifier.client, progress=verifier.progress)
        return _compare(verifier, orchestrator, entry, tag, internet, ready_timeout)


def _compare(verifier: Verifier, orchestrator: Any, entry: CatalogEntry, tag: str, internet: InternetCanary,
             ready_timeout: float) -> dict[str, Any]:
    slugs = {profile.value: f"vc{tag}-{profile.value}" for profile in PROFILES}
    overrides = {slugs[p.value]: variant(entry, p) for p in PROFILES}
    deployed: list[str] = []
    errors: list[str] = []
    results = []
    try:
        for profile in PROFILES:
            slug = slugs[profile.value]
            verifier.progress(f"compare: deploying {entry.name} as {slug} (profile {profile.value})")
            env = {v.name: "verify-compare-dummy" for v in entry.required_env}
            deployed.append(slug)
            try:
                orchestrator.deploy(overrides[slug], slug=slug, deployment_id=f"verify-compare-{tag}", env=env,
                                    bridge_token=secrets.token_urlsafe(24), ready_timeout=ready_timeout)
            except Exception as exc:  # noqa: BLE001 - reported as a result, never raised past the run
                errors.append(f"deploying {slug} (profile {profile.value}) failed: {type(exc).__name__}: {exc}")
        results, run_errors = verifier.run(overrides=overrides, checks=REACHABILITY_CHECKS, secrets_check=False,
                                           only=set(slugs.values()), internet=internet, allowed_control=ALLOWED)
        errors += run_errors
    finally:
        for slug in deployed:
            for attempt in range(5):  # the engine may be restarting: retry before giving up
                try:
                    orchestrator.remove(slug)
                    break
                except Exception as exc:  # noqa: BLE001 - reported as a result, never raised past the run
                    if attempt == 4:
                        errors.append(f"removing {slug} failed: {type(exc).__name__}: {exc} "
                                      f"(remove it with `stockade` or docker rm/network rm)")
                    else:
                        time.sleep(2 * (attempt + 1))
    by_slug = {v: k for k, v in slugs.items()}
    matrix: dict[str, dict[str, dict[str, str]]] = {c: {} for c in REACHABILITY_CHECKS}
    for result in results:
        matrix[result.check][by_slug[result.server]] = {"status": result.status, "detail": result.detail}
    return {
        "entry": entry.name,
        "profiles": [p.value for p in PROFILES],
        "slugs": slugs,
        "matrix": matrix,
        "results": [r.as_dict() for r in results],
        "errors": errors,
        "failed": bool(errors) or any(r.status == FAIL for r in results),
    }
