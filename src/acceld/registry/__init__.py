"""Registry client (OCI distribution API over httpx) and OCI image layouts behind one store protocol.

Import from the modules (`client`, `layout`, `stores`, `errors`, …): this package imports nothing,
so opening a layout never loads httpx.
"""
