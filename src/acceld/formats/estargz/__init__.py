"""eStargz (containerd stargz-snapshotter): writer, driver and an independent reader/verifier."""

from acceld.formats.estargz.driver import (
    LAYER_MEDIA_TYPE,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzDriver,
)
from acceld.formats.estargz.reader import EstargzLayer, VerifyReport, open_estargz, tree_from_estargz_layers
from acceld.formats.estargz.writer import EstargzResult, WriterOptions, write_estargz

__all__ = [
    "LAYER_MEDIA_TYPE",
    "TOC_DIGEST_ANNOTATION",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "EstargzDriver",
    "EstargzLayer",
    "EstargzResult",
    "VerifyReport",
    "WriterOptions",
    "open_estargz",
    "tree_from_estargz_layers",
    "write_estargz",
]
