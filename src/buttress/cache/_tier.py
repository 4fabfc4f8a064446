"""A remote tier as the cache sees it: a store behind a breaker, with counters.

Calls to a tier never raise: a tier that is down or slow returns :data:`FAILED`
and the cache carries on without it. Concurrent single-key reads of one tier
from one event loop share round trips (see :class:`ReadCoalescer`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from buttress.cache._runtime import AsyncRuntime, Effect, SyncRuntime
from buttress.cache._store import Store
from buttress.errors import CircuitOpenError
from buttress.resilience import CircuitBreaker, CircuitState

__all__ = ["FAILED", "RemoteTier", "TierCall", "TierStats"]

log = logging.getLogger("buttress.cache")

_MAX_OWED = 100_000
_MAX_IN_FLIGHT = 2
"""Single-key reads a loop sends on their own before later ones are batched."""


class _Failed:
    """What a tier call returns when the tier is down: the logic carries on without it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


FAILED = _Failed()


@dataclass(frozen=True, slots=True)
class TierStats:
    """Counters of one tier since the cache was made."""

    name: str
    hits: int
    misses: int
    errors: int
    calls: int
    latency_seconds: float
    """Mean latency of a call to this tier (0 for the memory tier, which is not timed)."""
    available: bool
    """False while the tier's breaker is open (the tier is being skipped)."""


class RemoteTier:
    """A store with its breaker, counters, and the deletes it still owes."""

    def __init__(self, store: Store, breaker: CircuitBreaker) -> None:
        self.store = store
        self.name = store.name
        self.breaker = breaker
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.calls = 0
        self.latency = 0.0
        # Deletes (and overwrites) this tier missed while it was failing. They
        # are replayed before it is read again, so a value deleted during an
        # outage doesn't come back when the tier does.
        self.owed: dict[str, None] = {}
        self.owed_patterns: list[str] = []
        self._coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReadCoalescer] = (
            weakref.WeakKeyDictionary()
        )
        self._last_coalescer: ReadCoalescer | None = None

    def call(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``store.<op>(*args, **kwargs)`` through the breaker; FAILED if it fails."""
        start = time.perf_counter()
        try:
            result = self.breaker.call(getattr(self.store, op), *args, **kwargs)
        except CircuitOpenError:
            return FAILED
        except Exception as exc:
            self._failed(op, exc)
            return FAILED
        self.calls += 1
        self.latency += time.perf_counter() - start
        return result

    async def acall(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``await store.a<op>(*args, **kwargs)`` through the breaker; FAILED if it fails."""
        start = time.perf_counter()
        try:
            result = await self.breaker.call_async(getattr(self.store, "a" + op), *args, **kwargs)
        except CircuitOpenError:
            return FAILED
        except Exception as exc:
            self._failed(op, exc)
            return FAILED
        self.calls += 1
        self.latency += time.perf_counter() - start
        return result

    def coalescer(self) -> ReadCoalescer:
        loop = asyncio.get_running_loop()
        last = self._last_coalescer
        if last is not None and last.loop() is loop:  # the usual case: one loop
            return last
        coalescer = self._coalescers.get(loop)
        if coalescer is None:
            coalescer = self._coalescers[loop] = ReadCoalescer(self, loop)
        self._last_coalescer = coalescer
        return coalescer

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        log.debug("cache tier %s: %s failed: %r", self.name, op, exc)

    def owe(self, keys: Iterable[str]) -> None:
        owed = self.owed
        for key in keys:
            owed[key] = None
        if len(owed) > _MAX_OWED:
            for key in list(owed)[: len(owed) - _MAX_OWED]:
                del owed[key]
            log.error(
                "cache tier %s missed more than %d deletes while failing; the oldest are "
                "forgotten and may be served from it until they expire",
                self.name,
                _MAX_OWED,
            )

    def owe_pattern(self, pattern: str) -> None:
        if pattern not in self.owed_patterns:
            self.owed_patterns.append(pattern)

    def paid(self, keys: Iterable[str]) -> None:
        if self.owed:
            for key in keys:
                self.owed.pop(key, None)

    def stats(self) -> TierStats:
        return TierStats(
            self.name,
            self.hits,
            self.misses,
            self.errors,
            self.calls,
            self.latency / self.calls if self.calls else 0.0,
            self.breaker.state is not CircuitState.OPEN,
        )


class ReadCoalescer:
    """Concurrent single-key reads of one tier, from one loop, share MGETs.

    A read goes out at once while fewer than ``_MAX_IN_FLIGHT`` are on the
    wire, so a lone caller pays nothing. Reads that arrive while the wire is
    busy wait for the next free slot and then go together as one multi-key
    read: under load, one round trip carries many keys, and the client parses
    one reply instead of one per key.
    """

    def __init__(self, tier: RemoteTier, loop: asyncio.AbstractEventLoop) -> None:
        self._tier = tier
        # Weakly: a strong reference would keep the loop (the weak dict's key) alive.
        self.loop = weakref.ref(loop)
        self._in_flight = 0
        self._waiting: list[tuple[str, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> Any:
        """``[value]`` of ``key`` (``None`` if absent), or FAILED."""
        if self._in_flight < _MAX_IN_FLIGHT:
            self._in_flight += 1
            try:
                return await self._tier.acall("get_many", ([key],), {})
            finally:
                self._in_flight -= 1
                self._send_waiting()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        return await future

    def _send_waiting(self) -> None:
        if self._waiting and self._in_flight < _MAX_IN_FLIGHT:
            batch, self._waiting = self._waiting, []
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)  # a task nobody references may be collected
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        try:
            keys = list(dict.fromkeys(key for key, _ in batch))
            values = await self._tier.acall("get_many", (keys,), {})
            found = None if values is FAILED else dict(zip(keys, values, strict=True))
            for key, future in batch:
                if not future.done():  # a caller that gave up just doesn't get it
                    future.set_result(FAILED if found is None else [found[key]])
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._send_waiting()


class TierCall(Effect[Any]):
    """Call ``store.<op>`` (or ``store.a<op>``) on a tier: the result, or FAILED."""

    __slots__ = ("args", "kwargs", "op", "tier")

    def __init__(self, tier: RemoteTier, op: str, *args: Any, **kwargs: Any) -> None:
        self.tier = tier
        self.op = op
        self.args = args
        self.kwargs = kwargs

    def run(self, runtime: SyncRuntime) -> Any:
        return self.tier.call(self.op, self.args, self.kwargs)

    async def arun(self, runtime: AsyncRuntime) -> Any:
        if self.op == "get_many" and len(self.args[0]) == 1:
            return await self.tier.coalescer().get(self.args[0][0])
        return await self.tier.acall(self.op, self.args, self.kwargs)
