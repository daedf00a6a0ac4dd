"""Resource limits for untrusted images, applied by every driver and by `acceld check`.

One picklable value handed from the configuration (`limits:` in the YAML file, `--limit KEY=VALUE`
on the command line) to the pipeline, the worker processes and the readers. Every limit that is
exceeded raises `LimitExceeded` with one line naming the limit, its config key and its flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from acceld.formats.driver import FormatError

_K, _M, _G = 1 << 10, 1 << 20, 1 << 30

# key -> what it limits (for messages and docs)
DESCRIPTIONS = {
    "max_layers": "layers per image",
    "max_layer_bytes": "uncompressed bytes per layer",
    "max_image_bytes": "uncompressed bytes per image",
    "max_layer_entries": "tar entries per layer",
    "max_header_bytes": "bytes per tar extension header",
    "max_sparse_bytes": "bytes declared by one sparse file",
    "max_metadata_bytes": "uncompressed bytes of a converted layer's metadata",
}


@dataclass(frozen=True)
class Limits:
    max_layers: int = 256
    max_layer_bytes: int = 32 * _G
    max_image_bytes: int = 128 * _G
    max_layer_entries: int = 1_000_000
    max_header_bytes: int = 1 * _M  # Go's archive/tar refuses larger PAX and GNU long-name payloads
    max_sparse_bytes: int = 4 * _G
    max_metadata_bytes: int = 150 * _M  # containers/storage's maxTocSize

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limits.{item.name} must be a positive integer, not {value!r}")

    def with_overrides(self, overrides: Mapping[str, Any]) -> Limits:
        """These limits with some replaced; values may be quantities such as `4GiB` or `1_000_000`."""
        unknown = sorted(set(overrides) - set(DESCRIPTIONS))
        if unknown:
            raise ValueError(f"unknown limit(s): {', '.join(unknown)} (known: {', '.join(DESCRIPTIONS)})")
        return replace(self, **{key: parse_quantity(value) for key, value in overrides.items()})


def parse_quantity(value: object) -> int:
    """`1048576`, `0x100000`, `1_000_000`, `512K`, `4MiB`, `32G` → an integer (K/M/G are binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a number or a size such as 4GiB, not {value!r}")
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    for suffix, multiplier in (("k", _K), ("m", _M), ("g", _G), ("t", _G << 10)):
        if text.endswith(suffix):
            text, factor = text[: -len(suffix)], multiplier
            break
    try:
        return int(text, 0) * factor
    except ValueError:
        raise ValueError(f"invalid size {value!r}: expected bytes, 0x…, or a K/M/G/T suffix") from None


DEFAULT_LIMITS = Limits()


class LimitExceeded(FormatError):
    """Input larger than a configured limit: permanent, never retried."""


def exceeded(limits: Limits, key: str, what: str) -> LimitExceeded:
    """The one-line error for `what` going past `limits.<key>`."""
    return LimitExceeded(
        f"{what}: more than {getattr(limits, key):,} {DESCRIPTIONS[key]} "
        f"(limit {key}: config limits.{key}, flag --limit {key}=N)"
    )


def check_layer_count(limits: Limits, count: int, what: str) -> None:
    if count > limits.max_layers:
        raise exceeded(limits, "max_layers", f"{what} has {count:,} layers")
