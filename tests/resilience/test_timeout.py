"""Timeout: async calls are cancelled, sync callers stop waiting."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from buttress import OperationTimeoutError, timeout
from buttress.clock import ManualClock
from buttress.resilience import Timeout
from buttress.testing import capture_events

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_async_call_within_the_limit_returns_its_value(clock: ManualClock) -> None:
    """A call that finishes in time returns normally."""

    @timeout(5, clock=clock)
    async def quick() -> str:
        return "done"

    assert "done" == await quick()


async def test_async_call_past_the_limit_is_cancelled(clock: ManualClock) -> None:
    """When the clock passes the limit the call is cancelled and OperationTimeoutError raised."""
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    limit = Timeout(2, clock=clock, name="slow-api", registry=None)
    task = asyncio.create_task(limit.call_async(hang))
    await clock.advance_async(1.9)
    assert not task.done()
    await clock.advance_async(0.1)
    with pytest.raises(OperationTimeoutError) as raised:
        await task
    assert cancelled.is_set()
    assert isinstance(raised.value, TimeoutError)
    assert 2.0 == raised.value.seconds
    assert "slow-api gave up after 2s" in str(raised.value)
    assert 1 == limit.metrics().timeouts


async def test_async_timeout_on_the_system_clock() -> None:
    """On the real clock it is asyncio.timeout underneath: a hung call is cut off."""
    limit = timeout(0.01)
    with pytest.raises(OperationTimeoutError):
        await limit.call_async(asyncio.Event().wait)


async def test_the_calls_own_timeout_error_passes_through(clock: ManualClock) -> None:
    """A TimeoutError raised by the function itself is not mistaken for ours."""

    async def own() -> None:
        raise TimeoutError("upstream said so")

    with pytest.raises(TimeoutError, match="upstream said so") as raised:
        await timeout(5, clock=clock).call_async(own)
    assert not isinstance(raised.value, OperationTimeoutError)


def test_sync_call_returns_its_value_and_exceptions() -> None:
    """A sync call runs in a worker thread; its value and its errors come back."""
    limit = timeout(5)
    assert threading.get_ident() != limit.call(threading.get_ident)
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        limit.call(empty.__getitem__, "missing")


def test_sync_caller_stops_waiting_at_the_deadline(clock: ManualClock) -> None:
    """The caller gets OperationTimeoutError when the clock passes the limit; the worker runs on."""
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(10)
        finished.set()

    outcome: list[BaseException] = []

    def caller() -> None:
        try:
            timeout(3, clock=clock).call(stuck)
        except OperationTimeoutError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(5)  # a call that never started would simply be cancelled
    clock.wait_for_sleepers(1)
    clock.advance(3)
    thread.join(5)
    assert 1 == len(outcome)
    assert not finished.is_set()  # Python cannot kill the thread: it is still running
    release.set()
    assert finished.wait(5)


def test_sync_worker_sees_the_callers_context() -> None:
    """Context variables (request ids, log context) cross into the worker thread."""
    token = request_id.set("req-42")
    try:
        assert "req-42" == timeout(5).call(request_id.get)
    finally:
        request_id.reset(token)


def test_a_given_executor_runs_the_calls() -> None:
    """executor= chooses the worker pool."""
    with ThreadPoolExecutor(1, thread_name_prefix="mine") as pool:
        name = timeout(5, executor=pool).call(lambda: threading.current_thread().name)
    assert name.startswith("mine")


async def test_timeouts_emit_events(clock: ManualClock) -> None:
    """Each timeout emits a 'timeout' event naming the limit."""
    limit = timeout(1, clock=clock, name="t")
    with capture_events(limit) as events:
        task = asyncio.create_task(limit.call_async(asyncio.Event().wait))
        await clock.advance_async(1)
        with pytest.raises(OperationTimeoutError):
            await task
    assert [("timeout", 1.0)] == [(e.kind, e.attributes["seconds"]) for e in events]


def test_executor_must_be_an_executor() -> None:
    """A wrong executor is refused when the timeout is made, not when it is used."""
    with pytest.raises(ValueError, match=r"executor must be a concurrent\.futures\.Executor"):
        timeout(1, executor=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), "5"])
def test_invalid_limits_are_refused(seconds: object) -> None:
    """A limit must be a positive number of seconds."""
    with pytest.raises(ValueError, match="seconds must be"):
        timeout(seconds)  # type: ignore[arg-type]


def test_a_call_that_never_started_is_cancelled(clock: ManualClock) -> None:
    """When the worker pool is busy past the limit, the queued call never runs."""
    release = threading.Event()
    ran: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        pool.submit(release.wait, 10)  # the only worker is busy
        limit = timeout(1, executor=pool, clock=clock)
        errors: list[BaseException] = []

        def caller() -> None:
            try:
                limit.call(ran.append, "ran")
            except OperationTimeoutError as exc:
                errors.append(exc)

        thread = threading.Thread(target=caller)
        thread.start()
        clock.wait_for_sleepers(1)
        clock.advance(1)
        thread.join(5)
        release.set()
    assert 1 == len(errors)
    assert [] == ran
