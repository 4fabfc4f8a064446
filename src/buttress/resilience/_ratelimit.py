"""Rate limits per key, with the generic cell rate algorithm (GCRA).

GCRA keeps one number per key, the *theoretical arrival time* (TAT): when the
key's budget would be fully spent. A request is allowed when the TAT, pushed on
by the request's cost, stays within ``burst`` intervals of now. That is a token
bucket's behaviour with one float of state and no refill loop.

A key whose TAT lies in the past is indistinguishable from a new key, so it can
be forgotten. Keys live in two generations: every ``burst`` intervals the older
generation is dropped whole, which only ever drops idle keys. Memory stays
bounded by the keys active in the last two horizons, with no scan. The few keys
whose callers booked a wait beyond the horizon are kept apart until their turn
comes within reach.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from buttress.clock import Clock
from buttress.errors import RateLimitExceeded
from buttress.resilience._common import (
    Duration,
    Observable,
    Strategy,
    check_int,
    check_number,
    check_seconds,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry

__all__ = ["RateLimitDecision", "RateLimiter", "RateLimiterMetrics"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RateLimiterMetrics:
    name: str
    rate: float
    per: float
    burst: int
    allowed: int
    rejected: int
    keys: int
    """Keys currently remembered (active within the last two horizons)."""


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """One request's verdict, with what HTTP ``RateLimit-*`` headers report."""

    allowed: bool
    limit: int
    """The burst: requests a fresh key may make at once."""
    remaining: int
    """Requests the key could still make right now."""
    reset_after: float
    """Seconds until the key's whole allowance is back."""
    retry_after: float
    """Seconds until a rejected request would pass; 0.0 when allowed."""


class RateLimiter(Strategy, Observable):
    """Allow ``rate`` requests per ``per`` seconds for each key, and bursts of ``burst``.

    Events: ``rejected`` (with the key and its ``retry_after``).

    >>> limiter = RateLimiter(100, per=60, burst=10, name="api")
    >>> limiter.try_acquire("user:42")            # True or False, at once
    >>> limiter.acquire("user:42", max_wait=2.0)  # waits up to 2 s, else raises
    >>> await limiter.acquire_async("user:42")

    ``RateLimitExceeded.retry_after`` says how long until the request would pass.
    As a decorator it limits the key ``""`` and waits up to the limiter's
    ``max_wait`` (``None``: as long as needed).
    """

    def __init__(
        self,
        rate: float,
        *,
        per: Duration = 1.0,
        burst: int | None = None,
        max_wait: Duration | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        where = "RateLimiter" if name is None else f"RateLimiter({name!r})"
        self._rate = check_number(where, "rate", rate, minimum=0, inclusive=False)
        self._per = check_seconds(where, "per", per, allow_zero=False)
        self._burst = check_int(
            where, "burst", max(1, round(rate)) if burst is None else burst, minimum=1
        )
        self._max_wait = None if max_wait is None else check_seconds(where, "max_wait", max_wait)
        self._interval = self._per / self._rate
        self._horizon = self._burst * self._interval
        self._register(name, "rate_limiter", registry)
        self._clock = resolve_clock(where, clock)
        self._lock = threading.Lock()
        self._current: dict[str, float] = {}
        self._previous: dict[str, float] = {}
        self._booked: dict[str, float] = {}
        self._now = self._clock.now
        self._rotated_at = self._now()
        self._allowed = self._rejected = 0

    def __repr__(self) -> str:
        return f"<RateLimiter {self._name!r} {self._rate:g}/{self._per:g}s burst={self._burst}>"

    def metrics(self) -> RateLimiterMetrics:
        with self._lock:
            self._rotate(self._clock.now())
            keys = len(self._current) + len(self._previous) + len(self._booked)
            return RateLimiterMetrics(
                self._name, self._rate, self._per, self._burst, self._allowed, self._rejected, keys
            )

    def try_acquire(self, key: str = "", *, cost: int = 1) -> bool:
        """Take ``cost`` from ``key``'s allowance if it is there now; never waits."""
        return self._reserve(key, cost, max_wait=0.0) == 0.0

    def decide(self, key: str = "", *, cost: int = 1) -> RateLimitDecision:
        """Like :meth:`try_acquire`, and say how much allowance is left.

        >>> decision = limiter.decide("user:42")
        >>> decision.allowed, decision.remaining, decision.retry_after
        (True, 9, 0.0)
        """
        booked, wait, tat, now = self._book(key, cost, 0.0)
        if not booked:
            self._on_rejected(key, wait, now)
        backlog = max(tat - now, 0.0)
        remaining = max(int((self._horizon - backlog) / self._interval + 1e-9), 0)
        return RateLimitDecision(booked, self._burst, remaining, backlog, 0.0 if booked else wait)

    def acquire(self, key: str = "", *, cost: int = 1, max_wait: Duration | None = None) -> None:
        """Take ``cost`` from ``key``'s allowance, waiting up to ``max_wait`` seconds for it.

        Raises :class:`RateLimitExceeded` at once if the wait would be longer.
        """
        wait = self._reserve(key, cost, max_wait=self._resolve_wait(max_wait), raising=True)
        if wait > 0:
            self._clock.sleep(wait)

    async def acquire_async(
        self, key: str = "", *, cost: int = 1, max_wait: Duration | None = None
    ) -> None:
        """Like :meth:`acquire`, for async code."""
        wait = self._reserve(key, cost, max_wait=self._resolve_wait(max_wait), raising=True)
        if wait > 0:
            try:
                await self._clock.sleep_async(wait)
            except asyncio.CancelledError:
                self._refund(key, cost)  # nobody will use the booked turn
                raise

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.acquire()
        return fn(*args, **kwargs)

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        await self.acquire_async()
        return await fn(*args, **kwargs)

    def reset(self, key: str | None = None) -> None:
        """Forget one key's history, or every key's."""
        with self._lock:
            for generation in (self._current, self._previous, self._booked):
                if key is None:
                    generation.clear()
                else:
                    generation.pop(key, None)

    # -- GCRA -----------------------------------------------------------------------

    def _resolve_wait(self, max_wait: Duration | None) -> float:
        if max_wait is None:
            return self._max_wait if self._max_wait is not None else float("inf")
        return check_seconds(self._name, "max_wait", max_wait)

    def _reserve(self, key: str, cost: int, *, max_wait: float, raising: bool = False) -> float:
        """Book the request and return how long to wait for it, if that is within
        ``max_wait``; else book nothing and return -1 (or raise)."""
        booked, wait, _, now = self._book(key, cost, max_wait)
        if booked:
            return wait
        self._on_rejected(key, wait, now)
        if raising:
            raise RateLimitExceeded(key, retry_after=wait, limiter=self._name)
        return -1.0

    def _book(self, key: str, cost: int, max_wait: float) -> tuple[bool, float, float, float]:
        """Under the lock: (booked, wait, the key's TAT after, now). ``wait`` is how
        long a booked request waits (0.0: none), or how long a refused one would."""
        if cost < 1 or cost > self._burst:
            raise ValueError(
                f"{self._name}: cost must be between 1 and burst ({self._burst}), got {cost!r}"
            )
        with self._lock:
            now = self._now()
            if now - self._rotated_at >= self._horizon:
                self._rotate(now)
            tat = self._current.get(key)
            young = tat is not None
            if tat is None:
                tat = self._previous.get(key)
                if tat is None:
                    tat = self._booked.get(key, now) if self._booked else now
            new_tat = (tat if tat > now else now) + cost * self._interval
            wait = new_tat - self._horizon - now
            if wait > max_wait:
                self._rejected += 1
                return False, wait, tat, now
            if wait > 0:
                self._book_ahead(key, new_tat, now)
            else:
                self._current[key] = new_tat
                if not young:  # it moved to the young generation
                    self._previous.pop(key, None)
                    if self._booked:
                        self._booked.pop(key, None)
            self._allowed += 1
            return True, max(wait, 0.0), new_tat, now

    def _on_rejected(self, key: str, retry_after: float, now: float) -> None:
        if self._listeners:
            self._listeners.emit(self._name, "rejected", now, key=key, retry_after=retry_after)

    def _book_ahead(self, key: str, tat: float, now: float) -> None:
        """Store a TAT that lies more than a horizon ahead (a booked wait).

        Such keys break the generations' promise (written a horizon ago means
        idle), so they wait in their own small dict until they come within reach.
        """
        self._current.pop(key, None)
        self._previous.pop(key, None)
        self._booked[key] = tat

    def _refund(self, key: str, cost: int) -> None:
        """Give back a booking whose caller stopped waiting for it."""
        with self._lock:
            for generation in (self._booked, self._current, self._previous):
                tat = generation.get(key)
                if tat is not None:
                    generation[key] = tat - cost * self._interval
                    return

    def _rotate(self, now: float) -> None:
        elapsed = now - self._rotated_at
        if elapsed < self._horizon:
            return
        # Keys untouched for a whole horizon have a TAT in the past: idle.
        self._previous = self._current if elapsed < 2 * self._horizon else {}
        self._current = {}
        self._rotated_at = now
        if self._booked:
            reach = now + self._horizon
            for key, tat in list(self._booked.items()):
                if tat <= reach:  # within a horizon now: an ordinary key again
                    del self._booked[key]
                    if tat > now:
                        self._current[key] = tat
