"""Running the service under uvicorn (SIGTERM/SIGINT: stop accepting, finish requests, stop workers)."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from acceld.service.app import create_app
from acceld.service.config import ServiceConfig
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
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=config.server.host,
            port=config.server.port,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=int(config.server.graceful_timeout),
            server_header=False,
        )
    )
    try:
        server.run()
    finally:
        service.store.close()
