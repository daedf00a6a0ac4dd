"""Where a registry client may send credentials and data: the registry's origin rules.

An origin is scheme, host and port (RFC 6454). Credentials (Basic passwords, Bearer tokens)
go only to the registry's own origin; a token realm must be that origin or use https, so a
registry cannot name a plain-http or foreign service that then receives the robot password.
A registry configured with `plain_http` has accepted cleartext for its host: a token service
on the same host over http (another port) is allowed then, as development setups run it.
"""

from __future__ import annotations

import httpx

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: httpx.URL | str) -> Origin:
    url = httpx.URL(url)
    return (url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0))


def describe(origin: Origin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """The origin rules of one registry, whose API lives at `base_url`."""

    def __init__(self, base_url: str) -> None:
        self.origin = origin_of(base_url)

    def is_registry(self, url: httpx.URL | str) -> bool:
        """Whether `url` is on the registry's own origin: only such requests carry credentials."""
        return origin_of(url) == self.origin

    def may_receive_data(self, url: httpx.URL | str) -> bool:
        """Whether a token realm or an upload location at `url` is acceptable: the registry's
        origin, any https origin, or (for a plain-http registry) http on the registry's host."""
        scheme, host, _ = origin_of(url)
        if self.is_registry(url) or scheme == "https":
            return True
        registry_scheme, registry_host, _ = self.origin
        return scheme == "http" and registry_scheme == "http" and host == registry_host
