"""Property tests of the pure cores: stdout framing and JSON-RPC id remapping."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.bridge.framing import LineFramer, decode_line
from stockade.bridge.multiplexer import Call, Multiplexer, next_peer_uid

MAX_LINE = 64

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=12))
json_objects = st.dictionaries(st.text(min_size=1, max_size=6), json_scalars, max_size=4)


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes, Any]:
    """One stdout line and what the bridge must make of it (a dict, or None to skip)."""
    kind = draw(st.sampled_from(["json", "json", "garbage", "utf8", "huge", "blank", "crlf", "bad-utf8-json"]))
    if kind == "json":
        value = draw(json_objects)
        line = json.dumps(value, separators=(",", ":")).encode()
        return line, (value if len(line) <= MAX_LINE else None)
    if kind == "crlf":
        value = draw(json_objects)
        line = json.dumps(value, separators=(",", ":")).encode()
        return line + b"\r", (value if len(line) + 1 <= MAX_LINE else None)
    if kind == "garbage":
        return b"#" + draw(st.binary(max_size=40)).replace(b"\n", b""), None
    if kind == "utf8":
        return b"\xff\xfe" + draw(st.binary(max_size=20)).replace(b"\n", b""), None
    if kind == "huge":
        return b'{"k":"' + b"x" * draw(st.integers(MAX_LINE, 4 * MAX_LINE)) + b'"}', None
    if kind == "bad-utf8-json":
        return b'{"k":"a\xffb"}', {"k": "a\ufffdb"}
    return b"   ", None


@settings(max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), max_size=25), st.lists(st.integers(0, 10_000), max_size=30), st.booleans())
def test_framing_never_loses_or_invents_messages(items: list[tuple[bytes, Any]], cuts: list[int],
                                                 trailing_newline: bool) -> None:
    stream = b"\n".join(line for line, _ in items) + (b"\n" if trailing_newline else b"")
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    framer = LineFramer(max_line=MAX_LINE)
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(framer.feed(chunk))
        assert len(framer._buffer) <= MAX_LINE  # never buffers more than one bounded line
    lines.extend(framer.finish())
    decoded = []
    for line in lines:
        result = decode_line(line)
        decoded.extend(result.messages)
    expected = [value for _, value in items if value is not None]
    assert decoded == expected


@settings(database=None)
@given(st.binary(max_size=200))
def test_decode_line_is_total(data: bytes) -> None:
    result = decode_line(data)
    assert all(isinstance(m, dict) for m in result.messages)


# -- id remapping -------------------------------------------------------------------------------


@dataclass(eq=False)
class FakePeer:
    interactive_caps: bool
    uid: int = field(default_factory=next_peer_uid)
    received: list[tuple[dict, Call | None]] = field(default_factory=list)
    counter: int = 0

    def supports(self, capability: str) -> bool:
        return self.interactive_caps

    def next_request_id(self) -> int:
        self.counter += 1
        return self.counter

    def deliver(self, message: dict, call: Call | None) -> None:
        self.received.append((message, call))


operations = st.lists(st.tuples(st.sampled_from(["open", "open", "answer", "progress", "cancel", "server_request",
                                                 "reply", "notify", "garbage"]),
                                st.integers(0, 3), st.integers(0, 50)), max_size=60)


@settings(max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_remapping_never_misdelivers(ops: list[tuple[str, int, int]]) -> None:
    async def scenario() -> None:
        sent: list[dict] = []
        mux = Multiplexer(sent.append)
        peers = [FakePeer(interactive_caps=i % 2 == 0) for i in range(4)]
        # what the test knows about each open call: backend id -> (peer, client id, marker, token)
        truth: dict[int, tuple[FakePeer, Any, int, Any]] = {}
        calls: dict[int, Call] = {}
        answered: set[int] = set()
        cancelled: set[int] = set()
        server_requests: list[tuple[FakePeer, dict, Any]] = []
        marker = 0
        for kind, a, b in ops:
            if kind == "open":
                peer = peers[a]
                marker += 1
                client_id: Any = [1, 2, "1", 0][b % 4]  # ids collide across peers on purpose
                token = [None, 5, "5"][b % 3]
                meta = {"progressToken": token} if token is not None else {}
                method = ["tools/call", "tools/list"][b % 2]
                call = mux.open(peer, {"jsonrpc": "2.0", "id": client_id, "method": method,
                                       "params": {"marker": marker, "_meta": meta}})
                out = sent[-1]
                assert out["id"] == call.backend_id and out["params"]["marker"] == marker
                if token is not None:
                    assert out["params"]["_meta"]["progressToken"] != token or isinstance(token, str)
                for backend_id, (other_peer, other_id, _, _) in list(truth.items()):
                    if other_peer is peer and other_id == client_id and backend_id not in answered:
                        cancelled.add(backend_id)  # superseded
                truth[call.backend_id] = (peer, client_id, marker, token)
                calls[call.backend_id] = call
                assert call.backend_id not in answered
            elif kind == "answer" and truth:
                backend_id = sorted(truth)[b % len(truth)]
                mux.from_backend({"jsonrpc": "2.0", "id": backend_id, "result": {"echo": truth[backend_id][2]}})
                answered.add(backend_id)
            elif kind == "progress" and calls:
                backend_id = sorted(calls)[b % len(calls)]
                call = calls[backend_id]
                if call.backend_token is not None:
                    before = len(call.inbox) + len(call.peer.received)  # type: ignore[attr-defined]
                    mux.from_backend({"jsonrpc": "2.0", "method": "notifications/progress",
                                      "params": {"progressToken": call.backend_token, "progress": b}})
                    peer = truth[backend_id][0]
                    if not call.done:
                        message, related = peer.received[-1]
                        assert related is call
                        assert message["params"]["progressToken"] == truth[backend_id][3]
                    else:
                        assert len(call.inbox) + len(peer.received) == before
            elif kind == "cancel" and calls:
                backend_id = sorted(calls)[b % len(calls)]
                peer, client_id, _, _ = truth[backend_id]
                live = [bid for bid, (p, cid, _, _) in truth.items()
                        if p is peer and cid == client_id and not calls[bid].done]
                mux.from_client_notification(peer, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                                    "params": {"requestId": client_id}})
                assert len(live) <= 1  # one live call per (peer, id): a reuse supersedes
                for bid in live:  # the cancel reaches the call holding that id now, and no other
                    assert calls[bid].done
                    cancelled.add(bid)
            elif kind == "server_request":
                interactive = {c.peer.uid for c in calls.values() if not c.done and c.interactive}
                sent_before = len(sent)
                backend_request_id = 10_000 + b
                counts = {p.uid: len(p.received) for p in peers}
                mux.from_backend({"jsonrpc": "2.0", "id": backend_request_id, "method": "sampling/createMessage",
                                  "params": {}})
                receivers = [p for p in peers if len(p.received) > counts[p.uid]]
                if len(interactive) == 1 and next(p for p in peers if p.uid in interactive).interactive_caps:
                    assert len(receivers) == 1 and receivers[0].uid in interactive
                    message, related = receivers[0].received[-1]
                    assert related is not None and related.peer is receivers[0]
                    server_requests.append((receivers[0], message, backend_request_id))
                else:
                    assert receivers == []
                    assert len(sent) == sent_before + 1 and "error" in sent[-1]
                    assert sent[-1]["id"] == backend_request_id
            elif kind == "reply" and server_requests:
                peer, message, backend_request_id = server_requests.pop(b % len(server_requests))
                ok = mux.from_client_response(peer, {"jsonrpc": "2.0", "id": message["id"], "result": {"r": 1}})
                if ok:
                    assert sent[-1] == {"jsonrpc": "2.0", "id": backend_request_id, "result": {"r": 1}}
                # a different peer can never answer it
                assert not mux.from_client_response(peers[(peers.index(peer) + 1) % 4],
                                                    {"jsonrpc": "2.0", "id": message["id"], "result": {}})
            elif kind == "notify":
                counts = {p.uid: len(p.received) for p in peers}
                mux.from_backend({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": b}})
                receivers = [p for p in peers if len(p.received) > counts[p.uid]]
                interactive = {c.peer.uid for c in calls.values() if not c.done and c.interactive}
                assert len(receivers) == (1 if len(interactive) == 1 else 0)
            elif kind == "garbage":
                mux.from_backend({"jsonrpc": "2.0", "id": 99_999 + b, "result": {}})  # unknown id: dropped
                mux.from_backend({"unexpected": True})

        # every answered call got exactly its own answer, under its own client id, once
        for backend_id, call in calls.items():
            peer, client_id, marker_value, _ = truth[backend_id]
            responses = []
            while (message := call.inbox.get_nowait()) is not None:
                if "method" not in message:
                    responses.append(message)
            assert len(responses) <= 1
            if responses:
                assert responses[0]["id"] == client_id
                if "result" in responses[0]:
                    assert responses[0]["result"] == {"echo": marker_value}
                    assert backend_id in answered
                else:
                    assert backend_id in cancelled
            elif backend_id in answered and backend_id not in cancelled:
                raise AssertionError("an answered call got no answer")

    anyio.run(scenario)
