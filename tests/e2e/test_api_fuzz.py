"""Bad input against every management route: no 5xx, no stack trace, always a JSON error.

schemathesis would be the tool of choice; its distribution files could not be fetched on this
machine (pip: "No route to host" for that package alone), so this walks the OpenAPI document
with hypothesis-generated parameters and bodies instead.
"""

from __future__ import annotations

import re
import string

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningPlatform

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_.~%@:", min_size=1, max_size=40)


@pytest.fixture(scope="module")
def operations(platform: RunningPlatform) -> list[tuple[str, str, list[str]]]:
    document = httpx2.get(f"{platform.control_url}/api/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            queries = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            found.append((method.upper(), path, queries))
    return found


def test_no_route_answers_bad_input_with_a_server_error(platform: RunningPlatform, operations) -> None:
    client = httpx2.Client(base_url=platform.control_url, headers=platform.admin_headers, timeout=60)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        method, path, queries = data.draw(st.sampled_from(operations))
        if method == "POST" and path == "/api/v1/deployments":
            body = data.draw(st.fixed_dictionaries({"server": st.text(max_size=10)}, optional={"env": JSON, "slug": JSON}))
        else:
            body = data.draw(JSON)
        url = re.sub(r"\{[^}]+\}", lambda _: data.draw(SEGMENT), path)
        params = {name: data.draw(st.text(max_size=20)) for name in queries if data.draw(st.booleans())}
        response = client.request(method, url, params=params, json=body)
        assert response.status_code < 500, (method, url, params, body, response.status_code, response.text[:300])
        assert "Traceback" not in response.text
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json"), response.text[:200]

    try:
        check()
    finally:
        client.close()
