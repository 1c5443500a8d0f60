"""A minimal stdio MCP server that says which process answered and which key it was given.

Run inside server containers (its source is passed as `python3 -c` in a catalog entry): `whoami`
tells replicas apart (an id drawn at start) and rotations apart (a digest of ROTATED_KEY, never
the value); `sleep` is a call that stays in flight.
"""

import hashlib
import json
import os
import sys
import time
import uuid

ID = uuid.uuid4().hex[:12]
KEY = hashlib.sha256(os.environ.get("ROTATED_KEY", "").encode()).hexdigest()[:16]
TOOLS = [
    {"name": "whoami", "description": "Which process answers, with which key.", "inputSchema": {"type": "object"}},
    {"name": "sleep", "description": "Sleep some seconds, then answer.",
     "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}}},
]


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def text(request_id, value):
    send({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": value}]}})


for line in sys.stdin:
    message = json.loads(line)
    method, request_id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": request_id, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"), "capabilities": {"tools": {}},
            "serverInfo": {"name": "replica-probe", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
    elif method == "tools/call" and params.get("name") == "whoami":
        text(request_id, json.dumps({"instance": ID, "key": KEY}))
    elif method == "tools/call" and params.get("name") == "sleep":
        time.sleep(float((params.get("arguments") or {}).get("seconds", 1)))
        text(request_id, "slept")
    elif request_id is not None:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "method not found"}})
