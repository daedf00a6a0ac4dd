"""SourceTarStream: a source layer blob read as its verified tar, decoded on a thread or inline."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading

import pytest
import zstandard

from acceld.convert.errors import CorruptSourceLayerError
from acceld.convert.streams import SourceTarStream
from acceld.formats.driver import SourceLayer
from acceld.oci.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_ZSTD

# several decoded blocks, incompressible in part so the blob is several compressed reads too
TAR = os.urandom(3 << 20) + bytes(2 << 20) + b"tail" * 1000


def _layer(blob: bytes, media_type: str, tar: bytes = TAR) -> SourceLayer:
    return SourceLayer(
        digest="sha256:" + hashlib.sha256(blob).hexdigest(),
        media_type=media_type,
        size=len(blob),
        diff_id="sha256:" + hashlib.sha256(tar).hexdigest(),
    )


def _compressed(kind: str, tar: bytes = TAR) -> tuple[bytes, str]:
    if kind == "gzip":
        return gzip.compress(tar, compresslevel=1), OCI_LAYER_GZIP
    # with its checksum, so damage is always detected
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(tar), OCI_LAYER_ZSTD


def _decoding_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "layer-decode")


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_reads_the_tar_and_verifies_both_digests(kind: str, threaded: bool) -> None:
    blob, media_type = _compressed(kind)
    reported: list[int] = []
    stream = SourceTarStream(io.BytesIO(blob), _layer(blob, media_type), reported.append, threaded=threaded)
    try:
        reader = io.BufferedReader(stream, 1 << 16)
        head = reader.read(1000)
        stream_rest = reader.read(777_777)
        assert head + stream_rest == TAR[: 1000 + 777_777]
        stream.finish()  # reads the rest itself
    finally:
        stream.close()
    assert stream.tar_size == len(TAR)
    assert sum(reported) == len(blob)
    assert _decoding_threads() == 0


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_wrong_diff_id_is_refused_at_finish(kind: str) -> None:
    blob, media_type = _compressed(kind)
    layer = _layer(blob, media_type, tar=b"another tar")
    stream = SourceTarStream(io.BytesIO(blob), layer, threaded=True)
    try:
        with pytest.raises(CorruptSourceLayerError, match="uncompressed content has digest"):
            stream.finish()
    finally:
        stream.close()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_damaged_stream_fails_where_it_is_read_and_names_the_blob_digest_first(kind: str) -> None:
    blob, media_type = _compressed(kind)
    damaged = bytearray(blob)
    damaged[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)
    # the manifest's digest is the undamaged blob's: the blob digest mismatch is the message
    stream = SourceTarStream(io.BytesIO(bytes(damaged)), _layer(blob, media_type), threaded=True)
    try:
        with pytest.raises(CorruptSourceLayerError, match="blob has digest"):
            stream.finish()
    finally:
        stream.close()
    # with the damaged blob's own digest, the decoder's error is the message, every time it is read
    stream = SourceTarStream(io.BytesIO(bytes(damaged)), _layer(bytes(damaged), media_type), threaded=True)
    try:
        buffer = bytearray(1 << 20)
        with pytest.raises(CorruptSourceLayerError, match=f"bad {kind} stream"):
            while stream.readinto(buffer):
                pass
        with pytest.raises(CorruptSourceLayerError, match=f"bad {kind} stream"):
            stream.readinto(buffer)
    finally:
        stream.close()
    assert _decoding_threads() == 0


def test_close_stops_the_decoding_thread_of_a_stream_read_only_in_part() -> None:
    blob, media_type = _compressed("gzip")
    stream = SourceTarStream(io.BytesIO(blob), _layer(blob, media_type), threaded=True)
    assert _decoding_threads() == 1
    assert stream.read(10) == TAR[:10]
    stream.close()
    assert _decoding_threads() == 0


def test_reading_after_the_thread_was_stopped_fails_instead_of_waiting() -> None:
    blob, media_type = _compressed("zstd")
    stream = SourceTarStream(io.BytesIO(blob), _layer(blob, media_type), threaded=True)
    try:
        stream.raise_if_blob_corrupt()  # stops the thread, reads and checks the rest of the blob
        with pytest.raises(ValueError, match="stopped decoding thread"):
            while stream.readinto(bytearray(1 << 20)):
                pass
    finally:
        stream.close()
    assert _decoding_threads() == 0
