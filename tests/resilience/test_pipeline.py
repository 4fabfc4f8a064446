"""Pipeline: strategies composed in order, the first outermost."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest

from buttress import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Pipeline,
    fallback,
    retry,
    timeout,
)
from buttress.clock import ManualClock


def tracer(name: str, log: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A user-written strategy that records when it is entered."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            log.append(name)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def test_first_strategy_is_outermost() -> None:
    """Strategies run in the order given, the first wrapping all the others."""
    log: list[str] = []
    pipeline = Pipeline(tracer("a", log), tracer("b", log), tracer("c", log))
    assert 3 == pipeline(lambda: 3)()
    assert ["a", "b", "c"] == log


def test_retry_outside_breaker_counts_each_attempt_once() -> None:
    """With retry outside the breaker, each attempt is one breaker call."""
    clock = ManualClock(autojump=True)
    breaker = CircuitBreaker("p", failure_threshold=10, clock=clock, registry=None)
    attempts = iter([ConnectionError("1"), ConnectionError("2"), None])

    def flaky() -> str:
        error = next(attempts)
        if error:
            raise error
        return "ok"

    pipeline = Pipeline(retry(attempts=3, clock=clock), breaker)
    assert "ok" == pipeline.call(flaky)
    metrics = breaker.metrics()
    assert (3, 2, 1) == (metrics.calls, metrics.failures, metrics.successes)


def test_fallback_outermost_answers_for_an_open_breaker() -> None:
    """A fallback outside the breaker answers when the breaker rejects."""
    clock = ManualClock(autojump=True)
    breaker = CircuitBreaker("fb-open", failure_threshold=2, clock=clock, registry=None)
    calls = 0

    def down() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    resilient = Pipeline(
        fallback("cached"), retry(attempts=2, on=ConnectionError, clock=clock), breaker
    )(down)
    assert "cached" == resilient()  # two failed attempts open the breaker
    assert "cached" == resilient()  # rejected without calling
    assert 2 == calls
    assert 1 == breaker.metrics().rejections


def test_four_strategy_pipeline_sheds_load_with_a_bulkhead() -> None:
    """fallback + retry + breaker + bulkhead: a full bulkhead is answered by the fallback."""
    bulkhead = Bulkhead(1, registry=None)
    breaker = CircuitBreaker("four", registry=None)
    pipeline = Pipeline(
        fallback("busy", on=BulkheadFullError), retry(attempts=2), breaker, bulkhead
    )

    @pipeline
    def outer() -> str:
        return inner()

    @pipeline
    def inner() -> str:
        return "ran"

    assert "busy" == outer()  # inner found the only slot taken by outer
    assert "ran" == inner()


async def test_async_pipeline_with_timeout_per_attempt(clock: ManualClock) -> None:
    """In an async pipeline, the timeout inside the retry limits each attempt."""
    attempts = 0

    async def sometimes_hangs() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.Event().wait()
        return "second try"

    pipeline = Pipeline(
        retry(attempts=2, wait_initial=0, wait_max=0, clock=clock), timeout(1, clock=clock)
    )
    task = asyncio.create_task(pipeline.call_async(sometimes_hangs))
    await clock.advance_async(1)
    assert "second try" == await task
    assert 2 == attempts


def test_call_reuses_the_composition() -> None:
    """pipeline.call(fn) composes fn once and reuses it."""
    composed: list[int] = []

    def counting(fn: Callable[..., Any]) -> Callable[..., Any]:
        composed.append(1)
        return fn

    pipeline = Pipeline(counting)

    def work(x: int) -> int:
        return x * 2

    assert [2, 4] == [pipeline.call(work, 1), pipeline.call(work, 2)]
    assert 1 == len(composed)


def test_metrics_gather_each_named_strategy() -> None:
    """metrics() reports each strategy's metrics by name."""
    breaker = CircuitBreaker("pm", registry=None)
    pipeline = Pipeline(retry(name="pm-retry"), breaker)
    metrics = pipeline.metrics()
    assert ["pm-retry", "pm"] == list(metrics)
    assert "pm" == metrics["pm"].name


def test_open_breaker_fails_fast_through_a_default_retry() -> None:
    """By default a retry does not wait out an open breaker: the rejection comes straight back."""
    clock = ManualClock(autojump=True)
    breaker = CircuitBreaker("fast", recovery_timeout=5, clock=clock, registry=None)
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        Pipeline(retry(attempts=2, clock=clock), breaker).call(lambda: "x")
    assert (0.0, 1) == (clock.now(), breaker.metrics().rejections)


def test_retry_told_to_retry_an_open_breaker_waits_its_retry_after() -> None:
    """With on=CircuitOpenError, the retry waits as long as the breaker says."""
    clock = ManualClock(autojump=True)
    breaker = CircuitBreaker(
        "hint", failure_threshold=1, recovery_timeout=5, clock=clock, registry=None
    )
    with pytest.raises(ConnectionError):
        breaker.call(_refuse)
    policy = retry(attempts=2, on=(CircuitOpenError, ConnectionError), clock=clock)
    assert "x" == Pipeline(policy, breaker).call(lambda: "x")
    assert 5.0 == clock.now()


def _refuse() -> None:
    raise ConnectionError("refused")


def test_inner_rejections_do_not_trip_an_outer_breaker() -> None:
    """A full bulkhead inside a breaker is load shedding, not a failing dependency."""
    breaker = CircuitBreaker("outer", failure_threshold=1, registry=None)
    bulkhead = Bulkhead(1, registry=None)
    guarded = Pipeline(breaker, bulkhead)

    @guarded
    def outer() -> str:
        with pytest.raises(BulkheadFullError):
            guarded.call(str)
        return "done"

    assert "done" == outer()
    assert CircuitState.CLOSED == breaker.state
    assert 1 == breaker.metrics().ignored


@pytest.mark.parametrize(
    ("strategies", "message"),
    [((), "at least one strategy"), ((retry(), 42), "strategy #2 must be a strategy")],
)
def test_invalid_pipelines_are_refused(strategies: tuple[Any, ...], message: str) -> None:
    """An empty pipeline or a non-strategy is refused, naming its position."""
    with pytest.raises(ValueError, match=message):
        Pipeline(*strategies)


async def test_call_async_retries_a_plain_callable_that_returns_a_coroutine() -> None:
    """call_async(lambda: coro()) gets the async strategies: retried and counted."""
    breaker = CircuitBreaker("lambda", failure_threshold=10, registry=None)
    attempts = 0

    async def fetch() -> str:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    pipeline = Pipeline(retry(attempts=3, clock=ManualClock(autojump=True)), breaker)
    with pytest.raises(ConnectionError):
        await pipeline.call_async(lambda: fetch())  # noqa: PLW0108 - the point of the test
    assert 3 == attempts
    assert (3, 3) == (breaker.metrics().calls, breaker.metrics().failures)
