"""CircuitBreaker: when it opens, how it recovers, what it counts and reports."""

# These tests read breaker.state before and after acting on the breaker; mypy
# would narrow the property at the first assert and flag the second.
# mypy: disable-error-code="comparison-overlap, unreachable"

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from typing import Any

import pytest

from buttress import CircuitBreaker, CircuitOpenError, CircuitState
from buttress.clock import ManualClock
from buttress.errors import ValidationError
from buttress.resilience import ResilienceEvent
from buttress.testing import capture_events


def make(clock: ManualClock, **options: Any) -> CircuitBreaker:
    options.setdefault("registry", None)
    return CircuitBreaker("payments", clock=clock, **options)


def fail(exc: BaseException | None = None) -> None:
    raise exc or ConnectionError("refused")


def ok() -> str:
    return "ok"


def trip(breaker: CircuitBreaker, times: int, exc: BaseException | None = None) -> None:
    for _ in range(times):
        with pytest.raises(type(exc) if exc else ConnectionError):
            breaker.call(fail, exc)


def test_opens_after_consecutive_failures(clock: ManualClock) -> None:
    """failure_threshold consecutive failures open the breaker, one fewer does not."""
    breaker = make(clock, failure_threshold=3)
    trip(breaker, 2)
    assert CircuitState.CLOSED == breaker.state
    trip(breaker, 1)
    assert CircuitState.OPEN == breaker.state


def test_a_success_breaks_the_run_of_failures(clock: ManualClock) -> None:
    """Failures only count while consecutive: a success in between starts over."""
    breaker = make(clock, failure_threshold=3)
    trip(breaker, 2)
    assert "ok" == breaker.call(ok)
    trip(breaker, 2)
    assert CircuitState.CLOSED == breaker.state
    assert 2 == breaker.metrics().consecutive_failures


def test_open_breaker_rejects_without_calling(clock: ManualClock) -> None:
    """An open breaker raises CircuitOpenError naming it and when it will probe."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=30)
    trip(breaker, 1)
    clock.advance(12)
    called = []
    with pytest.raises(CircuitOpenError) as raised:
        breaker.call(lambda: called.append(1))
    assert [] == called
    assert "payments" == raised.value.name
    assert 18.0 == raised.value.retry_after
    assert 1 == breaker.metrics().rejections


def test_permanent_errors_do_not_count(clock: ManualClock) -> None:
    """A caller's validation error says nothing about the dependency: it is ignored."""
    breaker = make(clock, failure_threshold=2)
    trip(breaker, 5, ValidationError("bad email"))
    trip(breaker, 5, ValueError("bad"))
    assert CircuitState.CLOSED == breaker.state
    metrics = breaker.metrics()
    assert (10, 0, 10) == (metrics.calls, metrics.failures, metrics.ignored)


def test_custom_exception_types_decide_what_counts(clock: ManualClock) -> None:
    """With on=(TimeoutError,), only timeouts count as failures."""
    breaker = make(clock, failure_threshold=1, on=(TimeoutError,))
    trip(breaker, 3, ConnectionError("x"))
    assert CircuitState.CLOSED == breaker.state
    trip(breaker, 1, TimeoutError("slow"))
    assert CircuitState.OPEN == breaker.state


def test_result_predicate_counts_bad_results_as_failures(clock: ManualClock) -> None:
    """on_result marks a returned value as a failure, and the value is still returned."""
    breaker = make(clock, failure_threshold=2, on_result=lambda status: status >= 500)
    assert 503 == breaker.call(lambda: 503)
    assert 200 == breaker.call(lambda: 200)
    assert 503 == breaker.call(lambda: 503)
    assert CircuitState.CLOSED == breaker.state
    assert 503 == breaker.call(lambda: 503)
    assert CircuitState.OPEN == breaker.state


def test_failure_rate_opens_only_after_minimum_calls(clock: ManualClock) -> None:
    """The rate rule waits for minimum_calls, then opens at rate >= threshold."""
    breaker = make(
        clock, failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=6, window=10
    )
    for _ in range(2):
        breaker.call(ok)
        trip(breaker, 1)
    assert CircuitState.CLOSED == breaker.state  # 2/4 failed, below minimum_calls
    breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state  # 2/5
    trip(breaker, 1)  # 3/6 = 50 %
    assert CircuitState.OPEN == breaker.state


def test_count_window_forgets_calls_that_slid_out(clock: ManualClock) -> None:
    """Only the last `window` calls count toward the failure rate."""
    breaker = make(
        clock, failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=4, window=4
    )
    trip(breaker, 1)
    for _ in range(4):
        breaker.call(ok)
    assert 0.0 == breaker.metrics().failure_rate  # the failure slid out
    trip(breaker, 1)
    assert 0.25 == breaker.metrics().failure_rate
    assert CircuitState.CLOSED == breaker.state


def test_time_window_forgets_old_failures(clock: ManualClock) -> None:
    """With a 10 s time window, failures older than 10 s no longer count."""
    breaker = make(
        clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        minimum_calls=3,
        window=10,
        window_type="time",
    )
    trip(breaker, 2)
    clock.advance(11)
    breaker.call(ok)
    breaker.call(ok)
    trip(breaker, 1)  # 1 of 3 in the window
    assert CircuitState.CLOSED == breaker.state
    assert pytest.approx(1 / 3) == breaker.metrics().failure_rate
    trip(breaker, 1)  # 2 of 4
    assert CircuitState.OPEN == breaker.state


def test_consecutive_rule_works_with_a_time_window(clock: ManualClock) -> None:
    """Both rules apply with either window type."""
    breaker = make(clock, failure_threshold=2, window=60, window_type="time")
    trip(breaker, 2)
    assert CircuitState.OPEN == breaker.state


def test_slow_calls_open_the_breaker(clock: ManualClock) -> None:
    """Calls slower than slow_call_duration count toward the slow-call rate."""
    breaker = make(
        clock,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        minimum_calls=4,
        failure_threshold=None,
        failure_rate_threshold=1.0,
    )

    def slow() -> str:
        clock.advance(2)
        return "late"

    breaker.call(ok)
    breaker.call(ok)
    breaker.call(slow)
    assert CircuitState.CLOSED == breaker.state
    assert "late" == breaker.call(slow)
    assert CircuitState.OPEN == breaker.state
    assert 2 == breaker.metrics().slow_calls


def test_recovery_timeout_leads_to_half_open(clock: ManualClock) -> None:
    """After recovery_timeout an open breaker reads HALF_OPEN and lets a probe through."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=30)
    trip(breaker, 1)
    clock.advance(29.9)
    assert CircuitState.OPEN == breaker.state
    clock.advance(0.1)
    assert CircuitState.HALF_OPEN == breaker.state
    assert "ok" == breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state


def test_success_threshold_probes_close_it(clock: ManualClock) -> None:
    """HALF_OPEN needs success_threshold successes before closing."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5, success_threshold=3)
    trip(breaker, 1)
    clock.advance(5)
    breaker.call(ok)
    breaker.call(ok)
    assert CircuitState.HALF_OPEN == breaker.state
    breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state


def test_a_failed_probe_opens_it_again(clock: ManualClock) -> None:
    """One failure in HALF_OPEN reopens it for another full recovery_timeout."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5, success_threshold=2)
    trip(breaker, 1)
    clock.advance(5)
    breaker.call(ok)
    trip(breaker, 1)
    assert CircuitState.OPEN == breaker.state
    assert 5.0 == breaker.metrics().retry_after


async def test_half_open_admits_only_its_permits(clock: ManualClock) -> None:
    """While a probe is in flight, further calls are rejected."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5, half_open_max_calls=1)
    trip(breaker, 1)
    clock.advance(5)
    release = asyncio.Event()

    async def probe() -> str:
        await release.wait()
        return "ok"

    first = asyncio.create_task(breaker.call_async(probe))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError) as raised:
        await breaker.call_async(probe)
    assert 5.0 == raised.value.retry_after  # about a recovery period, not "now"
    release.set()
    assert "ok" == await first
    assert CircuitState.CLOSED == breaker.state


async def test_leaked_permit_is_reclaimed_after_its_time_limit(clock: ManualClock) -> None:
    """A probe that never returns cannot wedge the breaker past half_open_permit_timeout."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5, half_open_permit_timeout=60)
    trip(breaker, 1)
    clock.advance(5)
    hung = asyncio.Event()
    stuck = asyncio.create_task(breaker.call_async(hung.wait))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(60)
    assert "ok" == breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state
    hung.set()
    await stuck
    assert CircuitState.CLOSED == breaker.state  # the late outcome decided nothing


def test_ignored_exception_returns_the_probe_permit(clock: ManualClock) -> None:
    """A probe that fails with an ignored error frees its permit without deciding."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5)
    trip(breaker, 1)
    clock.advance(5)
    trip(breaker, 1, ValueError("caller bug"))
    assert CircuitState.HALF_OPEN == breaker.state
    assert "ok" == breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state


def test_reset_closes_and_clears(clock: ManualClock) -> None:
    """reset() closes the breaker and zeroes its counters."""
    breaker = make(clock, failure_threshold=1)
    trip(breaker, 1)
    breaker.reset()
    metrics = breaker.metrics()
    assert CircuitState.CLOSED == metrics.state
    assert (0, 0, 0) == (metrics.calls, metrics.failures, metrics.rejections)


def test_force_open_holds_until_reset(clock: ManualClock) -> None:
    """force_open() rejects calls and never probes, whatever the time."""
    breaker = make(clock, recovery_timeout=1)
    breaker.force_open()
    clock.advance(3600)
    assert CircuitState.OPEN == breaker.state
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    assert breaker.metrics().forced_open
    breaker.reset()
    assert "ok" == breaker.call(ok)


def test_disable_lets_everything_through(clock: ManualClock) -> None:
    """A disabled breaker never opens but still counts outcomes."""
    breaker = make(clock, failure_threshold=1)
    breaker.disable()
    trip(breaker, 5)
    assert CircuitState.CLOSED == breaker.state
    metrics = breaker.metrics()
    assert metrics.disabled
    assert 5 == metrics.failures


def test_listeners_see_transitions_outside_the_lock(clock: ManualClock) -> None:
    """A listener sees each state change and may call back into the breaker."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5)
    seen: list[tuple[CircuitState, CircuitState, CircuitState]] = []

    def listener(event: ResilienceEvent) -> None:
        if event.kind == "state_change":
            # metrics() takes the lock: this would deadlock if run under it.
            seen.append(
                (event.attributes["previous"], event.attributes["state"], breaker.metrics().state)
            )

    breaker.add_listener(listener)
    trip(breaker, 1)
    clock.advance(5)
    breaker.call(ok)
    assert [
        (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED, CircuitState.CLOSED),
    ] == seen


def test_call_events_carry_the_outcome(clock: ManualClock) -> None:
    """success, failure, ignored and rejected events name what happened."""
    breaker = make(clock, failure_threshold=1)
    with capture_events(breaker) as events:
        breaker.call(ok)
        trip(breaker, 1, ValueError("mine"))
        trip(breaker, 1)
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
    kinds = [e.kind for e in events]
    assert ["success", "ignored", "failure", "state_change", "rejected"] == kinds
    assert all(e.source == "payments" for e in events)


def test_events_are_not_built_without_listeners(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nobody listening, no event object is ever made."""
    from buttress.resilience import _common

    built: list[object] = []
    monkeypatch.setattr(_common, "ResilienceEvent", lambda *a: built.append(a))
    breaker = make(clock, failure_threshold=1)
    breaker.call(ok)
    trip(breaker, 1)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    assert [] == built


def test_listeners_can_choose_event_kinds(clock: ManualClock) -> None:
    """A listener for state changes only gets those, and successes stay on the fast path."""
    breaker = make(clock, failure_threshold=1)
    changes: list[ResilienceEvent] = []
    breaker.add_listener(changes.append, kinds={"state_change"})
    breaker.call(ok)
    assert breaker._fast  # nobody wants success events
    trip(breaker, 1)
    assert ["state_change"] == [e.kind for e in changes]
    breaker.remove_listener(changes.append)
    with pytest.raises(ValueError, match="is not a listener here"):
        breaker.remove_listener(changes.append)


def test_failure_rate_that_opened_it_stays_visible(clock: ManualClock) -> None:
    """While open, metrics still show the window that tripped it; closing clears it."""
    breaker = make(clock, failure_threshold=2, recovery_timeout=1)
    breaker.call(ok)
    breaker.call(ok)
    trip(breaker, 2)
    assert 0.5 == breaker.metrics().failure_rate
    clock.advance(1)
    breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state
    assert 0.0 == breaker.metrics().failure_rate


def test_a_failing_listener_does_not_break_the_call(clock: ManualClock) -> None:
    """A listener that raises is logged and the call goes on."""
    breaker = make(clock)

    def broken(event: ResilienceEvent) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    assert "ok" == breaker.call(ok)
    breaker.remove_listener(broken)


def test_metrics_report_counts_and_rates(clock: ManualClock) -> None:
    """metrics() reports calls, successes, failures and the window's failure rate."""
    breaker = make(clock, failure_threshold=10)
    for _ in range(3):
        breaker.call(ok)
    trip(breaker, 1)
    metrics = breaker.metrics()
    assert (4, 3, 1) == (metrics.calls, metrics.successes, metrics.failures)
    assert 0.25 == metrics.failure_rate
    assert metrics.last_transition_at is None
    assert "payments" == metrics.name


def test_decorates_sync_and_async_functions(clock: ManualClock) -> None:
    """@breaker keeps the function's name and works on def and async def."""
    breaker = make(clock, failure_threshold=1)

    @breaker
    def charge(cents: int) -> int:
        return cents

    @breaker
    async def charge_async(cents: int) -> int:
        return cents * 2

    assert 100 == charge(100)
    assert 200 == asyncio.run(charge_async(100))
    assert "charge_async" == charge_async.__name__
    assert asyncio.iscoroutinefunction(charge_async)
    assert 2 == breaker.metrics().successes


async def test_async_failures_open_it(clock: ManualClock) -> None:
    """call_async counts failures and rejects once open."""
    breaker = make(clock, failure_threshold=2)

    async def down() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call_async(down)
    with pytest.raises(CircuitOpenError):
        await breaker.call_async(down)


async def test_cancellation_is_not_a_failure(clock: ManualClock) -> None:
    """A cancelled call does not count against the dependency."""
    breaker = make(clock, failure_threshold=1)
    task = asyncio.create_task(breaker.call_async(asyncio.Event().wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert CircuitState.CLOSED == breaker.state
    assert 1 == breaker.metrics().ignored


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be >= 1, got 0"),
        ({"failure_threshold": -3}, "failure_threshold must be >= 1"),
        ({"failure_rate_threshold": 1.5}, r"failure_rate_threshold must be a fraction in \(0, 1\]"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"recovery_timeout": -1}, "recovery_timeout must be >= 0 seconds"),
        ({"success_threshold": 0}, "success_threshold"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": 0}, "window"),
        ({"window_type": "sliding"}, "window_type must be 'count' or 'time'"),
        ({"slow_call_duration": 0}, "slow_call_duration must be > 0"),
        ({"slow_call_rate_threshold": 2}, "slow_call_rate_threshold"),
        ({"failure_threshold": None}, "could never open"),
        (
            {"failure_threshold": None, "failure_rate_threshold": 0.5, "window": 5},
            r"minimum_calls \(10\) must be <= window \(5\)",
        ),
        ({"slow_call_rate_threshold": 0.5}, "slow_call_rate_threshold needs slow_call_duration"),
        ({"on_result": 500}, "on_result must be callable"),
        ({"clock": object()}, "clock must be a Clock"),
        ({"on": "ConnectionError"}, "on must be exception types or a predicate"),
        ({"on": (ConnectionError, int)}, "on must name exception classes"),
    ],
)
def test_invalid_configuration_names_the_parameter(options: dict[str, Any], message: str) -> None:
    """Each bad option raises ValueError naming the breaker, the option and the range."""
    with pytest.raises(ValueError, match=message) as raised:
        CircuitBreaker("payments", registry=None, **options)
    assert "'payments'" in str(raised.value) or "on must" in str(raised.value)


def test_name_is_required() -> None:
    """An empty name is refused: the registry and metrics need one."""
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        CircuitBreaker("", registry=None)


def test_threads_share_one_breaker_with_exact_counts() -> None:
    """8 threads x 10,000 calls through one breaker give exact counters."""
    breaker = CircuitBreaker("shared", failure_threshold=10**9, registry=None)
    per_thread = 10_000

    def worker(index: int) -> None:
        for call in range(per_thread):
            if (call + index) % 10 == 0:
                with contextlib.suppress(ConnectionError):
                    breaker.call(fail)
            else:
                breaker.call(ok)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics = breaker.metrics()
    assert 80_000 == metrics.calls
    assert 8_000 == metrics.failures
    assert 72_000 == metrics.successes


def test_half_open_never_admits_more_than_its_permits_across_threads(clock: ManualClock) -> None:
    """Many threads racing a half-open breaker get at most half_open_max_calls in."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=1, half_open_max_calls=3)
    trip(breaker, 1)
    clock.advance(1)
    inside = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()
    admitted = threading.Barrier(4, timeout=10)  # 3 permitted + the test

    def probe() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        admitted.wait()
        release.wait(10)
        with lock:
            inside -= 1

    rejected = 0

    def worker() -> None:
        nonlocal rejected
        try:
            breaker.call(probe)
        except CircuitOpenError:
            with lock:
                rejected += 1

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    admitted.wait()
    # the 3 admitted probes are parked: wait until everyone else was turned away
    # (a guard, not a timing: it returns as soon as they were)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if rejected == 13:
                break
    release.set()
    for thread in threads:
        thread.join()
    assert 3 == peak
    assert 13 == rejected
    assert CircuitState.CLOSED == breaker.state


def test_a_predicate_never_counts_an_interrupt(clock: ManualClock) -> None:
    """on=<predicate> does not turn Ctrl-C into a dependency failure."""
    breaker = make(clock, failure_threshold=1, on=lambda exc: True)
    trip(breaker, 1, KeyboardInterrupt())
    assert CircuitState.CLOSED == breaker.state
    trip(breaker, 1, ValueError("counted: the predicate says so"))
    assert CircuitState.OPEN == breaker.state


async def test_a_late_failure_from_before_recovery_decides_nothing(clock: ManualClock) -> None:
    """A call admitted in an earlier epoch that fails after the breaker closed again
    neither opens it nor starts a run of failures."""
    breaker = make(clock, failure_threshold=1, recovery_timeout=5, half_open_permit_timeout=10)
    trip(breaker, 1)
    clock.advance(5)
    stuck = asyncio.Event()

    async def late() -> None:
        await stuck.wait()
        raise ConnectionError("too late")

    probe = asyncio.create_task(breaker.call_async(late))
    await asyncio.sleep(0)
    clock.advance(10)  # the hung probe's permit is reclaimed
    assert "ok" == breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state
    stuck.set()
    with pytest.raises(ConnectionError):
        await probe
    assert CircuitState.CLOSED == breaker.state
    assert 0 == breaker.metrics().consecutive_failures


async def test_a_reclaimed_permits_late_success_does_not_count(clock: ManualClock) -> None:
    """After a permit is reclaimed, the old probe's success is not one of the successes
    that close the breaker."""
    breaker = make(
        clock,
        failure_threshold=1,
        recovery_timeout=5,
        success_threshold=2,
        half_open_permit_timeout=10,
    )
    trip(breaker, 1)
    clock.advance(5)
    stuck = asyncio.Event()

    async def slow_ok() -> str:
        await stuck.wait()
        return "late"

    old = asyncio.create_task(breaker.call_async(slow_ok))
    await asyncio.sleep(0)
    clock.advance(10)
    release = asyncio.Event()

    async def fresh_ok() -> str:
        await release.wait()
        return "fresh"

    new = asyncio.create_task(breaker.call_async(fresh_ok))  # takes the reclaimed permit
    await asyncio.sleep(0)
    stuck.set()
    assert "late" == await old
    release.set()
    assert "fresh" == await new
    assert CircuitState.HALF_OPEN == breaker.state  # one success of two, not two
    assert "ok" == breaker.call(ok)
    assert CircuitState.CLOSED == breaker.state


def test_a_slow_probe_opens_it_again(clock: ManualClock) -> None:
    """With a slow-call rule, a half-open probe that succeeds slowly reopens the breaker."""
    breaker = make(
        clock,
        failure_threshold=1,
        recovery_timeout=5,
        slow_call_duration=1,
        slow_call_rate_threshold=1.0,
        minimum_calls=1,
        window=1,
    )
    trip(breaker, 1)
    clock.advance(5)

    def slow() -> str:
        clock.advance(2)
        return "slow"

    assert "slow" == breaker.call(slow)
    assert CircuitState.OPEN == breaker.state


def test_threads_through_every_state_keep_exact_counts(clock: ManualClock) -> None:
    """8 threads x 10,000 calls while the breaker opens, probes and closes again:
    every call is counted exactly once, as a success, a failure or a rejection."""
    breaker = make(clock, failure_threshold=3, recovery_timeout=0, half_open_max_calls=2)
    per_thread = 10_000
    seen = [[0, 0, 0] for _ in range(8)]  # successes, failures, rejections per thread

    def worker(index: int) -> None:
        mine = seen[index]
        for call in range(per_thread):
            try:
                if (call // 4 + index) % 2 == 0:  # runs of 4 failures, then 4 successes
                    breaker.call(fail)
                else:
                    breaker.call(ok)
                mine[0] += 1
            except ConnectionError:
                mine[1] += 1
            except CircuitOpenError:
                mine[2] += 1

    changes: list[ResilienceEvent] = []
    breaker.add_listener(changes.append, kinds={"state_change"})  # keeps the fast path
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    successes, failures, rejections = (sum(column) for column in zip(*seen, strict=True))
    metrics = breaker.metrics()
    assert 80_000 == successes + failures + rejections
    assert (successes, failures, rejections) == (
        metrics.successes,
        metrics.failures,
        metrics.rejections,
    )
    assert metrics.calls == successes + failures
    assert len(changes) > 10  # it really moved through its states, many times


def test_forced_open_says_it_will_not_retry_by_itself(clock: ManualClock) -> None:
    """A forced-open breaker's rejection has no finite retry_after and says why."""
    breaker = make(clock)
    breaker.force_open()
    with pytest.raises(CircuitOpenError, match="forced open and stays open until reset") as raised:
        breaker.call(ok)
    assert math.inf == raised.value.retry_after
