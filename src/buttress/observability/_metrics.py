"""Prometheus metrics read from the live primitives at scrape time.

>>> metrics = Metrics()                      # every primitive in default_registry
>>> metrics.watch_cache(cache)
>>> metrics.watch_queue(queue, name="default")
>>> metrics.watch_worker(worker)
>>> metrics.observe_request("GET", "/api/v1/tasks/{id}", 200, 0.012)
>>> await metrics.refresh()                  # queue stats are async: read them now
>>> body, content_type = metrics.render()

Breakers, bulkheads, rate limiters and caches already count what they do, so the
collectors here read those counters when Prometheus scrapes instead of keeping a
second copy. Only what no primitive remembers is counted here: task run times
(fed by workers) and HTTP requests (fed by the web middleware).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from buttress.clock import Clock
from buttress.resilience import (
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    RateLimiter,
    Registry,
    ResilienceEvent,
    default_registry,
)
from buttress.resilience._common import Duration, check_seconds, resolve_clock

if TYPE_CHECKING:
    from buttress.cache import Cache, SyncCache
    from buttress.cache._core import CacheCore
    from buttress.tasks import Queue, Task, Worker
    from buttress.tasks._backend import QueueStats

__all__ = ["Metrics"]

log = logging.getLogger("buttress.observability")

TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Task run time buckets in seconds: 5 ms to 5 min."""

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Request latency buckets in seconds: 5 ms to 10 s."""

_FINISHED = frozenset({"succeeded", "retried", "dead", "cancelled", "lease_lost"})
"""Worker events that end an attempt (those carry ``seconds``)."""


class Metrics:
    """Every buttress metric in one Prometheus registry of its own.

    Primitives in ``registry`` (breakers, bulkheads, rate limiters) appear with no
    further setup and disappear when the program drops them (the registry is
    weak). Caches, queues and workers are watched explicitly. Call
    :meth:`refresh` before :meth:`render` to bring the queue gauges up to date.

    >>> metrics = Metrics(prometheus_registry=prometheus_client.REGISTRY)  # share one
    """

    def __init__(
        self,
        registry: Registry = default_registry,
        *,
        prometheus_registry: CollectorRegistry | None = None,
        refresh_interval: Duration = 1.0,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"Metrics: registry must be a buttress Registry, got {registry!r}")
        if prometheus_registry is not None and not isinstance(
            prometheus_registry, CollectorRegistry
        ):
            raise TypeError(
                "Metrics: prometheus_registry must be a prometheus_client CollectorRegistry "
                f"or None, got {prometheus_registry!r}"
            )
        self.registry = registry
        # Queue stats are a database query, and /metrics answers anyone who asks:
        # refresh() reads them at most this often, however hard it is scraped.
        self.refresh_interval = check_seconds("Metrics", "refresh_interval", refresh_interval)
        self._clock = resolve_clock("Metrics", clock)
        self._refreshed_at: float | None = None
        self.prometheus_registry = (
            CollectorRegistry() if prometheus_registry is None else prometheus_registry
        )
        # Held weakly, by name: a watched cache or queue that the program drops
        # leaves the output, as registry primitives do.
        self._caches: dict[str, weakref.ref[CacheCore]] = {}
        self._queues: dict[str, _QueueWatch] = {}
        self.prometheus_registry.register(_PrimitiveCollector(registry))
        self.prometheus_registry.register(_CacheCollector(self._caches))
        self.prometheus_registry.register(_QueueCollector(self._queues))
        self._task_seconds = Histogram(
            "buttress_task_duration_seconds",
            "How long task attempts ran, by task and outcome.",
            ["task", "outcome"],
            buckets=TASK_BUCKETS,
            registry=self.prometheus_registry,
        )
        self._tasks = Counter(
            "buttress_tasks",
            "Task attempts that ended, by task and outcome.",
            ["task", "outcome"],
            registry=self.prometheus_registry,
        )
        self._requests = Counter(
            "buttress_http_requests",
            "HTTP requests served, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.prometheus_registry,
        )
        self._request_seconds = Histogram(
            "buttress_http_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.prometheus_registry,
        )
        # .labels() validates and locks on every call; the hot path looks its
        # children up here instead, one dict lookup per request.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._task_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    # --- watching ---------------------------------------------------------------------

    def watch_cache(self, cache: Cache | SyncCache) -> None:
        """Expose ``cache``'s per-tier counters under its name (a second cache of the
        same name replaces the first).

        The cache is held weakly: watching it does not keep it (and its
        connections) alive. What is held is the state its faces share, so
        watching ``cache.sync`` — a face made on the spot — works too.
        """
        core = getattr(cache, "_core", None)
        if core is None:
            raise TypeError(f"watch_cache needs a Cache or SyncCache, got {cache!r}")
        self._caches[core.name] = weakref.ref(core)

    def watch_queue(self, queue: Queue, name: str = "default") -> None:
        """Expose ``queue``'s stats as ``queue=name`` (read by :meth:`refresh`).

        The queue is held weakly; watching another queue under the same name
        replaces the first.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"watch_queue: name must be a non-empty string, got {name!r}")
        if not callable(getattr(queue, "stats", None)):
            raise TypeError(f"watch_queue needs a Queue, got {queue!r}")
        self._queues[name] = _QueueWatch(weakref.ref(queue))

    def watch_worker(self, worker: Worker) -> None:
        """Count and time the task attempts ``worker`` finishes from now on."""
        add = getattr(worker, "add_listener", None)
        if add is None:
            raise TypeError(f"watch_worker needs a Worker, got {worker!r}")
        add(self._on_task_event, kinds=_FINISHED)

    async def refresh(self) -> None:
        """Read every watched queue's stats (concurrently) for the next scrape.

        Never raises for a queue: a failing backend is logged, keeps its last
        numbers and reports ``buttress_queue_up 0`` until it answers again.
        Within ``refresh_interval`` of the last refresh it reads nothing: the
        numbers are that fresh already.
        """
        now = self._clock.now()
        if self._refreshed_at is not None and now - self._refreshed_at < self.refresh_interval:
            return
        self._refreshed_at = now
        for name, watch in list(self._queues.items()):
            if watch.queue() is None:
                self._queues.pop(name, None)
        watches = list(self._queues.items())
        await asyncio.gather(*(watch.refresh(name) for name, watch in watches))

    # --- counting ---------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency.

        ``route`` must be the route template (``/api/v1/tasks/{id}``), never the
        raw path: each distinct value makes a new time series.
        """
        children = self._request_children.get((method, route, status))
        if children is None:
            children = self._request_children[(method, route, status)] = (
                self._requests.labels(method, route, str(status)),
                self._request_seconds.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def _on_task_event(self, event: ResilienceEvent) -> None:
        task: Task = event.attributes["task"]
        seconds = event.attributes.get("seconds")
        if seconds is None:
            return  # not the end of an attempt (a lease lost by a heartbeat)
        outcome = event.kind
        children = self._task_children.get((task.name, outcome))
        if children is None:
            children = self._task_children[(task.name, outcome)] = (
                self._tasks.labels(task.name, outcome),
                self._task_seconds.labels(task.name, outcome),
            )
        children[0].inc()
        children[1].observe(seconds)

    # --- output -----------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric, and its content type.

        >>> body, content_type = metrics.render()
        >>> return Response(body, media_type=content_type)
        """
        return _generate_latest(self.prometheus_registry), CONTENT_TYPE_LATEST


# --- collectors: read at scrape time ------------------------------------------------------


def _family(
    kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str, labels: list[str]
) -> Any:
    return kind(name, doc, labels=labels)


def _safely(read: Callable[[], Any], what: str) -> Any:
    """``read()``, or None (logged): one broken source must not fail the whole scrape."""
    try:
        return read()
    except Exception:
        log.exception("metrics: reading %s failed", what)
        return None


class _PrimitiveCollector:
    """Breakers, bulkheads and rate limiters of one buttress registry."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def describe(self) -> Iterable[Metric]:
        # Names only, so a registry can refuse duplicates without collecting.
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        self._breakers(families)
        self._bulkheads(families)
        self._rate_limiters(families)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, Any]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        specs = [
            (g, "circuit_breaker_state", "1 for the breaker's current state.", ["name", "state"]),
            (c, "circuit_breaker_calls", "Breaker calls by outcome.", ["name", "outcome"]),
            (c, "circuit_breaker_slow_calls", "Calls slower than the slow limit.", ["name"]),
            (g, "circuit_breaker_failure_rate", "Failed share of the window.", ["name"]),
            (g, "bulkhead_active", "Calls running in the bulkhead.", ["name"]),
            (g, "bulkhead_queued", "Calls waiting for a bulkhead slot.", ["name"]),
            (g, "bulkhead_max_concurrent", "The bulkhead's concurrency limit.", ["name"]),
            (g, "bulkhead_max_queue", "The bulkhead's waiting-room size.", ["name"]),
            (c, "bulkhead_rejected", "Calls the full bulkhead turned away.", ["name"]),
            (c, "rate_limiter_decisions", "Rate limiter decisions.", ["name", "decision"]),
            (g, "rate_limiter_keys", "Keys the rate limiter remembers.", ["name"]),
        ]
        return {
            name: _family(kind, f"buttress_{name}", doc, labels)
            for kind, name, doc, labels in specs
        }

    def _breakers(self, families: dict[str, Any]) -> None:
        for breaker in self._registry.of_type(CircuitBreaker):
            m = _safely(breaker.metrics, f"breaker {breaker.name!r}")
            if m is None:
                continue
            for state in CircuitState:
                families["circuit_breaker_state"].add_metric(
                    [m.name, state.value], 1.0 if state is m.state else 0.0
                )
            calls = families["circuit_breaker_calls"]
            calls.add_metric([m.name, "success"], m.successes)
            calls.add_metric([m.name, "failure"], m.failures)
            calls.add_metric([m.name, "ignored"], m.ignored)
            calls.add_metric([m.name, "rejected"], m.rejections)
            # Slow calls are also successes or failures: a label of the calls
            # counter would count them twice in sum(), so they have their own.
            families["circuit_breaker_slow_calls"].add_metric([m.name], m.slow_calls)
            families["circuit_breaker_failure_rate"].add_metric([m.name], m.failure_rate)

    def _bulkheads(self, families: dict[str, Any]) -> None:
        for bulkhead in self._registry.of_type(Bulkhead):
            m = _safely(bulkhead.metrics, f"bulkhead {bulkhead.name!r}")
            if m is None:
                continue
            families["bulkhead_active"].add_metric([m.name], m.active)
            families["bulkhead_queued"].add_metric([m.name], m.queued)
            families["bulkhead_max_concurrent"].add_metric([m.name], m.max_concurrent)
            families["bulkhead_max_queue"].add_metric([m.name], m.max_queue)
            families["bulkhead_rejected"].add_metric([m.name], m.rejected)

    def _rate_limiters(self, families: dict[str, Any]) -> None:
        for limiter in self._registry.of_type(RateLimiter):
            m = _safely(limiter.metrics, f"rate limiter {limiter.name!r}")
            if m is None:
                continue
            decisions = families["rate_limiter_decisions"]
            decisions.add_metric([m.name, "allowed"], m.allowed)
            decisions.add_metric([m.name, "rejected"], m.rejected)
            families["rate_limiter_keys"].add_metric([m.name], m.keys)


class _CacheCollector:
    """Per-tier counters of the watched caches."""

    def __init__(self, caches: dict[str, weakref.ref[CacheCore]]) -> None:
        self._caches = caches

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    @staticmethod
    def _families() -> dict[str, Any]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        tier = ["cache", "tier"]
        specs = [
            (c, "cache_hits", "Reads a tier answered.", tier),
            (c, "cache_misses", "Reads a tier did not have.", tier),
            (c, "cache_errors", "Calls to a tier that failed.", tier),
            (g, "cache_tier_available", "0 while a failing tier is skipped.", tier),
            (c, "cache_loads", "Values the loader produced.", ["cache"]),
            (c, "cache_load_errors", "Loader calls that failed.", ["cache"]),
            (c, "cache_stale_served", "Expired values served when loading failed.", ["cache"]),
        ]
        return {
            name: _family(kind, f"buttress_{name}", doc, labels)
            for kind, name, doc, labels in specs
        }

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        for name, ref in sorted(self._caches.items()):
            core = ref()
            if core is None:
                self._caches.pop(name, None)
                continue
            stats = _safely(core.stats, f"cache {name!r}")
            if stats is None:
                continue
            for tier in stats.tiers:
                labels = [name, tier.name]
                families["cache_hits"].add_metric(labels, tier.hits)
                families["cache_misses"].add_metric(labels, tier.misses)
                families["cache_errors"].add_metric(labels, tier.errors)
                families["cache_tier_available"].add_metric(labels, 1.0 if tier.available else 0.0)
            families["cache_loads"].add_metric([name], stats.loads)
            families["cache_load_errors"].add_metric([name], stats.load_errors)
            families["cache_stale_served"].add_metric([name], stats.stale_served)
        return list(families.values())


@dataclass
class _QueueWatch:
    """A watched queue and the last stats read from it."""

    queue: weakref.ref[Queue]
    stats: QueueStats | None = None
    up: bool | None = None
    """None until the first refresh."""

    async def refresh(self, name: str) -> None:
        queue = self.queue()
        if queue is None:
            return
        try:
            self.stats = await queue.stats()
        except Exception:
            log.exception("metrics: reading the stats of queue %r failed", name)
            self.up = False
        else:
            self.up = True


class _QueueCollector:
    """The snapshot :meth:`Metrics.refresh` took of each watched queue."""

    def __init__(self, queues: dict[str, _QueueWatch]) -> None:
        self._queues = queues

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    @staticmethod
    def _families() -> dict[str, Any]:
        g = GaugeMetricFamily
        specs = [
            ("queue_up", "1 if the last refresh read the queue's stats.", ["queue"]),
            ("queue_tasks", "Tasks in the queue, by status.", ["queue", "status"]),
            ("queue_waiting", "Waiting tasks, by priority.", ["queue", "priority"]),
            ("queue_dead_letters", "Tasks in the dead-letter queue.", ["queue"]),
            ("queue_oldest_waiting_seconds", "Age of the oldest waiting task.", ["queue"]),
        ]
        return {name: _family(g, f"buttress_{name}", doc, labels) for name, doc, labels in specs}

    def collect(self) -> Iterable[Metric]:
        # Imported here, not at the top: observability sits below tasks.
        from buttress.tasks._model import Priority, TaskStatus  # noqa: PLC0415

        families = self._families()
        for name, watch in sorted(self._queues.items()):
            if watch.up is not None:
                families["queue_up"].add_metric([name], 1.0 if watch.up else 0.0)
            stats = watch.stats
            if stats is None:
                continue
            for status in TaskStatus:
                families["queue_tasks"].add_metric(
                    [name, status.value], stats.by_status.get(status, 0)
                )
            for priority in Priority:
                families["queue_waiting"].add_metric(
                    [name, priority.label], stats.by_priority.get(priority, 0)
                )
            families["queue_dead_letters"].add_metric([name], sum(stats.dead_letters.values()))
            families["queue_oldest_waiting_seconds"].add_metric(
                [name], stats.oldest_waiting_seconds or 0.0
            )
        return list(families.values())
