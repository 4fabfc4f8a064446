"""The objects the ops API works on, built once from the settings."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from buttress.cache import Cache
from buttress.config import ApiKey, BreakerSettings, Settings, load_settings
from buttress.observability import Health, Metrics, breakers_check, cache_check, queue_check
from buttress.resilience import CircuitBreaker, RateLimiter, Registry, Retry, default_registry
from buttress.tasks import Queue, Worker

if TYPE_CHECKING:
    from buttress.clock import Clock

__all__ = ["Service"]

log = logging.getLogger("buttress.web")

API_LIMITER = "buttress.api"


class Service:
    """The queue, cache, primitives, metrics and health checks behind the API.

    Built from :class:`~buttress.config.Settings` with the embedded defaults, or
    around an application's own objects:

    >>> service = Service(load_settings(), queue=my_queue, cache=my_cache)
    >>> app = create_app(service=service)

    The service holds the breakers, retries and limiters its settings name (the
    registry only holds them weakly), and runs an in-process worker between
    :meth:`start` and :meth:`stop` when ``settings.worker`` is on.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        queue: Queue | None = None,
        cache: Cache | None = None,
        registry: Registry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.registry = default_registry if registry is None else registry
        self.clock = clock
        self.queue = queue if queue is not None else Queue.from_url(self.settings.queue_url)
        self.cache = (
            cache
            if cache is not None
            else Cache.from_url(*self.settings.cache_urls, name="buttress")
        )
        self.principals: dict[str, ApiKey] = dict(self.settings.api_keys)
        self.breakers: dict[str, CircuitBreaker] = {}
        for name, breaker_settings in self.settings.breakers.items():
            self.add_breaker(name, breaker_settings)
        self.retries: dict[str, Retry] = {
            name: conf.build(name, registry=self.registry, clock=clock)
            for name, conf in self.settings.retries.items()
        }
        self.rate_limiters: dict[str, RateLimiter] = {
            name: conf.build(name, registry=self.registry, clock=clock)
            for name, conf in self.settings.rate_limits.items()
        }
        limit = self.settings.api_rate_limit
        self.api_limiter: RateLimiter | None = (
            None if limit is None else limit.build(API_LIMITER, registry=self.registry, clock=clock)
        )
        self.metrics = Metrics(self.registry, clock=clock)
        self.metrics.watch_cache(self.cache)
        self.metrics.watch_queue(self.queue)
        self.health = Health(timeout=self.settings.health_timeout, clock=clock)
        self.health.add("queue", queue_check(self.queue), critical=True)
        self.health.add("cache", cache_check(self.cache))
        self.health.add("breakers", breakers_check(self.registry))
        self.worker: Worker | None = None
        self._worker_run: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def open_access(self) -> bool:
        """No API keys: every caller is an admin, so the service stays on loopback."""
        return not self.principals

    def add_breaker(self, name: str, settings: BreakerSettings) -> CircuitBreaker:
        """Make (or replace) the breaker ``name`` from settings, and keep it."""
        breaker = settings.build(name, registry=self.registry, clock=self.clock)
        self.breakers[name] = breaker
        return breaker

    async def start(self) -> None:
        """Start the in-process worker (if the settings want one)."""
        if self._stopped:
            raise RuntimeError("this service was stopped (its stores are closed): make a new one")
        if self.settings.worker and self._worker_run is None:
            self.worker = Worker(
                self.queue, concurrency=self.settings.worker_concurrency, signals=False
            )
            self.metrics.watch_worker(self.worker)
            self._worker_run = asyncio.create_task(self.worker.run(), name="buttress-worker")

    async def stop(self) -> None:
        """Stop the worker (running tasks get its grace period), then close the stores."""
        if self._stopped:
            return
        self._stopped = True
        if self.worker is not None and self._worker_run is not None:
            self.worker.stop()
            try:
                await self._worker_run
            except Exception:
                log.exception("the in-process worker failed")
            self._worker_run = None
        await self.cache.close()
        self.queue.close()
