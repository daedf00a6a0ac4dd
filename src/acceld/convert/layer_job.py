"""The unit of work of a worker process: one source layer blob into one converted blob (layer
drivers) or into one artifact blob (artifact drivers)."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from acceld.convert.errors import ConvertError, CorruptSourceLayerError
from acceld.convert.streams import MeasuringWriter, SourceTarStream, VerifiedBlob
from acceld.errors import AcceldError
from acceld.formats.driver import (
    ArtifactDriver,
    Driver,
    FormatError,
    LayerBlob,
    LayerOutput,
    SkipLayer,
    SourceLayer,
)
from acceld.formats.estargz.annotations import TOC_DIGEST_ANNOTATION
from acceld.formats.estargz.strip import without_estargz_metadata
from acceld.formats.limits import DEFAULT_LIMITS, LimitExceeded, Limits
from acceld.formats.targuard import PathError, TarGuard
from acceld.oci.mediatypes import layer_compression

log = logging.getLogger(__name__)

_TAR_BUFFER = 1 << 20


@dataclass(frozen=True)
class LayerJob:
    """A source blob spooled on local disk, and where its converted blob goes."""

    layer: SourceLayer
    source_path: Path
    output_path: Path
    workdir: Path
    limits: Limits = DEFAULT_LIMITS
    max_bytes: int | None = None  # uncompressed bytes this layer may have (None: limits.max_layer_bytes)
    bytes_key: str = "max_layer_bytes"  # the limit `max_bytes` comes from


@dataclass(frozen=True)
class ConvertedJob:
    blob: LayerBlob
    tar_size: int  # uncompressed bytes of the source layer (0 for drivers reading it compressed)
    warnings: tuple[str, ...] = ()


def _unknown_type(layer: SourceLayer) -> str:
    """A note for a layer whose media type is no known layer type (its compression was guessed)."""
    return "" if layer_compression(layer.media_type) else f" (unknown layer media type {layer.media_type})"


@contextlib.contextmanager
def _worker_errors(driver_name: str, job: LayerJob) -> Iterator[None]:
    """The job's scratch directory for its duration; every error leaves as an AcceldError subclass
    (unexpected ones as ConvertError, their traceback logged at debug level)."""
    job.workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except AcceldError:
        raise
    except OSError as exc:
        raise ConvertError(f"layer {job.layer.digest}: local I/O failed: {exc}", transient=True) from None
    except Exception as exc:
        log.debug("driver %s failed on %s", driver_name, job.layer.digest, exc_info=True)
        raise ConvertError(
            f"layer {job.layer.digest}: {driver_name} driver failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        shutil.rmtree(job.workdir, ignore_errors=True)


def convert_layer_job(
    driver: Driver, job: LayerJob, report: Callable[[int], None] | None = None
) -> ConvertedJob:
    """Decompress, verify and convert one layer. Runs in a worker process; everything is picklable.

    `report` hears the compressed source bytes consumed so far, piece by piece (progress).

    Raises AcceldError subclasses only: unexpected driver exceptions become ConvertError with the
    traceback logged at debug level.
    """
    with (
        _worker_errors(driver.name, job),
        job.source_path.open("rb") as blob,
        job.output_path.open("wb") as out_file,
    ):
        source: SourceTarStream | VerifiedBlob
        guard = TarGuard(job.limits, job.max_bytes, job.bytes_key)
        if driver.reads_compressed:
            source = VerifiedBlob(cast(BinaryIO, blob), job.layer, report, guard)
            raise_if_corrupt = source.raise_if_corrupt
        else:
            source = SourceTarStream(cast(BinaryIO, blob), job.layer, report, guard, threaded=True)
            raise_if_corrupt = source.raise_if_blob_corrupt
        # `tar` stays referenced until the end: a BufferedReader that is collected closes `source`
        tar = cast(BinaryIO, io.BufferedReader(source, _TAR_BUFFER))
        files = tar
        # the stream checks the tar's digest against the diff_id at `finish`, so the driver may trust it
        tar_sha256 = None
        if not driver.reads_compressed and job.layer.diff_id.startswith("sha256:"):
            tar_sha256 = job.layer.diff_id
        # a driver reading the headers of `files` hands them to the guard, if `files` is the tar itself
        files_guard = None if driver.reads_compressed else guard
        if not driver.reads_compressed and TOC_DIGEST_ANNOTATION in job.layer.annotations:
            # an eStargz source: its TOC and landmark are not the image's files
            files = without_estargz_metadata(tar)
            tar_sha256 = None
            files_guard = None
        out = MeasuringWriter(cast(BinaryIO, out_file))
        try:
            output = driver.convert_layer(
                files, cast(BinaryIO, out), job.layer, job.workdir, tar_sha256, files_guard
            )
            source.finish()
        except CorruptSourceLayerError:
            raise
        except Exception as exc:
            # A damaged blob often trips the tar parser first: name the real cause.
            raise_if_corrupt()
            if isinstance(exc, LimitExceeded | PathError):
                raise type(exc)(f"source layer {job.layer.digest}: {exc}") from None
            if isinstance(exc, FormatError):
                raise FormatError(
                    f"source layer {job.layer.digest}{_unknown_type(job.layer)}: {exc}"
                ) from None
            raise
        finally:
            source.close()  # stops its inflating thread on every path
    converted = LayerBlob(
        path=job.output_path,
        media_type=output.media_type,
        digest=out.digest,
        size=out.size,
        diff_id=output.diff_id,
        annotations=dict(output.annotations),
    )
    tar_size = source.tar_size if isinstance(source, SourceTarStream) else 0
    return ConvertedJob(converted, tar_size, oversized_metadata(output, converted.digest, job))


def oversized_metadata(output: LayerOutput, digest: str, job: LayerJob) -> tuple[str, ...]:
    """One line per metadata part above max_metadata_bytes: readers that keep to that limit
    (`acceld check`, containers/storage's maxTocSize for zstd:chunked) refuse the layer."""
    limit = job.limits.max_metadata_bytes
    return tuple(
        f"layer {digest} (from {job.layer.digest}): its {part} is {size:,} bytes, over "
        f"max_metadata_bytes ({limit:,}); `acceld check` and readers with that limit refuse it"
        for part, size in output.metadata_sizes.items()
        if size > limit
    )


def artifact_layer_job(
    driver: ArtifactDriver, job: LayerJob, report: Callable[[int], None] | None = None
) -> LayerBlob | str:
    """Build one layer's artifact from its compressed blob (digest verified); a str is the reason
    the driver skipped the layer. Runs in a worker process; errors as for `convert_layer_job`."""
    with (
        _worker_errors(driver.name, job),
        job.source_path.open("rb") as blob_file,
        job.output_path.open("wb") as out_file,
    ):
        guard = TarGuard(job.limits, job.max_bytes, job.bytes_key)
        blob = VerifiedBlob(cast(BinaryIO, blob_file), job.layer, report)
        out = MeasuringWriter(cast(BinaryIO, out_file))
        try:
            source = cast(BinaryIO, io.BufferedReader(blob, _TAR_BUFFER))
            # the driver decodes the layer itself and hands the guard its tar (no second inflate)
            output = driver.build_artifact(source, cast(BinaryIO, out), job.layer, job.workdir, guard.feed)
        except SkipLayer as skip:
            blob.raise_if_corrupt()
            job.output_path.unlink(missing_ok=True)
            return str(skip)
        except Exception as exc:
            blob.raise_if_corrupt()
            if isinstance(exc, LimitExceeded | PathError):
                raise type(exc)(f"source layer {job.layer.digest}: {exc}") from None
            if isinstance(exc, FormatError) and not isinstance(exc, CorruptSourceLayerError):
                raise CorruptSourceLayerError(f"source layer {job.layer.digest}: {exc}") from None
            raise
        blob.finish()
    return LayerBlob(
        path=job.output_path,
        media_type=output.media_type,
        digest=out.digest,
        size=out.size,
        diff_id="",
        annotations=dict(output.annotations),
    )
