"""``buttress serve --demo``: a live workload, so every page of the service has numbers.

:class:`DemoService` is a :class:`~buttress.web.Service` that, between
:meth:`~DemoService.start` and :meth:`~DemoService.stop`, runs a
:class:`DemoWorkload` on the service's own queue, cache and registry:

* a simulated flaky upstream (the one ``buttress demo`` uses), which cycles
  through healthy, degrading, outage and recovery, called a few times a second
  through the service's cache (``cache.get_or_set``) behind
  ``Retry("demo.upstream")``, ``CircuitBreaker("demo.upstream")`` and
  ``Bulkhead("demo.upstream")``, with callers admitted by
  ``RateLimiter("demo.clients")``;
* a stream of tasks of every priority (a few a second, owned by ``demo``): most
  succeed, some only after retries, some run out of retries into the dead-letter
  queue;
* ``demo.housekeeping``, a periodic task that deletes old finished demo tasks, so
  the demo's queue stays small however long it runs.

The demo's tasks are registered when the service is built, before its worker
starts; rates are modest (a small machine runs it without noticing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from buttress._demo import FlakyUpstream, Phase, PhaseSchedule, Reply
from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.resilience import Bulkhead, CircuitBreaker, Pipeline, RateLimiter, Retry
from buttress.tasks import Backoff, Priority, current_task
from buttress.web._service import Service

if TYPE_CHECKING:
    from buttress.cache import Cache
    from buttress.config import Settings
    from buttress.resilience import Registry
    from buttress.tasks import Queue

__all__ = ["DEMO_OWNER", "DEMO_PHASES", "DemoService", "DemoWorkload"]

log = logging.getLogger("buttress.demo")

DEMO_OWNER = "demo"
CYCLE_SECONDS = 40.0
"""One healthy → degrading → outage → recovery cycle of the upstream."""
CLIENTS = 3
KEYS = 40
"""Distinct cache keys the clients ask for: some hits, some misses."""
CACHE_TTL = 3.0
KEEP_FINISHED = 300.0
"""Seconds a finished demo task stays before housekeeping deletes it."""

DEMO_PHASES: tuple[Phase, ...] = (
    Phase("healthy", 0.35, failure_rate=0.05, latency=0.03, spike_rate=0.05, spike_latency=0.3),
    Phase("degrading", 0.2, failure_rate=0.3, latency=0.08, spike_rate=0.15, spike_latency=0.5),
    Phase("outage", 0.2, failure_rate=0.95, latency=0.01, spike_rate=0.0, spike_latency=0.01),
    Phase("recovery", 0.25, failure_rate=0.05, latency=0.04, spike_rate=0.05, spike_latency=0.2),
)

# (failed attempts before success, weight): a task with retries=2 whose first three
# attempts fail goes to the dead-letter queue.
_FAILURES = ((0, 70), (1, 12), (2, 6), (99, 12))
# The first tasks, one per priority, show every outcome within seconds of the start.
_OPENING = (
    (Priority.CRITICAL, 0),
    (Priority.HIGH, 1),
    (Priority.NORMAL, 99),
    (Priority.LOW, 0),
    (Priority.BULK, 2),
)


class DemoWorkload:
    """The demo's upstream, primitives, tasks, and the coroutines that drive them.

    Building it registers the demo tasks on ``queue``; :meth:`start` and
    :meth:`stop` run and cancel the callers and the task producer.
    """

    def __init__(
        self,
        queue: Queue,
        cache: Cache,
        *,
        registry: Registry,
        clock: Clock | None = None,
        seed: int | None = None,
        cycle: float = CYCLE_SECONDS,
    ) -> None:
        self.queue = queue
        self.cache = cache
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.rng = random.Random(seed)
        self.cycle = cycle
        self.upstream = FlakyUpstream(self._schedule(), rng=self.rng, clock=self.clock)
        # The service's registry holds primitives weakly: these attributes keep them.
        self.breaker = CircuitBreaker(
            "demo.upstream",
            failure_threshold=None,
            failure_rate_threshold=0.5,
            minimum_calls=10,
            window=20,
            recovery_timeout=5.0,
            success_threshold=2,
            clock=clock,
            registry=registry,
        )
        self.retry = Retry(
            attempts=3,
            wait_initial=0.05,
            wait_max=0.5,
            name="demo.upstream",
            clock=clock,
            rng=self.rng,
            registry=registry,
        )
        self.bulkhead = Bulkhead(
            2, max_queue=1, queue_timeout=0.1, name="demo.upstream", clock=clock, registry=registry
        )
        self.limiter = RateLimiter(
            8, per=1.0, burst=8, name="demo.clients", clock=clock, registry=registry
        )
        self.pipeline = Pipeline(self.retry, self.breaker, self.bulkhead, registry=None)
        self.fetch: Callable[[int], Awaitable[Reply]] = self.pipeline(self.upstream.fetch)
        self.calls = 0
        self.failures = 0
        self.enqueued = 0
        self._register_tasks()
        self._jobs: list[asyncio.Task[None]] = []

    def _schedule(self) -> PhaseSchedule:
        return PhaseSchedule(self.cycle, clock=self.clock, phases=DEMO_PHASES)

    # --- tasks ----------------------------------------------------------------------------

    def _register_tasks(self) -> None:
        queue, rng, clock = self.queue, self.rng, self.clock
        quick = Backoff(base=0.2, factor=2.0, cap=2.0)

        async def work(seconds: float, fail_attempts: int, what: str) -> dict[str, Any]:
            context = current_task()
            steps = 4
            for step in range(steps):
                await clock.sleep_async(seconds / steps)
                context.progress((step + 1) / steps, f"{what}: step {step + 1} of {steps}")
            if context.attempt <= fail_attempts:
                raise ConnectionError(f"{what}: the remote end reset the connection")
            return {"attempt": context.attempt, "seconds": round(seconds, 3)}

        @queue.task(name="demo.send_email", priority=Priority.HIGH, retries=2, backoff=quick)
        async def send_email(to: str, fail_attempts: int = 0) -> dict[str, Any]:
            return await work(rng.uniform(0.02, 0.15), fail_attempts, f"mail to {to}")

        @queue.task(name="demo.resize_image", retries=2, backoff=quick)
        async def resize_image(image: str, fail_attempts: int = 0) -> dict[str, Any]:
            return await work(rng.uniform(0.05, 0.3), fail_attempts, f"resize {image}")

        @queue.task(name="demo.build_report", priority=Priority.BULK, retries=2, backoff=quick)
        async def build_report(report: str, fail_attempts: int = 0) -> dict[str, Any]:
            return await work(rng.uniform(0.3, 1.0), fail_attempts, f"report {report}")

        @queue.periodic(every=5.0, name="demo.housekeeping", priority=Priority.LOW)
        async def housekeeping() -> int:
            deleted = await queue.cleanup(KEEP_FINISHED, owner=DEMO_OWNER)
            if deleted:
                log.info("demo housekeeping: deleted %d old finished tasks", deleted)
            return deleted

        self.task_names = (send_email.name, resize_image.name, build_report.name)

    async def _enqueue(self, priority: Priority, fail_attempts: int) -> None:
        name = self.rng.choice(self.task_names)
        number = self.enqueued + 1
        subject = {
            "demo.send_email": f"user{number}@example.com",
            "demo.resize_image": f"photo-{number}.jpg",
            "demo.build_report": f"weekly-{number}",
        }[name]
        await self.queue.enqueue(
            name,
            subject,
            fail_attempts=fail_attempts,
            priority=priority,
            owner=DEMO_OWNER,
            tags=["demo"],
        )
        self.enqueued = number

    async def _produce(self) -> None:
        for priority, fail_attempts in _OPENING:
            await self._enqueue(priority, fail_attempts)
        failures, weights = zip(*_FAILURES, strict=True)
        priorities = list(Priority)
        while True:
            await self.clock.sleep_async(self.rng.uniform(0.2, 0.6))
            try:
                await self._enqueue(
                    self.rng.choice(priorities), self.rng.choices(failures, weights)[0]
                )
            except Exception:
                log.exception("demo: enqueueing a task failed")

    # --- the upstream ---------------------------------------------------------------------

    async def _call(self, caller: int) -> None:
        while True:
            await self.clock.sleep_async(self.rng.uniform(0.1, 0.4))
            if not self.limiter.try_acquire():
                continue  # shed, and counted by the limiter
            number = self.rng.randrange(KEYS)
            self.calls += 1
            try:
                await self.cache.get_or_set(
                    f"demo:item:{number}",
                    functools.partial(self.fetch, number),
                    ttl=CACHE_TTL,
                    tags=["demo"],
                )
            except Exception as exc:
                # Expected all the time: the breaker, retry and bulkhead have counted it.
                self.failures += 1
                log.debug("demo caller %d: %s: %s", caller, type(exc).__name__, exc)

    async def _conduct(self) -> None:
        """Restart the upstream's cycle when it ends, and log each phase as it begins."""
        current = ""
        while True:
            schedule = self.upstream.schedule
            if schedule.elapsed() >= self.cycle:
                self.upstream.schedule = schedule = self._schedule()
            phase = schedule.current().name
            if phase != current:
                current = phase
                log.info(
                    "demo upstream is now %s (breaker demo.upstream %s)",
                    phase,
                    self.breaker.state.value,
                )
            await self.clock.sleep_async(0.5)

    # --- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the callers, the task producer and the phase conductor."""
        if self._jobs:
            return
        self.upstream.schedule = self._schedule()
        coroutines = {"conduct": self._conduct(), "produce": self._produce()}
        coroutines.update({f"caller-{n}": self._call(n) for n in range(CLIENTS)})
        self._jobs = [
            asyncio.create_task(coroutine, name=f"buttress-demo-{name}")
            for name, coroutine in coroutines.items()
        ]
        log.info(
            "demo workload started: %d callers of a flaky upstream, tasks owned by %r",
            CLIENTS,
            DEMO_OWNER,
        )

    async def stop(self) -> None:
        """Cancel the workload's coroutines and wait for them to end."""
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job


class DemoService(Service):
    """A :class:`Service` that runs a :class:`DemoWorkload` while it runs.

    >>> service = DemoService(load_settings(queue_url="sqlite:////tmp/demo.db"))
    >>> app = create_app(service=service)
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        queue: Queue | None = None,
        cache: Cache | None = None,
        registry: Registry | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(settings, queue=queue, cache=cache, registry=registry, clock=clock)
        # Registered now, before start() starts the worker, so it knows every demo task.
        self.demo = DemoWorkload(
            self.queue, self.cache, registry=self.registry, clock=clock, seed=seed
        )

    async def start(self) -> None:
        await super().start()
        self.demo.start()

    async def stop(self) -> None:
        """Stop the workload first: nothing enqueues into a closing queue."""
        try:
            await self.demo.stop()
        finally:
            await super().stop()
