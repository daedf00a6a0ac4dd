"""The conversion pipeline every format driver shares."""
