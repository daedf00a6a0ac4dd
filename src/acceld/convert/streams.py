"""Reading a source layer blob as a verified tar stream, and measuring a written blob.

One pass over the blob: the compressed bytes are hashed on their way into the decompressor and
the decompressed bytes on their way out to the driver, so the blob digest and the config's
diff_id are both checked without reading anything twice — each with its own algorithm (sha256,
sha512), always: a layer whose digests cannot be checked is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import queue
import threading
import zlib
from collections.abc import Callable
from gzip import BadGzipFile
from typing import Any, BinaryIO, NoReturn, cast

import isal.igzip
import zstandard
from isal import isal_zlib
from isal.igzip_lib import IsalError

from acceld.convert.errors import CorruptSourceLayerError
from acceld.formats.driver import SourceLayer
from acceld.formats.targuard import TarGuard
from acceld.oci.digest import Digester, InvalidDigest
from acceld.oci.mediatypes import layer_compression

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_SIZE = 1 << 20
_DECODED_AHEAD = 2  # blocks the decoding thread may have ready
# What the decompressors raise on malformed input.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    BadGzipFile,
    EOFError,
    zlib.error,
    zstandard.ZstdError,
    cast(type[BaseException], IsalError),
)


class _HashingReader(io.RawIOBase):
    """Passes reads through, hashes every byte read and reports the amounts to `on_read`."""

    def __init__(
        self, inner: BinaryIO, digester: Digester, on_read: Callable[[int], None] | None = None
    ) -> None:
        self._inner = inner
        self._on_read = on_read
        self.digester = digester

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.digester.update(memoryview(buffer)[:n])
            if self._on_read is not None:
                self._on_read(n)
        return int(n or 0)

    def drain(self) -> None:
        buffer = bytearray(_READ_SIZE)
        while self.readinto(buffer):
            pass


def _check_blob(layer: SourceLayer, blob: Digester) -> None:
    if blob.digest != layer.digest:
        raise CorruptSourceLayerError(
            f"source layer {layer.digest}: blob has digest {blob.digest} "
            f"({blob.size} bytes, manifest says {layer.size})"
        )


def _blob_digester(layer: SourceLayer) -> Digester:
    try:
        return Digester.for_digest(layer.digest)
    except InvalidDigest as exc:
        raise CorruptSourceLayerError(f"source layer {layer.digest}: {exc}") from None


def _compression_of(layer: SourceLayer, head: bytes) -> str:
    declared = layer_compression(layer.media_type)
    if declared is None:
        # Unknown media type: trust the magic bytes.
        if head.startswith(_GZIP_MAGIC):
            return "gzip"
        if head.startswith(_ZSTD_MAGIC):
            return "zstd"
        return "none"
    return declared


class _DecodingThread(io.RawIOBase):
    """The output of `decoder`, decoded and hashed into `digester` on a thread of its own, ahead
    of the reader by at most a few blocks; a decoding error is raised where its block would be.
    `stop()` ends the thread (the caller may then read the compressed stream itself)."""

    def __init__(self, decoder: BinaryIO, digester: Digester) -> None:
        self._decoder = decoder
        self._digester = digester
        self._blocks: queue.Queue[bytes | BaseException] = queue.Queue(_DECODED_AHEAD)
        self._block = memoryview(b"")
        self._failure: BaseException | None = None
        self._ended = False
        self._running = True
        self._thread = threading.Thread(target=self._decode, name="layer-decode", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        item: bytes | BaseException = b""
        while self._running:
            try:
                item = self._decoder.read(_READ_SIZE)
                self._digester.update(item)
            except BaseException as exc:  # whatever ends the thread reaches the reader
                item = exc
            while self._running:
                try:
                    self._blocks.put(item, timeout=0.05)
                    break
                except queue.Full:
                    pass
            if not item or isinstance(item, BaseException):
                return

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._block:
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return 0
            if not self._running:
                raise ValueError("read from a stopped decoding thread")
            item = self._blocks.get()
            if isinstance(item, BaseException):
                self._failure = item
                raise item
            if not item:
                self._ended = True
                return 0
            self._block = memoryview(item)
        n = min(len(buffer), len(self._block))
        buffer[:n] = self._block[:n]
        self._block = self._block[n:]
        return n

    def stop(self) -> None:
        self._running = False
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._blocks.get_nowait()  # a thread waiting to put sees `_running` sooner
            self._thread.join(0.01)


class SourceTarStream(io.RawIOBase):
    """The decompressed tar of a source layer blob, verified as it is read.

    Decoder failures raise `CorruptSourceLayerError` (a FormatError, so drivers pass it through);
    `finish()` reads whatever the driver left unread and checks blob digest, size and diff_id.
    `on_read` hears how many compressed bytes were consumed (progress). `guard` sees every
    uncompressed byte and stops the stream at the first limit or path rule it violates.

    With `threaded`, a gzip or zstd blob is read, hashed, decompressed and its tar hashed by a
    background thread (one core of a layer worker parses the tar while the other decodes it);
    `on_read` is then called from that thread, and `close()` must be called, as it stops it.
    """

    def __init__(
        self,
        blob: BinaryIO,
        layer: SourceLayer,
        on_read: Callable[[int], None] | None = None,
        guard: TarGuard | None = None,
        *,
        threaded: bool = False,
    ) -> None:
        self._layer = layer
        self._guard = guard
        self.tar_size = 0
        self._compressed = _HashingReader(blob, _blob_digester(layer), on_read)
        try:
            self._tar_digester = Digester.for_digest(layer.diff_id)
        except InvalidDigest as exc:
            raise CorruptSourceLayerError(f"source layer {layer.digest}: diff_id: {exc}") from None
        buffered = io.BufferedReader(self._compressed, _READ_SIZE)
        self.compression = _compression_of(layer, buffered.peek(4)[:4])
        self._decoded: BinaryIO
        if self.compression == "gzip":
            self._decoded = cast(BinaryIO, isal.igzip.IGzipFile(fileobj=buffered, mode="rb"))  # type: ignore[no-untyped-call]
        elif self.compression == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
            self._decoded = cast(BinaryIO, reader)
        else:
            self._decoded = cast(BinaryIO, buffered)
        self._buffered_compressed = buffered
        self._thread: _DecodingThread | None = None
        if threaded and self.compression in ("gzip", "zstd"):
            self._thread = _DecodingThread(self._decoded, self._tar_digester)
            self._decoded = cast(BinaryIO, self._thread)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            n = int(self._decoded.readinto(buffer) or 0)  # type: ignore[attr-defined]
        except _DECODE_ERRORS as exc:
            self._fail_with_digest_first(f"bad {self.compression} stream ({exc})")
        if n:
            view = memoryview(buffer)[:n]
            if self._guard is not None:
                self._guard.feed(view)
            if self._thread is None:  # the decoding thread hashes what it decodes
                self._tar_digester.update(view)
            self.tar_size += n
        return n

    def close(self) -> None:
        self._stop_thread()
        super().close()

    def _stop_thread(self) -> None:
        """Stop the background decoding thread: no other thread may read the blob after this."""
        if self._thread is not None:
            self._thread.stop()

    def finish(self) -> None:
        """Consume the rest of the blob and verify digest, size and diff_id."""
        buffer = bytearray(_READ_SIZE)
        while self.readinto(buffer):
            pass
        self._stop_thread()
        self._compressed.drain()
        self._check_blob_digest()
        if self._guard is not None:
            self._guard.check_complete()
        diff_id = self._tar_digester.digest
        if diff_id != self._layer.diff_id:
            raise CorruptSourceLayerError(
                f"source layer {self._layer.digest}: uncompressed content has digest {diff_id}, "
                f"config says {self._layer.diff_id}"
            )

    def _check_blob_digest(self) -> None:
        _check_blob(self._layer, self._compressed.digester)

    def raise_if_blob_corrupt(self) -> None:
        """After a failure: raise the digest mismatch if the blob is corrupt (the more useful message)."""
        try:
            self._stop_thread()
            self._compressed.drain()
        except OSError:
            return
        self._check_blob_digest()

    def _fail_with_digest_first(self, problem: str) -> NoReturn:
        self.raise_if_blob_corrupt()
        raise CorruptSourceLayerError(f"source layer {self._layer.digest}: {problem}")


class _ShadowInflater:
    """Inflates the gzip (or passes the plain tar) bytes a driver reads compressed, for a TarGuard.

    Output is produced in bounded pieces, so a bomb stops at the guard's limit. Anything that is not
    gzip or tar (zstd, garbage after the last member) ends the watch: the driver reports it.
    """

    def __init__(self, guard: TarGuard, layer: SourceLayer) -> None:
        self._guard = guard
        self._kind = layer_compression(layer.media_type)
        self._inflater: Any = None
        self._stopped = False

    def feed(self, data: memoryview) -> None:
        if self._stopped or not data:
            return
        if self._kind is None:  # unknown media type: trust the magic bytes, as SourceTarStream does
            self._kind = "gzip" if bytes(data[:2]) == _GZIP_MAGIC else "none"
        if self._kind == "none":
            self._guard.feed(data)
        elif self._kind == "gzip":
            self._inflate(bytes(data))
        else:
            self._stopped = True

    def _inflate(self, pending: bytes) -> None:
        while pending and not self._stopped:
            if self._inflater is None:
                if not pending.startswith(_GZIP_MAGIC[: len(pending)]):
                    self._stopped = True  # padding or garbage after the last member
                    return
                self._inflater = isal_zlib.decompressobj(31)
            try:
                out = self._inflater.decompress(pending, _READ_SIZE)
            except Exception:  # isal_zlib.error: the driver reports the damage in its own words
                self._stopped = True
                return
            self._guard.feed(out)
            if self._inflater.eof:
                pending = self._inflater.unused_data
                self._inflater = None
            else:
                pending = self._inflater.unconsumed_tail


class VerifiedBlob(io.RawIOBase):
    """A source layer blob as stored (compressed), its digest checked once it has been read.

    `finish()` reads what the driver left unread and raises `CorruptSourceLayerError` on a
    digest mismatch; `raise_if_corrupt()` does the same after a failure. With a `guard`, the
    layer's tar is inflated alongside (drivers that read the compressed blob themselves still
    get the limits and the path rule).
    """

    def __init__(
        self,
        blob: BinaryIO,
        layer: SourceLayer,
        on_read: Callable[[int], None] | None = None,
        guard: TarGuard | None = None,
    ) -> None:
        self._layer = layer
        self._reader = _HashingReader(blob, _blob_digester(layer), on_read)
        self._shadow = _ShadowInflater(guard, layer) if guard is not None else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._reader.readinto(buffer)
        if n and self._shadow is not None:
            self._shadow.feed(memoryview(buffer)[:n])
        return n

    def finish(self) -> None:
        self._reader.drain()
        self._check()

    def raise_if_corrupt(self) -> None:
        try:
            self._reader.drain()
        except OSError:
            return
        self._check()

    def _check(self) -> None:
        _check_blob(self._layer, self._reader.digester)


class MeasuringWriter(io.RawIOBase):
    """Writes through to a file and records sha256 and size of everything written."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._inner.write(view)
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def sha256_digest(self) -> bytes:
        return self._hash.copy().digest()

    def flush(self) -> None:
        self._inner.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
