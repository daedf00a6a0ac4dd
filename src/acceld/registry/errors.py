"""Registry failures as one-line errors carrying the OCI error code and the repository."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from acceld.errors import AcceldError

if TYPE_CHECKING:
    import httpx


class RegistryError(AcceldError):
    """A failed registry operation. `code` is the registry's OCI error code when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        repository: str | None = None,
        status: int | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message, transient=transient)
        self.code = code
        self.repository = repository
        self.status = status


class AuthenticationError(RegistryError):
    """Missing or wrong credentials."""


class PermissionDenied(RegistryError):
    """Valid credentials without the rights the operation needs."""


class NotFound(RegistryError):
    """A repository, tag, manifest or blob the registry does not have."""


class RegistryUnreachable(RegistryError):
    """Connection refused, DNS failure, TLS failure or timeout."""

    transient = True


def oci_errors(response: httpx.Response) -> list[tuple[str, str]]:
    """The `(code, message)` pairs of an OCI error body; empty when the body is not one."""
    if "json" not in response.headers.get("content-type", ""):
        return []
    try:
        body = json.loads(response.content)
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [(str(e.get("code", "UNKNOWN")), str(e.get("message", ""))) for e in errors if isinstance(e, dict)]


def error_from_response(response: httpx.Response, what: str, repository: str | None) -> RegistryError:
    """Turn a failed response into the matching RegistryError subclass with a one-line message."""
    status = response.status_code
    errors = oci_errors(response)
    code = errors[0][0] if errors else None
    detail = f"{code}: {errors[0][1]}" if errors and errors[0][1] else (code or f"HTTP {status}")
    where = f" in {repository}" if repository else ""
    message = f"{what}{where} failed: {detail}".replace("\n", " ")
    cls: type[RegistryError] = RegistryError
    if status == 404 or code in {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"}:
        cls, message = NotFound, f"{what} not found{where} ({detail})"
    elif status == 403 or code == "DENIED":
        cls, message = (
            PermissionDenied,
            f"insufficient permission for {repository or 'registry'}: {what} ({detail})",
        )
    elif status == 401:
        cls, message = AuthenticationError, f"authentication failed: {what}{where} ({detail})"
    transient = status == 429 or status >= 500
    return cls(message, code=code, repository=repository, status=status, transient=transient)
