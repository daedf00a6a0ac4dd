"""Bounds on what a registry can make the client hold or wait for.

Every answer except a blob body is read whole, so it is read with a byte cap enforced while
reading (an endless body costs at most the cap) and under the request deadline. Blob bodies can
be many gigabytes and take as long as the link needs, so they have no total deadline: instead
each `min_bytes` must arrive within `stall` seconds of waiting for the registry — a body dribbled
at one byte per second fails, a slow but moving transfer does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import httpx

from acceld.registry.errors import RegistryError, RegistryUnreachable

MAX_RESPONSE_SIZE = 4 << 20  # manifests, indexes, token answers, listing pages
MAX_ERROR_BODY = 64 << 10  # error answers: only their first OCI error is shown


class ResponseTooLarge(RegistryError):
    """An answer larger than its cap."""


class TransferStalled(RegistryUnreachable):
    """A blob transfer slower than the configured minimum."""


async def read_capped(response: httpx.Response, cap: int, what: str) -> bytes:
    """Read the (decoded) body of a streamed response, failing once it exceeds `cap` bytes.

    The body then is `response.content`, as after `aread()`.
    """
    declared = response.headers.get("content-length", "")
    has_body = response.request.method != "HEAD"  # a HEAD answer declares the size of what GET sends
    if has_body and declared.isdigit() and int(declared) > cap:
        raise ResponseTooLarge(f"{what}: the registry's answer is larger than {cap} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise ResponseTooLarge(f"{what}: the registry's answer is larger than {cap} bytes")
        parts.append(chunk)
    data = b"".join(parts)
    response._content = data  # what aread() sets: .content, .json() and .text work as usual
    return data


async def read_error_body(response: httpx.Response, deadline: float) -> None:
    """Read an error answer for its message, keeping nothing of an oversized or slow one."""
    try:
        async with asyncio.timeout(deadline):
            await read_capped(response, MAX_ERROR_BODY, "error answer")
    except (ResponseTooLarge, TimeoutError, httpx.HTTPError):
        response._content = b""
    finally:
        await response.aclose()


async def paced(
    chunks: AsyncIterator[bytes], stall: float, min_bytes: int, what: str
) -> AsyncGenerator[bytes, None]:
    """Pass `chunks` on; raise TransferStalled when waiting for them adds up to `stall` seconds
    before another `min_bytes` arrived. Time the consumer spends between chunks does not count
    (a slow destination of a streamed copy is not the source's fault)."""
    loop = asyncio.get_running_loop()
    budget, pending = stall, 0
    while True:
        started = loop.time()
        try:
            async with asyncio.timeout(budget):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise TransferStalled(
                f"{what}: transfer stalled (less than {min_bytes} bytes in {stall:g} s; "
                "registry settings blob_stall_timeout, blob_min_speed)"
            ) from None
        budget -= loop.time() - started
        pending += len(chunk)
        if pending >= min_bytes:
            budget, pending = stall, 0
        yield chunk
