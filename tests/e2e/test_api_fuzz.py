"""schemathesis against the live management API: no 5xx, and every answer is one the document declares.

A real platform (real engine, real database) is tested through its own OpenAPI document with an
admin token and every schemathesis check: server errors; response bodies, status codes, content
types and headers against the document; invalid input rejected, valid input accepted; auth not
ignored; `Allow` on unsupported methods. schemathesis feeds values from earlier answers (slugs,
member names, token ids) into later requests, so destructive routes meet real data:
- revoking the run's own token, or offboarding `admin`, is a real outcome and stays in: the auth
  provider then mints a new admin token with the CLI (as a locked-out operator would) and
  schemathesis replays the request with it;
- the seeded deployment and whatever the run deploys are removed by the `platform` fixture
  (`remove_deployments`) when the module ends.

The run goes through schemathesis' engine (what `st run` drives): its pytest plugin cannot run on
pytest 9.2 (it renames test items through `Node._nodeid`, which pytest 9.2 removed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import schemathesis
from schemathesis import AuthContext, Case
from schemathesis.engine import Status, StopReason, events, from_schema
from schemathesis.schemas import BaseSchema

from tests.conftest import RunningPlatform

# What the positive_data_acceptance check accepts by default (5xx are not_a_server_error's to report).
ACCEPTED_BY_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# Bounded so the run takes minutes on two cores; every operation also gets schemathesis' coverage
# cases (boundary and invalid values), which this limit does not count.
CONFIG = {
    # No NUL characters: the API refuses them with 422 on every route (PostgreSQL text cannot hold
    # one; tests/e2e/test_management_api.py proves the refusal), a rule the OpenAPI document does
    # not state, so a generated NUL would count as "valid data rejected".
    "generation": {"max-examples": 15, "allow-x00": False},
    "workers": 1,
    # A deploy or restart blocks until the container is ready.
    "request-timeout": 300,
    # Input the document cannot constrain, because the constraint is data: a member's role must
    # exist, a deployment's variables must be ones its catalog entry declares (required ones
    # non-empty). Schema-valid requests breaking those are refused with 422, as they should be.
    "operations": [
        {"include-method": method, "include-path": path,
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED_BY_DEFAULT, "422"]}}}
        for method, path in [("POST", "/api/v1/members"), ("POST", "/api/v1/deployments"),
                             ("PUT", "/api/v1/deployments/{slug}/variables"),
                             ("POST", "/api/v1/deployments/{slug}/variables:rotate")]
    ],
}


def seed(platform: RunningPlatform) -> None:
    """Something for every route to find: a running server, a custom role, a member with a token."""
    with platform.api() as api:
        assert api.post("/deployments", json={"server": "time", "slug": "seeded"}).status_code == 201
        assert api.put("/roles/fuzz-role", json={"rules": [{"effect": "allow", "server": "seeded"}]}).status_code == 200
        assert api.post("/members", json={"name": "fuzz-member", "role": "fuzz-role"}).status_code == 201
        assert api.post("/members/fuzz-member/tokens", json={"name": "seed"}).status_code == 201


def mint_admin_token(platform: RunningPlatform) -> str:
    return platform.cli("admin-token", "--name", "schemathesis").stdout.strip()


def load_schema(platform: RunningPlatform) -> BaseSchema:
    schema = schemathesis.openapi.from_url(f"{platform.control_url}/api/openapi.json",
                                           config=schemathesis.Config.from_dict(CONFIG))

    @schema.auth(refresh_interval=3600, retry_on=[401])
    class AdminToken:
        def get(self, _case: Case, _ctx: AuthContext) -> str:
            return mint_admin_token(platform)

        def set(self, case: Case, token: str, _ctx: AuthContext) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    return schema


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)  # every failure and error, as text to read
    scenarios: int = 0
    stop_reason: StopReason | None = None
    reauths: int = 0  # requests replayed with a fresh token after the run revoked its own
    statuses: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))  # operation -> answers

    def locked_out(self) -> list[str]:
        """Operations that only ever answered 401/403: a run that lost its token would pass unseen."""
        return sorted(label for label, seen in self.statuses.items() if seen <= {401, 403})


def run(schema: BaseSchema) -> Outcome:
    outcome = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            outcome.scenarios += 1
            for case_id, interaction in event.recorder.interactions.items():
                if interaction.response is not None:
                    label = event.recorder.cases[case_id].value.operation.label
                    outcome.statuses[label].add(interaction.response.status_code)
            if event.status is Status.FAILURE:
                for checks in event.recorder.checks.values():
                    for check in checks:
                        if check.failure_info is not None:
                            failure = check.failure_info.failure
                            outcome.problems.append(f"{event.recorder.label}: {failure.title}\n{failure.message}\n"
                                                    f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            outcome.problems.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            outcome.problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            outcome.problems.extend(str(failure) for failure in event.failures)
            outcome.stop_reason = event.stop_reason
            outcome.reauths = event.payload.reauth_count if event.payload else 0
    return outcome


def test_every_answer_is_declared_in_the_openapi_document(platform: RunningPlatform) -> None:
    seed(platform)
    try:
        outcome = run(load_schema(platform))
    finally:
        # the run may have revoked every admin token; the fixture's teardown needs a valid one
        platform.admin_token = mint_admin_token(platform)
    print(f"schemathesis: {outcome.scenarios} scenarios, {outcome.reauths} replayed with a fresh admin token")
    assert not outcome.problems, "\n\n".join([*outcome.problems, "platform errors:", *platform.logged_errors()])
    assert outcome.stop_reason is StopReason.COMPLETED and outcome.scenarios > 0
    assert not outcome.locked_out(), outcome.locked_out()
