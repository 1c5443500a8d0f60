"""The CLI's client for the management API (the CLI mirrors the API; it does not bypass it)."""

from __future__ import annotations

from typing import Any

import httpx2

from stockade.config import Settings
from stockade.errors import AuthenticationError, EngineError, StockadeError


class ApiClient:
    def __init__(self, settings: Settings, *, timeout: float = 600.0) -> None:
        if settings.token is None:
            raise AuthenticationError(
                "no admin token for the management API",
                hint="set STOCKADE_TOKEN (printed by `stockade up`, or mint one with `stockade admin-token`)",
            )
        self._base = settings.control_url
        self._http = httpx2.Client(
            base_url=self._base,
            headers={"Authorization": f"Bearer {settings.token.get_secret_value()}"},
            timeout=timeout,
        )

    def request(self, method: str, path: str, *, text: bool = False, **kwargs: Any) -> Any:
        """The JSON answer (or with `text`, the body as text); API errors raise `StockadeError`."""
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx2.TransportError as exc:
            raise EngineError(
                f"cannot reach the management API at {self._base}: {exc}",
                hint="is `stockade up` (or `stockade serve`) running? check STOCKADE_CONTROL_PORT",
            ) from None
        if response.status_code >= 400:
            raise _api_error(response)
        if text:
            return response.text
        return response.json() if response.content else None


def _api_error(response: httpx2.Response) -> StockadeError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and "error" in body:
        message, hint = str(body["error"]), body.get("hint")
    elif isinstance(body, dict) and isinstance(body.get("detail"), list):
        message = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in body["detail"])
        hint = None
    else:
        message, hint = f"HTTP {response.status_code}: {response.text[:200]}", None
    error = StockadeError(message, hint=hint)
    error.status_code = response.status_code
    return error
