"""Test harness: real registries, a token server, TLS material and offline-built test images."""
