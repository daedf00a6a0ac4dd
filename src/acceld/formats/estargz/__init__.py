"""eStargz (containerd stargz-snapshotter): writer (`writer`), driver (`driver`) and an independent
reader/verifier (`reader`).

Import from those modules: this package imports nothing, so a layer worker that only strips an
eStargz source's metadata (`strip`) does not load the writer and reader.
"""
