"""The conversion API the CLI and the service call: one request in, one result out."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acceld.convert.drivers import make_driver

if TYPE_CHECKING:
    from acceld.config import AcceldConfig
    from acceld.progress import ProgressReporter

__all__ = [
    "ConversionRequest",
    "ConversionResult",
    "ConvertOptions",
    "convert_image",
    "convert_image_sync",
    "make_driver",
]


@dataclass(frozen=True)
class ConversionRequest:
    """What to convert.

    `source` and `target` are registry references (``host/repo:tag``, ``host/repo@sha256:…``)
    or OCI layouts (``oci:/path/to/layout[:tag]``). `target` None means the source
    repository with the source tag plus the driver's tag suffix. `options` are the driver's
    options by name (see `make_driver`); `platforms` (``os/arch[/variant]``) filters the
    children of an index, None converts every platform.
    """

    source: str
    target: str | None = None
    driver: str = "estargz"
    options: Mapping[str, Any] = field(default_factory=dict)
    platforms: Sequence[str] | None = None
    # False: the result names its source in annotations, not `subject` (the target is another repository)
    link_subject: bool = True


@dataclass(frozen=True)
class ConversionResult:
    """What was pushed. Sizes are the sums of the config and layer blobs of every platform."""

    source: str
    source_digest: str
    target: str
    target_digest: str
    source_size: int
    target_size: int
    seconds: float
    layers_converted: int
    layers_cached: int
    untagged: str | None = None  # why the result was pushed without its tag (the source tag moved)
    warnings: tuple[str, ...] = ()  # one line each, e.g. a layer's metadata over max_metadata_bytes


@dataclass(frozen=True)
class ConvertOptions:
    """Local settings of the converting process (not part of what is converted)."""

    cache_dir: Path | None = None  # None: $ACCELD_CACHE_DIR, else ~/.cache/acceld
    use_cache: bool = True
    plain_http: bool = False  # for every registry, on top of the config
    insecure: bool = False
    workers: int | None = None  # parallel layer conversions; None: one per usable core


async def convert_image(
    request: ConversionRequest,
    config: AcceldConfig,
    progress: ProgressReporter | None = None,
    options: ConvertOptions | None = None,
) -> ConversionResult:
    """Convert one image (or index) and push the result. Raises `AcceldError` subclasses.

    Layers convert in child processes: a script calling this needs the
    `if __name__ == "__main__":` guard, as with any multiprocessing code.
    """
    from acceld.convert.pipeline import run_conversion

    return await run_conversion(request, config, progress, options or ConvertOptions())


def convert_image_sync(
    request: ConversionRequest, config: AcceldConfig, options: ConvertOptions | None = None
) -> ConversionResult:
    """`convert_image` for callers without an event loop (worker processes)."""
    return asyncio.run(convert_image(request, config, options=options))
