"""The annotations an eStargz layer descriptor carries (stargz-snapshotter and containers/storage)."""

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
