"""Platforms (`os/arch[/variant]`) and matching them against index entries."""

from __future__ import annotations

import platform as _host
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from acceld.errors import AcceldError


class InvalidPlatform(AcceldError):
    """A platform string that is not `os/arch[/variant]`."""


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm"}
# The variant an architecture has when none is written (containerd's normalisation).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


class Platform(BaseModel):
    """The `platform` object of an index entry; unknown fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    architecture: str
    os: str
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: list[str] | None = Field(default=None, alias="os.features")
    variant: str | None = None
    features: list[str] | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse `os/arch[/variant]`, e.g. `linux/arm64/v8`."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidPlatform(f"invalid platform {text!r}: expected os/arch[/variant]")
        os_name, arch = parts[0].lower(), parts[1].lower()
        variant = parts[2].lower() if len(parts) == 3 else None
        return cls(os=os_name, architecture=arch, variant=variant)

    @classmethod
    def host(cls) -> Platform:
        machine = _host.machine().lower()
        return cls(os="linux", architecture=_ARCH_ALIASES.get(machine, machine))

    def normalized(self) -> tuple[str, str, str | None]:
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = (self.variant or "").lower() or _DEFAULT_VARIANT.get(arch)
        if arch == "arm64" and variant == "8":
            variant = "v8"
        return self.os.lower(), arch, variant

    def matches(self, candidate: Platform) -> bool:
        """True if `candidate` (an index entry's platform) satisfies this wanted platform.

        A wanted platform without a variant accepts any variant of its architecture.
        """
        os_name, arch, variant = self.normalized()
        c_os, c_arch, c_variant = candidate.normalized()
        if (os_name, arch) != (c_os, c_arch):
            return False
        return self.variant is None or variant == c_variant

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)
