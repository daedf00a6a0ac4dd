"""Running the service under uvicorn (SIGTERM/SIGINT: stop accepting, finish requests, stop workers)."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from acceld.service.app import create_app
from acceld.service.config import ServiceConfig
from acceld.service.connections import ConnectionLimits, connection_cap, guarded_protocol, raise_fd_limit
from acceld.service.state import Service

log = logging.getLogger("acceld.service")


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("acceld")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run_server(config: ServiceConfig) -> None:
    """Serve until SIGTERM/SIGINT. Raises AcceldError for configuration problems before listening."""
    configure_logging()
    os.umask(0o077)  # everything the service and its jobs write (database, cache, spools) is private
    service = Service(config)
    api = config.api
    if api.token is None and api.token_file is None and api.token_env is None:
        log.info("management API token: %s", config.resolved_data_dir() / "api-token")
    settings = config.server
    fd_limit = raise_fd_limit()
    max_connections = connection_cap(settings.max_connections, fd_limit)
    if max_connections < settings.max_connections:
        log.warning(
            "server.max_connections lowered to %d: only %d files may be open", max_connections, fd_limit
        )
    limits = ConnectionLimits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_header_bytes=settings.max_header_bytes,
        max_connections=max_connections,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=settings.host,
            port=settings.port,
            http=guarded_protocol(limits),
            timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=int(settings.graceful_timeout),
            server_header=False,
        )
    )
    try:
        server.run()
    finally:
        service.store.close()
