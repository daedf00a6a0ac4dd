"""acceld: converts OCI images into lazy-pulling formats."""

__version__ = "0.1.0"
