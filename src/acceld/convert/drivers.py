"""Format drivers by name, built from option mappings."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from acceld.errors import AcceldError
from acceld.formats.driver import AnyDriver

# name -> (module, class). Imported lazily so one missing format never breaks the others.
DRIVER_CLASSES: dict[str, tuple[str, str]] = {
    "estargz": ("acceld.formats.estargz.driver", "EstargzDriver"),
    "nydus": ("acceld.formats.nydus", "NydusDriver"),
    "soci": ("acceld.formats.soci", "SociDriver"),
    "zstdchunked": ("acceld.formats.zstdchunked", "ZstdChunkedDriver"),
}
# Modules a driver's layer hook imports on use, beyond its own module: the fork server imports them
# before any job, and the process that only builds the driver (the CLI) never does.
LAYER_MODULES: dict[str, tuple[str, ...]] = {
    "nydus": ("acceld.formats.nydus.blob", "acceld.formats.nydus.zran"),
    "zstdchunked": ("acceld.formats.zstdchunked.writer",),
}


def worker_modules(name: str) -> list[str]:
    """What the fork server of a conversion with driver `name` imports for its layer jobs."""
    return [DRIVER_CLASSES[name][0], *LAYER_MODULES.get(name, ())]


class UnknownDriverError(AcceldError):
    """The requested driver name or one of its options does not exist."""


def make_driver(name: str, options: Mapping[str, Any]) -> AnyDriver:
    """Build driver `name` with `options` passed as keyword arguments to its class.

    Options with value None are dropped, so callers can pass unset CLI flags through.
    """
    try:
        module_name, class_name = DRIVER_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(DRIVER_CLASSES))
        raise UnknownDriverError(f"unknown driver {name!r} (known: {known})") from None
    try:
        driver_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownDriverError(f"driver {name!r} is not available: {exc}") from None
    kwargs = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(kwargs) - _parameters(driver_class))
    if unknown:
        raise UnknownDriverError(f"driver {name!r} does not take option(s): {', '.join(unknown)}")
    try:
        driver: AnyDriver = driver_class(**kwargs)
    except TypeError as exc:
        raise UnknownDriverError(f"bad options for driver {name!r}: {exc}") from None
    except ValueError as exc:
        raise UnknownDriverError(f"bad option value for driver {name!r}: {exc}") from None
    return driver


def _parameters(driver_class: type) -> set[str]:
    """Keyword arguments the driver's constructor accepts."""
    return {
        name
        for name, parameter in inspect.signature(driver_class).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
