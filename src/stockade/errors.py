"""The one error hierarchy of Stockade.

Every error a user can see is a `StockadeError`: its message says what went wrong and, where there
is one, what to do about it (`hint`). API layers map `status_code` onto HTTP; the CLI prints
`message` and `hint` and exits non-zero. Lower layers raise these; they never print.
"""

from __future__ import annotations


class StockadeError(Exception):
    """Base class. `status_code` is the HTTP status an API answers with."""

    status_code: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(StockadeError):
    """Settings, catalog or other user-supplied configuration is invalid."""

    status_code = 422


class NotFoundError(StockadeError):
    status_code = 404


class ConflictError(StockadeError):
    status_code = 409


class ValidationFailed(StockadeError):
    """Request input is well-formed but not acceptable (for example a missing required variable)."""

    status_code = 422


class AuthenticationError(StockadeError):
    status_code = 401


class PermissionDenied(StockadeError):
    status_code = 403


class EngineError(StockadeError):
    """The container engine is missing, unreachable or refused an operation."""

    status_code = 503


class ImageBuildError(StockadeError):
    """Building a local image failed (download, base rootfs or docker build)."""

    status_code = 500


class DeploymentError(StockadeError):
    """A server container did not start or did not become ready."""

    status_code = 502


class BackendError(StockadeError):
    """The MCP server process behind a bridge failed (exited, timed out, spoke garbage)."""

    status_code = 502


class SecretsError(StockadeError):
    """The master key is missing or wrong, or a secret cannot be decrypted."""

    status_code = 500


class AuditUnavailable(StockadeError):
    """An audit record could not be committed, so the call it belongs to is not acknowledged."""

    status_code = 503
