"""PostgreSQL LISTEN: idle workers and senders of a replica wake when another replica queues work.

A background thread holds one psycopg connection listening on the store's channels and calls
the channel's callback (on the event loop) for every notification. When the connection drops it
reconnects; meanwhile the callers' fallback poll keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import URL

log = logging.getLogger("acceld.service")
_RECONNECT_SECONDS = 2.0
_CHECK_STOP_SECONDS = 1.0


class Listener:
    def __init__(self, url: URL, callbacks: dict[str, Callable[[], None]]) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._callbacks = callbacks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="acceld-listen", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, _CHECK_STOP_SECONDS * 5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    for channel in self._callbacks:
                        conn.execute(f'LISTEN "{channel}"')
                    self.connected = True
                    self._wake_all()  # work queued while not listening is not missed
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=_CHECK_STOP_SECONDS):
                            self._dispatch(notify.channel)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    reason = (str(exc) or type(exc).__name__).splitlines()[0]
                    log.warning("LISTEN connection lost, reconnecting: %s", reason)
            finally:
                self.connected = False
            self._stop.wait(_RECONNECT_SECONDS)

    def _wake_all(self) -> None:
        for channel in self._callbacks:
            self._dispatch(channel)

    def _dispatch(self, channel: str) -> None:
        callback = self._callbacks.get(channel)
        if callback is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)
