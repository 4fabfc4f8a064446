"""Type-checked, never run: the public API keeps the types of what it wraps.

mypy checks this file (``make test`` runs ``mypy --strict`` over tests/).
"""

from __future__ import annotations

from buttress import (
    Bulkhead,
    CircuitBreaker,
    Pipeline,
    RateLimiter,
    fallback,
    hedge,
    retry,
    timeout,
)

breaker = CircuitBreaker("typing")


@breaker
def charge(cents: int, *, currency: str = "EUR") -> str:
    return f"{cents} {currency}"


@retry(attempts=3, on=(ConnectionError,))
async def fetch(url: str) -> bytes:
    return url.encode()


@Pipeline(fallback(0), retry(), breaker, Bulkhead(10))
def lookup(key: str) -> int:
    return len(key)


@hedge(delay=0.05)
async def replica(key: str) -> str:
    return key


@timeout(1.0)
@RateLimiter(10)
def limited() -> float:
    return 1.0


def sync_replica(key: str) -> str:
    return key


hedge(delay=0.05)(sync_replica)  # type: ignore[arg-type]  # hedging needs async def


async def use() -> None:
    receipt: str = charge(100, currency="USD")
    body: bytes = await fetch("https://example.com")
    size: int = lookup("k")
    same: str = await replica("k")
    direct: str = breaker.call(charge, 5)
    awaited: bytes = await breaker.call_async(fetch, "u")
    value: float = limited()
    print(receipt, body, size, same, direct, awaited, value)
