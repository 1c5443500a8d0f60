"""A loopback HTTP server answering the one call discovery makes, as the Kubernetes API server does:
GET /api/v1/namespaces/<namespace>/services. No cluster runs where these tests run; the official
client, the gateway and the bridges around it are real."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class FakeApiServer:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.services: list[dict[str, Any]] = []  # Service objects in their JSON form
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append(self.path)
                if urlsplit(self.path).path != f"/api/v1/namespaces/{owner.namespace}/services":
                    self.send_error(404)
                    return
                body = {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                        "items": list(owner.services)}
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeApiServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(path, self.url, self.namespace)


def write_kubeconfig(path: Path, server: str, namespace: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
        "current-context": "x",
    }))
    return path
