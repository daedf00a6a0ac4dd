"""SOCI (Seekable OCI) indexes: per-layer zTOCs and SOCI index manifests v1/v2 (soci-snapshotter)."""

from acceld.formats.soci.driver import DEFAULT_MIN_LAYER_SIZE, DEFAULT_SPAN_SIZE, SociDriver

__all__ = ["DEFAULT_MIN_LAYER_SIZE", "DEFAULT_SPAN_SIZE", "SociDriver"]
