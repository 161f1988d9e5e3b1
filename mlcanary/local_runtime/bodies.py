"""Request bodies in the router: read in steps, decompressed off the event loop, and bounded in total.

Every body the router holds (as read, and once decompressed) is charged to one `BodyBudget` for as
long as a request or its mirror copy still needs it; a body that would take the total past the
budget is refused (503) before it is read further. Decompression runs in a small thread pool
(zlib releases the GIL while it inflates) in steps of DECOMPRESS_STEP bytes, each charged before it
is made, so a gzip bomb neither stalls the event loop the control plane shares nor outgrows the
budget.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import zlib

MAX_BODY_BYTES = 100 * 1024 * 1024  # one request, as read and as decompressed
BODIES_IN_FLIGHT_ENV = "MLCANARY_MAX_BODIES_IN_FLIGHT_MB"
DEFAULT_BODIES_IN_FLIGHT_MB = 512
DECOMPRESS_STEP = 4 * 1024 * 1024
DECOMPRESS_THREADS = 2
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class OverBudget(Exception):
    """The router holds as many body bytes as it may; the request is refused, not queued."""


class TooLarge(Exception):
    """One body is larger than MAX_BODY_BYTES (as sent or decompressed)."""


class NotCompressedData(ValueError):
    """The body is not one complete stream of its Content-Encoding (truncated, trailing bytes, two gzip members)."""


class UnknownEncoding(ValueError):
    pass


def budget_from_environment() -> int:
    return int(float(os.environ.get(BODIES_IN_FLIGHT_ENV) or DEFAULT_BODIES_IN_FLIGHT_MB) * 1024 * 1024)


class BodyBudget:
    """Bytes of request bodies the router holds at once. Thread-safe: decompression charges from its threads."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.refused = 0  # requests refused for want of budget, for /metrics
        self._lock = threading.Lock()

    def charge(self, size: int) -> None:
        with self._lock:
            if self.used + size > self.limit:
                self.refused += 1
                raise OverBudget
            self.used += size

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size


class Held:
    """What one request charged to the budget; released once, however many parties (the request, its
    mirror copy) shared it. A decompression thread may still charge after its request was cancelled:
    once released, a Held refuses further charges (OverBudget stops that thread)."""

    def __init__(self, budget: BodyBudget):
        self.budget = budget
        self.size = 0
        self._holders = 1
        self._released = False
        self._lock = threading.Lock()

    def charge(self, size: int) -> None:
        with self._lock:
            if self._released:
                raise OverBudget
            self.budget.charge(size)
            self.size += size

    def refund(self, size: int) -> None:
        """Give back part of a charge (a step that made less than it was allowed)."""
        with self._lock:
            if not self._released:
                self.budget.release(size)
                self.size -= size

    def share(self) -> Held:
        with self._lock:
            self._holders += 1
        return self

    def done(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and not self._released:
                self._released = True
                self.budget.release(self.size)
                self.size = 0


_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _decompress_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(DECOMPRESS_THREADS, thread_name_prefix="mlcanary-inflate")
    return _pool


def decompress(body: bytes, encoding: str, held: Held, limit: int = MAX_BODY_BYTES) -> bytes:
    """`body` without its Content-Encoding: one complete stream, at most `limit` bytes, each step charged
    to `held` before it is inflated. Raises UnknownEncoding, TooLarge, NotCompressedData, OverBudget."""
    try:
        inflater = zlib.decompressobj(_WBITS[encoding])
    except KeyError:
        raise UnknownEncoding(encoding) from None
    parts: list[bytes] = []
    produced = 0
    pending = body
    try:
        while True:
            step = min(DECOMPRESS_STEP, limit + 1 - produced)
            held.charge(step)
            part = inflater.decompress(pending, step)
            held.refund(step - len(part))  # charge what was made, not what was allowed
            parts.append(part)
            produced += len(part)
            if produced > limit:
                raise TooLarge
            pending = inflater.unconsumed_tail
            if inflater.eof or not pending:
                break
    except zlib.error:
        raise NotCompressedData("not valid compressed data") from None
    if not inflater.eof:
        raise NotCompressedData("the compressed stream is truncated")
    if inflater.unused_data:
        raise NotCompressedData("bytes follow the end of the compressed stream (trailing data or a second gzip member)")
    return b"".join(parts)


async def decompress_off_loop(body: bytes, encoding: str, held: Held, limit: int = MAX_BODY_BYTES) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decompress_pool(), decompress, body, encoding, held, limit)
