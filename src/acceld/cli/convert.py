"""`acceld convert` and `acceld check`: command-line options mapped onto the conversion API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from acceld.cli.app import ConfigOption, InsecureOption, PlainHttpOption, app, run
from acceld.config import AcceldConfig, load_config
from acceld.convert.api import ConversionRequest, ConversionResult, ConvertOptions, convert_image
from acceld.convert.drivers import DRIVER_CLASSES
from acceld.convert.errors import ConvertError, NotApplicableError
from acceld.progress import format_size, progress_reporter

if TYPE_CHECKING:
    from acceld.convert.check import PlatformCheck

PlatformOption = Annotated[
    list[str] | None,
    typer.Option("--platform", help="os/arch or os/arch/variant to convert (repeatable; default: all)."),
]


def parse_size(text: str) -> int:
    """`1048576`, `0x100000`, `1M`, `4MiB`, `512K` → bytes."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    for suffix, multiplier in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], multiplier
            break
    try:
        return int(value, 0) * factor
    except ValueError:
        raise ConvertError(f"invalid size {text!r}: expected bytes, 0x…, or a K/M suffix") from None


LimitOption = Annotated[
    list[str] | None,
    typer.Option(
        "--limit", help="Override a resource limit, KEY=VALUE (repeatable; e.g. max_layer_bytes=8GiB)."
    ),
]


def with_limits(config: AcceldConfig, overrides: list[str] | None) -> AcceldConfig:
    """`config` with the `--limit KEY=VALUE` overrides applied on top of its `limits:`."""
    if not overrides:
        return config
    values: dict[str, str] = {}
    for item in overrides:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise ConvertError(f"--limit {item!r}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    try:
        limits = config.limits.with_overrides(values)
    except ValueError as exc:
        raise ConvertError(f"--limit: {exc}") from None
    return config.model_copy(update={"limits": limits})


def read_prefetch_list(path: Path) -> list[str]:
    """The paths listed in a prefetch file, one per line (blank lines and `#` comments ignored)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConvertError(f"cannot read prefetch file {path}: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def summary(result: ConversionResult) -> str:
    text = (
        f"{result.source} ({format_size(result.source_size)}) → {result.target} "
        f"({format_size(result.target_size)}) in {result.seconds:.1f}s: "
        f"{result.layers_converted} layer(s) converted, {result.layers_cached} from cache"
    )
    return f"{text}; {result.untagged}" if result.untagged else text


SourceArgument = Annotated[
    str,
    typer.Argument(help="Source image: registry/repo:tag, registry/repo@digest or oci:PATH[:TAG][@DIGEST]."),
]
TargetArgument = Annotated[
    str | None, typer.Argument(help="Target (default: the source repository, tag + the driver's suffix).")
]
DriverOption = Annotated[
    str, typer.Option("--driver", "-d", help=f"Format: {', '.join(sorted(DRIVER_CLASSES))}.")
]
ChunkSizeOption = Annotated[
    str | None, typer.Option("--chunk-size", help="Chunk size (bytes, 0x…, or K/M suffix).")
]
LevelOption = Annotated[
    int | None,
    typer.Option(
        "--compression-level",
        help=(
            "Compression level (estargz; zstdchunked: of every frame, "
            "default by frame size: 7, 6 up to 64 KiB, 5 up to 16 KiB)."
        ),
    ),
]
PrefetchFileOption = Annotated[
    Path | None, typer.Option("--prefetch-file", help="File listing paths to prioritise (estargz).")
]
CompressorOption = Annotated[
    str | None, typer.Option("--compressor", help="Chunk compressor: zstd, lz4_block, none (nydus).")
]
DigesterOption = Annotated[
    str | None, typer.Option("--digester", help="Chunk digest: blake3, sha256 (nydus).")
]
PrefetchPatternsOption = Annotated[
    list[str] | None,
    typer.Option("--prefetch-patterns", help="Absolute path to prefetch (nydus, repeatable)."),
]
ChunkDictOption = Annotated[
    str | None, typer.Option("--chunk-dict", help="Converted Nydus image whose chunks are reused.")
]
OciRefOption = Annotated[
    bool,
    typer.Option(
        "--oci-ref",
        help="Nydus zran image: index the source's gzip layers in place instead of copying them "
        "(nydus; pushed to the source repository).",
    ),
]
SociVersionOption = Annotated[
    str | None, typer.Option("--soci-version", help="SOCI index manifest version: v2 (default) or v1 (soci).")
]
MinLayerSizeOption = Annotated[
    str | None,
    typer.Option("--min-layer-size", help="Smallest layer that gets a zTOC (default 10M; soci)."),
]
SpanSizeOption = Annotated[
    str | None, typer.Option("--span-size", help="Uncompressed bytes between checkpoints (default 4M; soci).")
]
CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Layer cache directory (default $ACCELD_CACHE_DIR or ~/.cache/acceld)."),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Neither use nor fill the layer cache.")]


@app.command()
def convert(
    src: SourceArgument,
    dst: TargetArgument = None,
    driver: DriverOption = "estargz",
    platform: PlatformOption = None,
    chunk_size: ChunkSizeOption = None,
    compression_level: LevelOption = None,
    prefetch_file: PrefetchFileOption = None,
    compressor: CompressorOption = None,
    digester: DigesterOption = None,
    prefetch_patterns: PrefetchPatternsOption = None,
    chunk_dict: ChunkDictOption = None,
    oci_ref: OciRefOption = False,
    soci_version: SociVersionOption = None,
    min_layer_size: MinLayerSizeOption = None,
    span_size: SpanSizeOption = None,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    limit: LimitOption = None,
    config: ConfigOption = None,
    plain_http: PlainHttpOption = False,
    insecure: InsecureOption = False,
) -> None:
    """Convert an image (every platform of an index) into a lazy-pulling format and push it."""

    async def main() -> ConversionResult | None:
        options: dict[str, Any] = {
            "chunk_size": parse_size(chunk_size) if chunk_size is not None else None,
            "compression_level": compression_level,
            "prefetch_files": read_prefetch_list(prefetch_file) if prefetch_file is not None else None,
            "compressor": compressor,
            "digester": digester,
            "prefetch_patterns": tuple(prefetch_patterns) if prefetch_patterns else None,
            "chunk_dict": chunk_dict,
            "oci_ref": True if oci_ref else None,
            "soci_version": soci_version,
            "min_layer_size": parse_size(min_layer_size) if min_layer_size is not None else None,
            "span_size": parse_size(span_size) if span_size is not None else None,
        }
        request = ConversionRequest(
            source=src,
            target=dst,
            driver=driver,
            options={key: value for key, value in options.items() if value is not None},
            platforms=platform or None,
        )
        local = ConvertOptions(
            cache_dir=cache_dir, use_cache=not no_cache, plain_http=plain_http, insecure=insecure
        )
        with progress_reporter() as progress:
            try:
                config_with_limits = with_limits(load_config(config), limit)
                return await convert_image(request, config_with_limits, progress, local)
            except NotApplicableError as exc:
                typer.echo(str(exc), err=True)
                return None

    result = run(main())
    if result is None:
        return
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(summary(result), err=True)
    typer.echo(f"{result.target}@{result.target_digest}" if "@" not in result.target else result.target)


_SHOWN_DIFFERENCES = 20


def report_lines(check: PlatformCheck) -> list[str]:
    """What `acceld check` prints about one platform."""
    head = f"{check.platform} {check.format} {check.digest}"
    if check.ok and check.format.startswith("soci"):
        return [f"{head}: OK, every zTOC valid, {check.paths} TOC entries match the layers of {check.source}"]
    if check.ok:
        return [f"{head}: OK, structure valid, {check.paths} paths identical to source {check.source}"]
    lines = [f"{head}: FAILED"]
    lines += [f"  {problem}" for problem in check.problems]
    if check.differences:
        lines.append(f"  {len(check.differences)} difference(s) from source {check.source}:")
        lines += [f"    {line}" for line in check.differences[:_SHOWN_DIFFERENCES]]
        if len(check.differences) > _SHOWN_DIFFERENCES:
            lines.append(f"    … {len(check.differences) - _SHOWN_DIFFERENCES} more")
    return lines


@app.command()
def check(
    image: Annotated[
        str,
        typer.Argument(help="Converted image: registry/repo[:tag][@digest] or oci:PATH[:TAG][@DIGEST]."),
    ],
    source: Annotated[
        str | None, typer.Option("--source", help="Source image (default: each manifest's subject).")
    ] = None,
    platform: Annotated[
        list[str] | None,
        typer.Option(
            "--platform", help="os/arch or os/arch/variant to check (repeatable; default: every platform)."
        ),
    ] = None,
    limit: LimitOption = None,
    config: ConfigOption = None,
    plain_http: PlainHttpOption = False,
    insecure: InsecureOption = False,
) -> None:
    """Verify a converted image's structure and compare its files with its source's.

    Exit code 0 only when every platform passes both checks.
    """

    # imported here: the checkers (SOCI's flatbuffers, numpy) cost every other command start-up time
    from acceld.convert.check import check_image

    async def main() -> list[PlatformCheck]:
        return await check_image(
            image,
            with_limits(load_config(config), limit),
            source=source,
            platforms=platform or None,
            plain_http=plain_http,
            insecure=insecure,
        )

    results = run(main())
    for result in results:
        typer.echo("\n".join(report_lines(result)))
    if not all(result.ok for result in results):
        raise typer.Exit(1)
