"""Health checks: run every check concurrently, each under a timeout, and grade the whole.

>>> health = Health(timeout=2.0)
>>> health.add("queue", queue_check(queue), critical=True)   # down: not ready
>>> health.add("cache", cache_check(cache))                  # L2 lost: degraded
>>> health.add("breakers", breakers_check())
>>> report = await health.check()
>>> report.status
<HealthStatus.HEALTHY: 'healthy'>
>>> report.to_dict()                                          # JSON for /health/ready

A check is an ``async def`` returning :class:`ComponentHealth`. One that raises or
runs past the timeout makes its component unhealthy; it never fails the report.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from buttress.clock import Clock
from buttress.errors import redact
from buttress.resilience import CircuitBreaker, CircuitState, Registry, default_registry
from buttress.resilience._common import Duration, check_seconds, resolve_clock

if TYPE_CHECKING:
    from buttress.cache import Cache, SyncCache
    from buttress.tasks import Queue

__all__ = [
    "ComponentHealth",
    "Health",
    "HealthCheck",
    "HealthReport",
    "HealthStatus",
    "breakers_check",
    "cache_check",
    "queue_check",
]


class HealthStatus(enum.StrEnum):
    """How well a component, or the whole service, is doing."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    """Working, with less: a lost cache tier, an open breaker."""
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    """One component's health: what a check returns.

    >>> ComponentHealth(HealthStatus.DEGRADED, detail={"unavailable": ["redis"]})

    ``detail`` must hold JSON values. ``latency_seconds`` is measured by
    :class:`Health`, which replaces whatever the check put there.
    """

    status: HealthStatus
    _: KW_ONLY
    latency_seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """Why the check failed (exception type and message, secrets redacted)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "latency_seconds": self.latency_seconds,
            "detail": self.detail,
            "error": self.error,
        }


HealthCheck = Callable[[], Awaitable[ComponentHealth]]
"""A health check: an async callable with no arguments returning :class:`ComponentHealth`."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every component's health and the overall status, at ``checked_at`` (UTC)."""

    status: HealthStatus
    components: dict[str, ComponentHealth]
    checked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values: ``json.dumps(report.to_dict())``."""
        return {
            "status": self.status.value,
            "checked_at": self.checked_at.isoformat(),
            "components": {name: c.to_dict() for name, c in self.components.items()},
        }


@dataclass(frozen=True, slots=True)
class _Entry:
    check: HealthCheck
    critical: bool
    timeout: float


class Health:
    """Named checks, run together: see the module docstring.

    The overall status is UNHEALTHY if a critical component is unhealthy,
    DEGRADED if any component is not healthy, and HEALTHY otherwise. Timeouts
    and latencies run on ``clock`` (the system clock unless given).
    """

    def __init__(self, timeout: Duration = 2.0, *, clock: Clock | None = None) -> None:
        self.timeout = check_seconds("Health", "timeout", timeout, allow_zero=False)
        self._clock = resolve_clock("Health", clock)
        self._checks: dict[str, _Entry] = {}

    def add(
        self,
        name: str,
        check: HealthCheck,
        *,
        critical: bool = False,
        timeout: Duration | None = None,
    ) -> None:
        """Add ``check`` as ``name``; ``critical=True`` lets it make the service unhealthy.

        ``timeout`` overrides the default for this check.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"Health.add: name must be a non-empty string, got {name!r}")
        if name in self._checks:
            raise ValueError(f"Health.add: a check named {name!r} is already added")
        if not callable(check):
            raise TypeError(
                f"Health.add: check must be an async callable returning ComponentHealth, "
                f"got {check!r}"
            )
        if not isinstance(critical, bool):
            raise TypeError(f"Health.add: critical must be True or False, got {critical!r}")
        limit = (
            self.timeout
            if timeout is None
            else check_seconds("Health.add", "timeout", timeout, allow_zero=False)
        )
        self._checks[name] = _Entry(check, critical, limit)

    @property
    def names(self) -> list[str]:
        """The checks' names, in the order they were added."""
        return list(self._checks)

    async def check(self) -> HealthReport:
        """Run every check concurrently and grade the result."""
        checked_at = datetime.now(UTC)
        results = await asyncio.gather(*(self._run(e) for e in self._checks.values()))
        components = dict(zip(self._checks, results, strict=True))
        if any(
            components[name].status is HealthStatus.UNHEALTHY
            for name, entry in self._checks.items()
            if entry.critical
        ):
            status = HealthStatus.UNHEALTHY
        elif any(c.status is not HealthStatus.HEALTHY for c in components.values()):
            status = HealthStatus.DEGRADED
        else:
            status = HealthStatus.HEALTHY
        return HealthReport(status, components, checked_at)

    async def _run(self, entry: _Entry) -> ComponentHealth:
        started = self._clock.now()
        try:
            result = await self._bounded(entry)
        except TimeoutError:
            result = _failed(f"timed out after {entry.timeout:g} s")
        except Exception as exc:
            result = _failed(f"{type(exc).__name__}: {exc}")
        else:
            if not isinstance(result, ComponentHealth):
                result = _failed(f"the check returned {type(result).__name__}, not ComponentHealth")
        return replace(result, latency_seconds=self._clock.now() - started)

    async def _bounded(self, entry: _Entry) -> object:
        """The check's result (user code: typed loosely, and checked by the caller),
        or TimeoutError once ``entry.timeout`` passes on the clock.

        A race with a clock sleep rather than ``asyncio.timeout``, so a manual
        clock drives it in tests like every other timeout in buttress.
        """
        job: asyncio.Future[object] = asyncio.ensure_future(entry.check())
        timer = asyncio.ensure_future(self._clock.sleep_async(entry.timeout))
        try:
            await asyncio.wait((job, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not job.done():
                job.cancel()
                # Not awaited: a check that ignores cancellation must not hold up
                # the report. Its outcome is read so asyncio does not log it.
                job.add_done_callback(_consume)
        if not job.done():
            raise TimeoutError
        return job.result()


def _consume(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()


def _failed(error: str) -> ComponentHealth:
    return ComponentHealth(HealthStatus.UNHEALTHY, error=redact(error))


# --- checks -----------------------------------------------------------------------------


def queue_check(queue: Queue) -> HealthCheck:
    """A check that reads the queue's stats from its backend: healthy with the counts,
    unhealthy if the backend fails. Add it ``critical=True``: without its queue the
    service cannot take work.
    """

    async def check() -> ComponentHealth:
        stats = await queue.stats()
        detail: dict[str, Any] = {status.value: n for status, n in stats.by_status.items()}
        detail["oldest_waiting_seconds"] = stats.oldest_waiting_seconds
        return ComponentHealth(HealthStatus.HEALTHY, detail=detail)

    return check


def cache_check(cache: Cache | SyncCache) -> HealthCheck:
    """A check that pings each remote tier: degraded, naming the tiers, if one is lost.

    A tier whose breaker is open is already known to be down. The others are
    pinged, because a server that died since the cache last called it still
    counts as available in the stats. The ping goes to the store directly, not
    through the cache's breaker: probing must not add errors to the cache's
    counters or trip its breaker. A cache is never unhealthy: without a tier it
    still answers, from memory and its loader.
    """
    core = getattr(cache, "_core", None)
    if core is None:
        raise TypeError(f"cache_check needs a Cache or SyncCache, got {cache!r}")

    async def ping(tier: Any) -> str | None:
        """None if ``tier`` is up, else why not."""
        if tier.breaker.state is CircuitState.OPEN:
            return "skipped: failing calls opened its breaker"
        try:
            await tier.store.aping()
        except Exception as exc:
            return redact(f"{type(exc).__name__}: {exc}")
        return None

    async def check() -> ComponentHealth:
        remotes = list(core.remotes)
        problems = await asyncio.gather(*(ping(tier) for tier in remotes))
        lost = {tier.name: why for tier, why in zip(remotes, problems, strict=True) if why}
        detail: dict[str, Any] = {"tiers": list(cache.tiers)}
        if not lost:
            return ComponentHealth(HealthStatus.HEALTHY, detail=detail)
        detail["unavailable"] = sorted(lost)
        detail["errors"] = lost
        return ComponentHealth(HealthStatus.DEGRADED, detail=detail)

    return check


def breakers_check(registry: Registry = default_registry) -> HealthCheck:
    """A check that is degraded while any breaker in ``registry`` is open or half-open.

    Half-open counts as degraded: the dependency has not yet proved it is back,
    and calls beyond the few probes are still rejected. An open breaker never
    makes the service unhealthy, even when the check is critical: the breaker
    is doing its job, and taking the service out of rotation for a lost
    dependency would spread the outage.
    """
    if not isinstance(registry, Registry):
        raise TypeError(f"breakers_check needs a buttress Registry, got {registry!r}")

    async def check() -> ComponentHealth:
        states = {b.name: b.state for b in registry.of_type(CircuitBreaker)}
        opened = [name for name, state in states.items() if state is CircuitState.OPEN]
        half = [name for name, state in states.items() if state is CircuitState.HALF_OPEN]
        detail: dict[str, Any] = {"breakers": len(states), "open": opened, "half_open": half}
        status = HealthStatus.DEGRADED if opened or half else HealthStatus.HEALTHY
        return ComponentHealth(status, detail=detail)

    return check
