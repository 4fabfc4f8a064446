"""Retry: when it tries again, how long it waits, and what the caller sees at the end."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import httpx
import pytest

from buttress import CircuitBreaker, CircuitOpenError, RetryBudget, retry
from buttress.clock import ManualClock
from buttress.errors import RateLimitedError, ValidationError
from buttress.resilience import Retry, RetryAttempt, set_testing
from buttress.testing import capture_events, testing_mode


class Flaky:
    """Fails with the given exceptions in turn, then returns "ok"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def jump() -> ManualClock:
    return ManualClock(autojump=True)


def test_first_success_needs_no_retry() -> None:
    """A call that succeeds at once runs once and never waits."""
    clock = jump()
    flaky = Flaky()
    assert "ok" == retry(attempts=3, clock=clock)(flaky)()
    assert (1, 0.0) == (flaky.calls, clock.now())


def test_retries_transient_failures_until_success() -> None:
    """Connection errors are retried by default, and the success comes through."""
    flaky = Flaky(ConnectionError("reset"), TimeoutError("slow"))
    assert "ok" == retry(attempts=3, clock=jump())(flaky)()
    assert 3 == flaky.calls


def test_gives_up_with_the_callers_own_exception_and_its_story() -> None:
    """After the last attempt the original exception is raised, with notes on each attempt."""
    last = ConnectionError("third")
    flaky = Flaky(ConnectionError("first"), ConnectionError("second"), last)
    with pytest.raises(ConnectionError) as raised:
        retry(attempts=3, clock=jump(), name="fetch")(flaky)()
    assert raised.value is last
    notes = raised.value.__notes__
    assert 3 == len(notes)
    assert "attempt 1 of 3 raised ConnectionError('first'); retrying in" in notes[0]
    assert "attempt 3 of 3 raised ConnectionError('third'): no attempts left" in notes[2]
    assert notes[0].startswith("buttress.retry 'fetch':")


@pytest.mark.parametrize("error", [ValueError("bad"), ValidationError("bad email"), KeyError("k")])
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    """What classify() calls PERMANENT is raised at once."""
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        retry(attempts=5, clock=jump())(flaky)()
    assert 1 == flaky.calls


def test_on_types_choose_what_is_retried() -> None:
    """With on=(KeyError,), a KeyError is retried and a ConnectionError is not."""
    assert "ok" == retry(attempts=2, on=(KeyError,), clock=jump())(Flaky(KeyError("k")))()
    flaky = Flaky(ConnectionError("x"))
    with pytest.raises(ConnectionError):
        retry(attempts=2, on=KeyError, clock=jump())(flaky)()
    assert 1 == flaky.calls


def test_on_predicate_chooses_what_is_retried() -> None:
    """A predicate on the exception decides."""
    flaky = Flaky(OSError(11, "again"), OSError(2, "gone"))
    with pytest.raises(OSError, match="gone"):
        retry(attempts=5, on=lambda exc: getattr(exc, "errno", 0) == 11, clock=jump())(flaky)()
    assert 2 == flaky.calls


def test_result_predicate_retries_bad_results_and_returns_the_last() -> None:
    """on_result retries while the result is bad; when attempts run out the last result stands."""
    answers = iter([None, None, 7])
    assert (
        7 == retry(attempts=3, on_result=lambda r: r is None, clock=jump())(lambda: next(answers))()
    )
    nones = iter([None, None, None, 1])
    assert (
        retry(attempts=3, on_result=lambda r: r is None, clock=jump())(lambda: next(nones))()
        is None
    )


def delays_of(**options: Any) -> list[float]:
    """The waits a retry plans over five failing attempts."""
    seen: list[float] = []
    options.setdefault("wait_jitter", "none")
    flaky = Flaky(*[ConnectionError(str(i)) for i in range(6)])
    policy = retry(attempts=6, clock=jump(), before_sleep=lambda a: seen.append(a.delay), **options)
    with pytest.raises(ConnectionError):
        policy(flaky)()
    return seen


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    """Exponential waits grow by wait_exp_base and stop at wait_max."""
    assert [0.1, 0.2, 0.4, 0.8, 1.0] == pytest.approx(
        delays_of(wait_initial=0.1, wait_max=1.0, backoff="exponential")
    )


def test_linear_and_constant_backoff() -> None:
    """Linear waits grow by wait_initial each time; constant waits never change."""
    assert [0.5, 1.0, 1.5, 2.0, 2.5] == pytest.approx(delays_of(wait_initial=0.5, backoff="linear"))
    assert [0.3] * 5 == pytest.approx(delays_of(wait_initial=0.3, backoff="constant"))


@pytest.mark.parametrize(
    ("jitter", "low", "high"),
    [("full", 0.0, 1.0), ("equal", 0.5, 1.0)],
)
def test_jitter_stays_within_its_range(jitter: str, low: float, high: float) -> None:
    """Full jitter spreads a wait over [0, d], equal jitter over [d/2, d]."""
    waits = delays_of(
        wait_initial=1, wait_max=1, backoff="constant", wait_jitter=jitter, rng=random.Random(7)
    )
    assert all(low <= w <= high for w in waits)
    assert len(set(waits)) == len(waits)  # actually spread


def test_decorrelated_jitter_grows_from_the_last_wait_and_respects_the_cap() -> None:
    """Decorrelated waits lie between wait_initial and three times the last wait, capped."""
    waits = delays_of(
        wait_initial=0.1, wait_max=2.0, wait_jitter="decorrelated", rng=random.Random(3)
    )
    previous = 0.0
    for wait in waits:
        assert 0.1 <= wait <= min(2.0, max(0.1, previous * 3))
        previous = wait


def test_the_clock_moves_by_the_planned_waits() -> None:
    """The retry really sleeps on its clock, for exactly the planned time."""
    clock = jump()
    flaky = Flaky(ConnectionError("1"), ConnectionError("2"))
    retry(attempts=3, wait_initial=1, wait_jitter="none", clock=clock)(flaky)()
    assert 3.0 == clock.now()  # 1 s then 2 s


def test_retry_after_hint_is_a_floor_on_the_wait() -> None:
    """An exception's retry_after (a 429's) stretches the wait to at least that long."""
    clock = jump()
    flaky = Flaky(RateLimitedError("slow down", retry_after=7.5))
    assert "ok" == retry(attempts=2, wait_initial=0.1, wait_jitter="none", clock=clock)(flaky)()
    assert 7.5 == clock.now()


def test_deadline_stops_before_a_wait_that_would_pass_it() -> None:
    """No attempt starts whose wait would end after the deadline."""
    clock = jump()
    flaky = Flaky(*[ConnectionError(str(i)) for i in range(10)])
    with pytest.raises(ConnectionError) as raised:
        retry(attempts=10, wait_initial=1, wait_jitter="none", deadline=5, clock=clock)(flaky)()
    assert 3 == flaky.calls  # waits of 1 + 2 fit; the next 4 would end at 7
    assert 3.0 == clock.now()
    assert "would pass the 5s deadline" in raised.value.__notes__[-1]


def test_budget_caps_retries_across_calls() -> None:
    """A spent budget stops retries, and the calls that follow refill it."""
    clock = jump()
    budget = RetryBudget(ratio=0.5, min_per_second=0, max_tokens=2, clock=clock)
    policy = retry(attempts=10, wait_initial=0, wait_max=0, budget=budget, clock=clock)
    flaky = Flaky(*[ConnectionError(str(i)) for i in range(10)])
    with pytest.raises(ConnectionError) as raised:
        policy(flaky)()
    assert 3 == flaky.calls  # the first attempt, then two tokens' worth
    assert "retry budget spent" in raised.value.__notes__[-1]
    for _ in range(2):
        policy(Flaky())()  # two calls deposit one token
    flaky = Flaky(ConnectionError("a"), ConnectionError("b"))
    with pytest.raises(ConnectionError):
        policy(flaky)()
    assert 2 == flaky.calls
    assert 0 == policy.metrics().recovered
    assert 2 == policy.metrics().budget_denied


def test_budget_refills_with_time() -> None:
    """min_per_second tokens accrue with time, so rare callers can still retry."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.1, min_per_second=2, max_tokens=5, clock=clock)
    for _ in range(5):
        assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(1)
    assert 2.0 == pytest.approx(budget.tokens)


def test_testing_mode_removes_waits_and_sets_attempts() -> None:
    """set_testing(True, attempts=2) makes every retry try twice and never wait."""
    clock = ManualClock()  # not autojump: a real wait would hang this test
    set_testing(True, attempts=2)
    flaky = Flaky(ConnectionError("1"), ConnectionError("2"))
    with pytest.raises(ConnectionError):
        retry(attempts=5, wait_initial=10, clock=clock)(flaky)()
    assert (2, 0.0) == (flaky.calls, clock.now())


def test_testing_mode_can_cap_instead_of_replacing() -> None:
    """With cap=True, attempts only lowers a retry's own count."""
    with testing_mode(attempts=4, cap=True):
        flaky = Flaky(*[ConnectionError(str(i)) for i in range(5)])
        with pytest.raises(ConnectionError):
            retry(attempts=2, clock=ManualClock())(flaky)()
        assert 2 == flaky.calls
    with testing_mode():
        flaky = Flaky(ConnectionError("1"))
        assert "ok" == retry(attempts=2, wait_initial=10, clock=ManualClock())(flaky)()


def test_before_sleep_hook_sees_each_retry() -> None:
    """The hook learns the attempt number, the wait and the exception."""
    seen: list[RetryAttempt] = []
    error = ConnectionError("x")
    retry(
        attempts=2,
        wait_initial=0.5,
        wait_jitter="none",
        clock=jump(),
        before_sleep=seen.append,
        name="r",
    )(Flaky(error))()
    assert [("r", 1, 0.5, error)] == [(a.name, a.attempt, a.delay, a.exception) for a in seen]


def test_events_and_metrics() -> None:
    """Each retry emits an event; metrics count retries, recoveries and exhaustion."""
    policy = retry(attempts=2, clock=jump(), name="m")
    with capture_events(policy) as events:
        policy(Flaky(ConnectionError("1")))()
        with pytest.raises(ConnectionError):
            policy(Flaky(ConnectionError("1"), ConnectionError("2")))()
    assert ["retry", "retry", "exhausted"] == [e.kind for e in events]
    metrics = policy.metrics()
    assert (2, 1, 1) == (metrics.retries, metrics.recovered, metrics.exhausted)


async def test_async_retry_sleeps_on_the_clock() -> None:
    """An async retry waits with the clock's async sleep, so time decides when it retries."""
    clock = ManualClock()
    calls = 0

    @retry(attempts=3, wait_initial=2, wait_jitter="none", clock=clock)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("reset")
        return "ok"

    task = asyncio.create_task(fetch())
    await clock.advance_async(1.9)
    assert 1 == calls
    await clock.advance_async(0.1)
    assert 2 == calls
    await clock.advance_async(4)
    assert "ok" == await task
    assert asyncio.iscoroutinefunction(fetch)


def test_sync_retry_blocks_on_the_clock_in_a_thread() -> None:
    """A sync retry sleeps on its clock: the next attempt starts only when time moves."""
    clock = ManualClock()
    flaky = Flaky(ConnectionError("1"))
    result: list[str] = []
    policy = retry(attempts=2, wait_initial=5, wait_jitter="none", clock=clock)
    thread = threading.Thread(target=lambda: result.append(policy.call(flaky)))
    thread.start()
    clock.wait_for_sleepers(1)
    assert 1 == flaky.calls
    clock.advance(5)
    thread.join(5)
    assert ["ok"] == result


def test_retry_outside_a_breaker_counts_each_attempt_once() -> None:
    """Each attempt is one call to the breaker, counted once."""
    breaker = CircuitBreaker("inner", failure_threshold=10, registry=None)
    flaky = Flaky(ConnectionError("1"), ConnectionError("2"))
    assert "ok" == retry(attempts=3, clock=jump())(breaker(flaky))()
    metrics = breaker.metrics()
    assert (3, 2, 1) == (metrics.calls, metrics.failures, metrics.successes)


def test_metrics_tell_not_retryable_from_exhausted() -> None:
    """A failure raised at once is counted apart from one that ran out of attempts."""
    policy = retry(attempts=2, clock=jump())
    error = ValueError("caller bug")
    with pytest.raises(ValueError, match="caller bug") as raised:
        policy(Flaky(error))()
    assert not hasattr(raised.value, "__notes__")  # never retried: no story to tell
    with pytest.raises(ConnectionError):
        policy(Flaky(ConnectionError("1"), ConnectionError("2")))()
    metrics = policy.metrics()
    assert (1, 1, 1) == (metrics.retries, metrics.exhausted, metrics.not_retryable)


def test_cancellation_is_never_retried() -> None:
    """KeyboardInterrupt and friends pass straight through the default filter."""
    flaky = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry(attempts=3, clock=jump())(flaky)()
    assert 1 == flaky.calls


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "attempts must be >= 1, got 0"),
        ({"attempts": 1.5}, "attempts must be an integer"),
        ({"deadline": -1}, "deadline must be >= 0 seconds"),
        ({"backoff": "fibonacci"}, "backoff must be one of"),
        ({"wait_jitter": "random"}, "wait_jitter must be one of"),
        ({"wait_initial": -0.1}, "wait_initial must be >= 0"),
        ({"wait_initial": 5, "wait_max": 1}, r"wait_max \(1.0\) must be >= wait_initial \(5.0\)"),
        ({"wait_exp_base": 0.5}, "wait_exp_base must be a finite number >= 1"),
        ({"wait_exp_base": float("nan")}, "wait_exp_base must be a finite number >= 1"),
        ({"on_result": 500}, "on_result must be callable"),
        ({"before_sleep": "log"}, "before_sleep must be callable"),
        ({"budget": "x"}, "budget must be a RetryBudget"),
        ({"clock": "x"}, "clock must be a Clock"),
        ({"name": ""}, "name must be a non-empty string or None"),
    ],
)
def test_invalid_configuration_names_the_parameter(options: dict[str, Any], message: str) -> None:
    """Bad options raise ValueError naming the option and the allowed range."""
    with pytest.raises(ValueError, match=message):
        Retry(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 0}, "ratio must be a fraction"),
        ({"max_tokens": 0.5}, "max_tokens must be a finite number >= 1"),
        ({"min_per_second": -1}, "min_per_second must be a finite number >= 0"),
    ],
)
def test_invalid_budget_names_the_parameter(options: dict[str, Any], message: str) -> None:
    """A budget with an impossible setting is refused."""
    with pytest.raises(ValueError, match=message):
        RetryBudget(**options)


async def test_a_predicate_never_sees_cancellation() -> None:
    """on=<predicate> cannot retry a cancelled task by accident."""
    started = asyncio.Event()
    calls = 0

    @retry(attempts=5, on=lambda exc: not isinstance(exc, ValueError), clock=ManualClock())
    async def waits() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 1 == calls


async def test_async_calls_fill_the_budget_too() -> None:
    """Async calls deposit into a shared budget just as sync calls do."""
    clock = ManualClock(autojump=True)
    budget = RetryBudget(ratio=0.5, min_per_second=0, max_tokens=1, clock=clock)
    assert budget.try_withdraw()  # spent

    @retry(attempts=2, wait_initial=0, wait_max=0, budget=budget, clock=clock)
    async def works() -> str:
        return "ok"

    await works()
    await works()
    assert 1.0 == pytest.approx(budget.tokens)


def test_an_http_retry_after_header_is_honoured() -> None:
    """An httpx 429 with Retry-After: 3 waits at least 3 s before the next attempt."""
    clock = jump()
    request = httpx.Request("GET", "https://api.example.com/")
    response = httpx.Response(429, headers={"Retry-After": "3"}, request=request)
    error = httpx.HTTPStatusError("slow down", request=request, response=response)
    assert (
        "ok" == retry(attempts=2, wait_initial=0.1, wait_jitter="none", clock=clock)(Flaky(error))()
    )
    assert 3.0 == clock.now()


def test_a_hint_to_wait_forever_ends_the_retry() -> None:
    """A forced-open breaker says retry_after=inf: the retry gives up instead of sleeping."""
    breaker = CircuitBreaker("forever", registry=None)
    breaker.force_open()
    clock = jump()
    policy = retry(attempts=3, on=CircuitOpenError, deadline=None, clock=clock)
    with pytest.raises(CircuitOpenError) as raised:
        policy(breaker(lambda: "x"))()
    assert 0.0 == clock.now()
    assert "asks never to be retried" in raised.value.__notes__[-1]
