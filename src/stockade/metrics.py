"""Prometheus metrics of one Stockade process (served, authenticated, by the management API)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CALLS = Counter(
    "stockade_calls", "MCP requests through the gateway, by server, method, tool and outcome",
    ["server", "method", "tool", "outcome"], registry=REGISTRY,
)
LATENCY = Histogram(
    "stockade_call_latency_seconds", "Gateway-to-answer latency of MCP requests, by server and method",
    ["server", "method"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DENIALS = Counter("stockade_denials", "Requests refused by policy or pinning, by server", ["server"], registry=REGISTRY)
AUTH_FAILURES = Counter("stockade_auth_failures", "Requests refused for want of a valid token", registry=REGISTRY)
RATE_LIMITED = Counter("stockade_rate_limited", "Requests refused by the per-member rate limit", registry=REGISTRY)
EGRESS_DENIALS = Counter(
    "stockade_egress_denials", "Outbound connections the egress proxy refused, by server", ["server"], registry=REGISTRY
)
RESTARTS = Gauge("stockade_server_restarts", "Restarts of each server's process or container", ["server"], registry=REGISTRY)
ACTIVE_SESSIONS = Gauge("stockade_active_sessions", "MCP sessions the gateway holds open", registry=REGISTRY)
