"""zstd:chunked (containers/storage): frame-per-chunk zstd layers with a TOC and tar-split."""

from acceld.formats.zstdchunked.driver import ZstdChunkedDriver

__all__ = ["ZstdChunkedDriver"]
