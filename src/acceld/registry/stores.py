"""Opening image stores for parsed locations, sharing one client per registry host."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acceld.config import AcceldConfig, RegistryConfig
from acceld.oci.reference import LayoutRef, Reference, api_host
from acceld.registry.layout import OCILayout
from acceld.registry.store import ImageStore

if TYPE_CHECKING:  # httpx is imported only when a registry is used: layouts start faster without it
    from acceld.registry.client import RegistryClient
    from acceld.registry.repository import RegistryRepository


class Stores:
    """Hands out stores; `plain_http`/`insecure` override the config for every registry (CLI flags).

    Use as an async context manager (closes the registry clients).
    """

    def __init__(
        self, config: AcceldConfig | None = None, *, plain_http: bool = False, insecure: bool = False
    ) -> None:
        self.config = config or AcceldConfig()
        self._plain_http = plain_http
        self._insecure = insecure
        self._clients: dict[str, RegistryClient] = {}

    async def __aenter__(self) -> Stores:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def settings(self, host: str) -> RegistryConfig:
        settings = self.config.registry(host)
        flags = (("plain_http", self._plain_http), ("insecure", self._insecure))
        overrides = {name: True for name, on in flags if on}
        return settings.model_copy(update=overrides) if overrides else settings

    def client(self, registry: str) -> RegistryClient:
        """The client for a registry named as in references and the config (`docker.io` included)."""
        if registry not in self._clients:
            from acceld.registry.client import RegistryClient

            self._clients[registry] = RegistryClient(api_host(registry), self.settings(registry))
        return self._clients[registry]

    def repository(self, ref: Reference) -> RegistryRepository:
        return self.client(ref.registry).repository(ref.repository)

    def open(self, location: Reference | LayoutRef, *, create: bool = False) -> ImageStore:
        """The store behind a location; `create` initialises a missing OCI layout (destinations)."""
        if isinstance(location, LayoutRef):
            return OCILayout.open(location.path, create=create)
        return self.repository(location)
