"""Nydus RAFS v6: per-layer blob writer, merge, bootstrap layer and the format driver."""

from acceld.formats.nydus.driver import NydusDriver

__all__ = ["NydusDriver"]
