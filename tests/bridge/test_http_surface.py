"""The bridge's HTTP surface on the wire: auth, Origin, size, sessions, versions, REST, /ready."""

from __future__ import annotations

import httpx2

from .conftest import Bridge
from .rawmcp import (
    ACCEPT_BOTH,
    MODERN,
    initialize,
    messages_of,
    modern_headers,
    modern_request,
    parse_sse,
    session_headers,
)


def test_health_needs_no_token(fixture_bridge: Bridge) -> None:
    response = httpx2.get(f"{fixture_bridge.base}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_ready_reports_backend(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        body = http.get("/ready").json()
    assert body["status"] == "ready"
    assert body["protocol"] == "2025-11-25"
    assert body["server"]["name"] == "stockade-fixture"


def test_token_required_everywhere_but_health(fixture_bridge: Bridge) -> None:
    base = fixture_bridge.base
    for method, path in [("GET", "/ready"), ("GET", "/tools"), ("POST", "/tools/echo/call"), ("POST", "/mcp"),
                         ("GET", "/mcp"), ("DELETE", "/mcp")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic dGVzdA=="},
                        {"Authorization": f"Bearer {fixture_bridge.token}x"}):
            response = httpx2.request(method, base + path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"] == "invalid_token"
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_bad_origin_is_forbidden_and_loopback_origin_allowed(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        evil = http.post("/mcp", json={}, headers={"origin": "https://evil.example.test", "accept": ACCEPT_BOTH})
        assert evil.status_code == 403
        assert http.get("/tools", headers={"origin": "null"}).status_code == 403
        local = http.get("/tools", headers={"origin": f"http://127.0.0.1:{fixture_bridge.port}"})
        assert local.status_code == 200
        assert http.get("/tools").status_code == 200  # no Origin at all is fine


def test_oversized_body_is_413(fixture_bridge: Bridge) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":"' + b"x" * (4 * 1024 * 1024) + b'"}}'
    with fixture_bridge.client() as http:
        response = http.post("/mcp", content=big, headers={"content-type": "application/json",
                                                           "accept": ACCEPT_BOTH})
        assert response.status_code == 413

        def chunks():  # no Content-Length: cut while reading
            yield big[:1024]
            yield big[1024:]

        streamed = http.post("/mcp", content=chunks(), headers={"content-type": "application/json",
                                                               "accept": ACCEPT_BOTH})
        assert streamed.status_code == 413
        rest = http.post("/tools/echo/call", content=chunks(), headers={"content-type": "application/json"})
        assert rest.status_code == 413


def test_no_redirects(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client(follow_redirects=False) as http:
        assert http.post("/mcp/", json={}).status_code == 404
        assert http.get("/tools/").status_code == 404


def test_legacy_session_lifecycle(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        session_id = initialize(http)
        assert len(session_id) >= 32
        listed = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers=session_headers(session_id))
        assert listed.status_code == 200
        assert any(t["name"] == "echo" for t in messages_of(listed)[0]["result"]["tools"])
        bad_version = http.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                headers=session_headers(session_id, "1999-01-01"))
        assert bad_version.status_code == 400
        unknown = http.post("/mcp", json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                            headers=session_headers("not-a-session"))
        assert unknown.status_code == 404
        missing = http.post("/mcp", json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"},
                            headers={"accept": ACCEPT_BOTH})
        assert missing.status_code == 400
        notification = http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
                                 headers=session_headers(session_id))
        assert notification.status_code == 202
        assert http.delete("/mcp", headers=session_headers(session_id)).status_code == 200
        after = http.post("/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
                          headers=session_headers(session_id))
        assert after.status_code == 404
        assert http.delete("/mcp", headers=session_headers(session_id)).status_code == 404
        assert http.get("/mcp", headers=session_headers(session_id)).status_code == 404


def test_legacy_json_only_client_and_version_negotiation(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        response = http.post("/mcp", json={
            "jsonrpc": "2.0", "id": "init", "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}},
            headers={"accept": "application/json"})
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["result"]["protocolVersion"] == "2025-03-26"
        assert response.json()["id"] == "init"
        future = http.post("/mcp", json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2099-01-01", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}},
            headers={"accept": "application/json"})
        assert future.json()["result"]["protocolVersion"] == "2025-11-25"
        session_id = response.headers["mcp-session-id"]
        call = http.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                       "params": {"name": "echo", "arguments": {"text": "json"}}},
                         headers={"accept": "application/json", "mcp-session-id": session_id})
        assert call.headers["content-type"].startswith("application/json")
        assert call.json()["id"] == 7
        assert call.json()["result"]["content"][0]["text"] == "json"
        assert http.post("/mcp", json={"jsonrpc": "2.0", "id": 8, "method": "ping"},
                         headers={"accept": "text/html", "mcp-session-id": session_id}).status_code == 406
        assert http.post("/mcp", content=b"{not json", headers={"content-type": "application/json",
                         "accept": ACCEPT_BOTH, "mcp-session-id": session_id}).status_code == 400
        assert http.post("/mcp", content=b"{}", headers={"content-type": "text/plain",
                         "accept": ACCEPT_BOTH, "mcp-session-id": session_id}).status_code == 415


def test_get_stream_resumes_from_last_event_id(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        session_id = initialize(http)
        for i in range(2):  # each sends notifications/tools/list_changed: broadcast to the GET streams
            http.post("/mcp", json={"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                                    "params": {"name": "change_tools", "arguments": {}}},
                      headers=session_headers(session_id))
        events: list[tuple[str, dict]] = []
        with http.stream("GET", "/mcp", headers=session_headers(session_id)) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert http.get("/mcp", headers=session_headers(session_id)).status_code == 409
            block: list[str] = []
            for line in stream.iter_lines():
                if line:
                    block.append(line)
                    continue
                if any(b.startswith("data:") for b in block):
                    event_id = next(b[3:].strip() for b in block if b.startswith("id:"))
                    data = next(b[5:].strip() for b in block if b.startswith("data:"))
                    import json
                    events.append((event_id, json.loads(data)))
                block = []
                if len(events) == 2:
                    break
        assert [e[1]["method"] for e in events] == ["notifications/tools/list_changed"] * 2
        first_id = events[0][0]
        with http.stream("GET", "/mcp", headers={**session_headers(session_id), "last-event-id": first_id}) as again:
            for line in again.iter_lines():
                if line.startswith("id:"):
                    assert line[3:].strip() == events[1][0]
                    break


def test_modern_stateless_requests(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        discover = http.post("/mcp", json=modern_request(1, "server/discover"),
                             headers=modern_headers("server/discover"))
        assert discover.status_code == 200
        result = discover.json()["result"]
        assert result["supportedVersions"] == [MODERN]
        assert result["resultType"] == "complete"
        assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "stockade-fixture"
        assert "mcp-session-id" not in discover.headers

        call = http.post("/mcp", json=modern_request("a", "tools/call", {"name": "echo", "arguments": {"text": "x"}}),
                         headers=modern_headers("tools/call", "echo"))
        message = messages_of(call)[0]
        assert message["id"] == "a"
        assert message["result"]["content"][0]["text"] == "x"
        assert message["result"]["resultType"] == "complete"

        mismatch = http.post("/mcp", json=modern_request(2, "tools/call", {"name": "echo", "arguments": {"text": "x"}}),
                             headers=modern_headers("tools/call", "other"))
        assert mismatch.status_code == 400
        assert mismatch.json()["error"]["code"] == -32020
        wrong_method = http.post("/mcp", json=modern_request(3, "tools/list"), headers=modern_headers("tools/call"))
        assert wrong_method.json()["error"]["code"] == -32020

        future = modern_request(4, "tools/list")
        future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
        unsupported = http.post("/mcp", json=future, headers={**modern_headers("tools/list"),
                                                              "mcp-protocol-version": "2099-01-01"})
        assert unsupported.status_code == 400
        error = unsupported.json()["error"]
        assert error["code"] == -32022
        assert error["data"]["supported"] == [MODERN]

        no_meta = http.post("/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}},
                            headers=modern_headers("tools/list"))
        assert no_meta.status_code == 400
        assert no_meta.json()["error"]["code"] == -32602

        notification = http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}},
                                 headers=modern_headers("notifications/cancelled"))
        assert notification.status_code == 202

        unknown_method = http.post("/mcp", json=modern_request(6, "no/such/method"),
                                   headers=modern_headers("no/such/method"))
        assert unknown_method.json()["error"]["code"] == -32601


def test_modern_subscriptions_listen(fixture_bridge: Bridge) -> None:
    import json
    import threading

    with fixture_bridge.client() as http:
        body = modern_request("listen-1", "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        received: list[dict] = []
        with http.stream("POST", "/mcp", json=body, headers=modern_headers("subscriptions/listen")) as stream:
            lines = stream.iter_lines()
            triggered = False
            for line in lines:
                if not line.startswith("data:"):
                    continue
                received.append(json.loads(line[5:]))
                if len(received) == 1:
                    ack = received[0]
                    assert ack["method"] == "notifications/subscriptions/acknowledged"
                    assert ack["params"]["notifications"] == {"toolsListChanged": True}
                    assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1"

                    def trigger() -> None:
                        with fixture_bridge.client() as other:
                            other.post("/mcp", json=modern_request(9, "tools/call",
                                                                   {"name": "change_tools", "arguments": {}}),
                                       headers=modern_headers("tools/call", "change_tools"))

                    threading.Thread(target=trigger).start()
                    triggered = True
                elif triggered:
                    break
        event = received[1]
        assert event["method"] == "notifications/tools/list_changed"
        assert event["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1"


def test_rest_endpoints(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        tools = http.get("/tools").json()["tools"]
        assert {"echo", "sample"} <= {t["name"] for t in tools}
        ok = http.post("/tools/echo/call", json={"text": "rest"})
        assert ok.status_code == 200
        assert ok.json()["content"][0]["text"] == "rest"
        assert ok.json()["isError"] is False
        assert http.post("/tools/no-such-tool/call", json={}).status_code == 404
        assert http.post("/tools/echo/call", content=b"[1]",
                         headers={"content-type": "application/json"}).status_code == 400
        assert http.post("/tools/echo/call", content=b"{bad",
                         headers={"content-type": "application/json"}).status_code == 400
        # a tool that needs a client (sampling) cannot be served over REST: a failure, not a hang
        sampled = http.post("/tools/sample/call", json={"prompt": "x"})
        assert sampled.status_code in (200, 502)
        if sampled.status_code == 200:
            assert sampled.json()["isError"] is True
        else:
            assert "cannot route sampling/createMessage" in sampled.text


def test_sse_answer_carries_progress(fixture_bridge: Bridge) -> None:
    with fixture_bridge.client() as http:
        session_id = initialize(http)
        response = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "tok"}}},
            headers=session_headers(session_id))
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = parse_sse(response.text)
        progress = [m for m in messages if m.get("method") == "notifications/progress"]
        assert [p["params"]["progressToken"] for p in progress] == ["tok", "tok"]
        assert messages[-1]["id"] == 1 and messages[-1]["result"]["content"][0]["text"] == "done 2"
