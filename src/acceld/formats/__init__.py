"""Format drivers: pure byte-stream code, no network, no global state."""
