"""The circuit breaker: stop calling what is failing, probe it, and close again.

The state machine lives in :class:`CircuitBreaker`'s private methods, driven by a
clock and the outcomes it is told about; ``call`` and ``call_async`` only run the
protected function between them, so sync and async share every decision.
"""

from __future__ import annotations

import enum
import itertools
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from buttress.clock import Clock
from buttress.errors import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitExceeded,
    Severity,
    classify,
)
from buttress.resilience._common import (
    Duration,
    ExceptionFilter,
    Observable,
    Strategy,
    check_callable,
    check_fraction,
    check_int,
    check_seconds,
    exception_filter,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry
from buttress.resilience._window import CountWindow, TimeWindow

__all__ = ["CircuitBreaker", "CircuitMetrics", "CircuitState"]

P = ParamSpec("P")
T = TypeVar("T")


class CircuitState(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    """Calls flow; outcomes are counted."""
    OPEN = "open"
    """Calls are rejected at once with :class:`CircuitOpenError`."""
    HALF_OPEN = "half_open"
    """A few probe calls test whether the dependency recovered."""


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN


@dataclass(frozen=True, slots=True)
class CircuitMetrics:
    """A snapshot of one breaker. Counters run from creation or the last ``reset()``."""

    name: str
    state: CircuitState
    calls: int
    successes: int
    failures: int
    ignored: int
    """Calls that raised an exception the breaker does not count (a validation error)."""
    rejections: int
    slow_calls: int
    failure_rate: float
    """Failed share of the calls in the sliding window, 0.0 to 1.0."""
    slow_call_rate: float
    consecutive_failures: int
    last_transition_at: float | None
    """Clock time of the last state change; ``None`` if it never changed."""
    retry_after: float
    """Seconds until an open breaker lets a probe through (inf when forced open);
    0.0 unless open."""
    forced_open: bool
    disabled: bool


def _issued(tickets: itertools.count[int]) -> int:
    """How many tickets were taken, read without taking one.

    ``repr`` is the one way to read an ``itertools.count`` without advancing it.
    """
    return int(repr(tickets)[6:-1]) - 1


def _counts_by_default(exc: BaseException) -> bool:
    # Rejections by buttress's own strategies (an inner breaker, a full bulkhead,
    # a local rate limit) are load shedding, not the dependency failing.
    if isinstance(exc, CircuitOpenError | BulkheadFullError | RateLimitExceeded):
        return False
    return classify(exc) is not Severity.PERMANENT


class CircuitBreaker(Strategy, Observable):
    """Stops calls to a dependency that keeps failing, then probes it to see if it recovered.

    CLOSED counts outcomes; the breaker opens on ``failure_threshold`` consecutive
    failures, or when the failure rate in the sliding window reaches
    ``failure_rate_threshold`` once ``minimum_calls`` were seen (or the slow-call
    rate reaches ``slow_call_rate_threshold``). OPEN rejects calls with
    :class:`CircuitOpenError` for ``recovery_timeout`` seconds, then HALF_OPEN lets
    ``half_open_max_calls`` probes through at once: ``success_threshold`` successes
    close it, one failure opens it again. A probe permit not returned within
    ``half_open_permit_timeout`` is reclaimed, so a leaked call cannot wedge it.

    By default an exception counts as a failure unless :func:`classify` calls it
    PERMANENT (a caller's validation error says nothing about the dependency), or
    it is a rejection by another buttress strategy (load shedding is not failure).

    Events: ``state_change``, ``success``, ``failure``, ``ignored``, ``rejected``.

    >>> breaker = CircuitBreaker("payments", failure_threshold=5, recovery_timeout=30)
    >>> @breaker
    ... def charge(cents: int) -> str: ...
    >>> breaker.call(charge, 100)
    >>> await breaker.call_async(charge_async, 100)

    The lock guards only state updates: never the protected call, never an await.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int | None = 5,
        recovery_timeout: Duration = 30.0,
        success_threshold: int = 1,
        half_open_max_calls: int = 1,
        half_open_permit_timeout: Duration = 60.0,
        failure_rate_threshold: float | None = None,
        minimum_calls: int = 10,
        window: Duration = 100,
        window_type: str = "count",
        slow_call_duration: Duration | None = None,
        slow_call_rate_threshold: float | None = None,
        on: ExceptionFilter | None = None,
        on_result: Callable[[Any], bool] | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        where = f"CircuitBreaker({name!r})"
        if not isinstance(name, str) or not name:
            raise ValueError(f"CircuitBreaker: name must be a non-empty string, got {name!r}")
        self._register(name, name, registry)
        self._failure_threshold = (
            None
            if failure_threshold is None
            else check_int(where, "failure_threshold", failure_threshold, minimum=1)
        )
        self._recovery_timeout = check_seconds(where, "recovery_timeout", recovery_timeout)
        self._success_threshold = check_int(
            where, "success_threshold", success_threshold, minimum=1
        )
        self._half_open_max_calls = check_int(
            where, "half_open_max_calls", half_open_max_calls, minimum=1
        )
        self._permit_timeout = check_seconds(
            where, "half_open_permit_timeout", half_open_permit_timeout, allow_zero=False
        )
        self._rate_threshold = (
            None
            if failure_rate_threshold is None
            else check_fraction(where, "failure_rate_threshold", failure_rate_threshold)
        )
        self._minimum_calls = check_int(where, "minimum_calls", minimum_calls, minimum=1)
        self._slow_duration = (
            None
            if slow_call_duration is None
            else check_seconds(where, "slow_call_duration", slow_call_duration, allow_zero=False)
        )
        if slow_call_rate_threshold is not None and slow_call_duration is None:
            raise ValueError(
                f"{where}: slow_call_rate_threshold needs slow_call_duration, the time "
                "beyond which a call counts as slow"
            )
        self._slow_rate_threshold = check_fraction(
            where,
            "slow_call_rate_threshold",
            1.0 if slow_call_rate_threshold is None else slow_call_rate_threshold,
        )
        if window_type == "count":
            self._window: CountWindow | TimeWindow = CountWindow(
                check_int(where, "window", window, minimum=1)
            )
        elif window_type == "time":
            self._window = TimeWindow(check_seconds(where, "window", window, allow_zero=False))
        else:
            raise ValueError(f"{where}: window_type must be 'count' or 'time', got {window_type!r}")
        rate_rules = self._rate_threshold is not None or self._slow_duration is not None
        if self._failure_threshold is None and not rate_rules:
            raise ValueError(
                f"{where}: set failure_threshold, failure_rate_threshold or "
                "slow_call_duration; with none of them the breaker could never open"
            )
        if (
            rate_rules
            and isinstance(self._window, CountWindow)
            and self._window.size < self._minimum_calls
        ):
            raise ValueError(
                f"{where}: minimum_calls ({minimum_calls}) must be <= window ({window}): "
                "a count window never holds more calls than its size, so the rate "
                "rules could never trip"
            )
        self._counts_as_failure = exception_filter(where, on, _counts_by_default)
        self._result_is_failure = check_callable(where, "on_result", on_result)
        self._clock = resolve_clock(where, clock)
        self._timed = self._slow_duration is not None
        self._lock = threading.Lock()

        self._state = _CLOSED
        # Every transition (and every reclaim of half-open permits) starts a new
        # epoch; an outcome from an older epoch is counted but decides nothing.
        self._epoch = 0
        self._forced_open = False
        self._disabled = False
        self._opened_at = 0.0
        self._last_transition_at: float | None = None
        self._half_open_in_flight = 0
        self._half_open_successes = 0
        self._last_permit_at = 0.0
        # Every success and failure takes a ticket. Taking one is a single atomic
        # C call, so a success in a quiet CLOSED breaker (the hot path) needs no
        # lock, no clock and no allocation; failures, taken under the lock,
        # compare tickets to tell whether they are consecutive.
        self._tickets = itertools.count(1)
        self._take_ticket = self._tickets.__next__
        self._ticket_base = 0
        self._last_failure_ticket = -1
        self._consecutive_failures = 0
        self._failures = self._ignored = self._rejections = self._slow = 0
        self._update_fast_path()

    # -- public surface ------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an open breaker whose recovery time passed reads HALF_OPEN."""
        if self._state is _OPEN and not self._forced_open:
            with self._lock:
                changed = self._maybe_half_open(self._clock.now())
            if changed:
                self._emit_transition(*changed)
        return self._state

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._name!r} {self._state.value}>"

    def _listeners_changed(self) -> None:
        with self._lock:
            self._update_fast_path()

    def _update_fast_path(self) -> None:
        # The fast path serves a CLOSED breaker whose successes need nothing but
        # a ticket: a count window, no slow-call rule, no result predicate, and
        # nobody listening for successes. Updated under the lock, with the state.
        self._fast = (
            self._state is _CLOSED
            and isinstance(self._window, CountWindow)
            and not self._timed
            and self._result_is_failure is None
            and not self._listeners.wants("success")
        )

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The epoch is read before the fast-path flag: a thread paused between the
        # two then holds an older epoch, whose outcome decides nothing, rather than
        # a HALF_OPEN epoch it holds no permit for.
        epoch = self._epoch
        if not self._fast:
            return self._run_guarded(fn, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(epoch, 0.0, exc)
            raise
        self._take_ticket()
        return result

    def _run_guarded(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        epoch = self._admit()
        start = self._clock.now() if self._timed else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(epoch, start, exc)
            raise
        self._record_result(epoch, start, result)
        return result

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        epoch = self._epoch  # before the flag, as in _run
        fast = self._fast
        if not fast:
            epoch = self._admit()
        start = self._clock.now() if self._timed else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(epoch, start, exc)
            raise
        if fast:
            self._take_ticket()
        else:
            self._record_result(epoch, start, result)
        return result

    def metrics(self) -> CircuitMetrics:
        state = self.state  # applies a due OPEN -> HALF_OPEN first
        with self._lock:
            now = self._clock.now()
            issued = _issued(self._tickets)
            total, failures, slow = self._window.totals(now, issued)
            outcomes = issued - self._ticket_base
            return CircuitMetrics(
                name=self._name,
                state=state,
                calls=outcomes + self._ignored,
                successes=outcomes - self._failures,
                failures=self._failures,
                ignored=self._ignored,
                rejections=self._rejections,
                slow_calls=self._slow,
                failure_rate=failures / total if total else 0.0,
                slow_call_rate=slow / total if total else 0.0,
                consecutive_failures=(
                    self._consecutive_failures if self._last_failure_ticket == issued else 0
                ),
                last_transition_at=self._last_transition_at,
                retry_after=self._retry_after(now) if self._state is _OPEN else 0.0,
                forced_open=self._forced_open,
                disabled=self._disabled,
            )

    def reset(self) -> None:
        """Close the breaker, clear its window and counters, undo ``force_open``/``disable``."""
        with self._lock:
            self._forced_open = self._disabled = False
            self._ticket_base = _issued(self._tickets)
            self._failures = self._ignored = self._rejections = self._slow = 0
            changed = self._transition(_CLOSED, self._clock.now())
        if changed:
            self._emit_transition(*changed)

    def force_open(self) -> None:
        """Open the breaker and keep it open (no probes) until ``reset()``."""
        with self._lock:
            self._forced_open = True
            self._disabled = False
            changed = self._transition(_OPEN, self._clock.now())
        if changed:
            self._emit_transition(*changed)

    def disable(self) -> None:
        """Let every call through and never change state until ``reset()``; outcomes are
        still counted in the metrics."""
        with self._lock:
            self._disabled = True
            self._forced_open = False
            changed = self._transition(_CLOSED, self._clock.now())
        if changed:
            self._emit_transition(*changed)

    # -- the state machine (all under self._lock) ------------------------------------

    def _transition(self, to: CircuitState, now: float) -> tuple[CircuitState, CircuitState] | None:
        previous = self._state
        self._epoch += 1
        self._consecutive_failures = 0
        self._last_failure_ticket = -1
        self._half_open_in_flight = self._half_open_successes = 0
        if to is _OPEN:
            self._opened_at = now
        if to is _CLOSED:
            # Kept while OPEN and HALF_OPEN, where it decides nothing, so the
            # metrics still show the failure rate that opened the breaker.
            self._window.reset(_issued(self._tickets))
        self._state = to
        self._update_fast_path()
        if previous is to:
            return None
        self._last_transition_at = now
        return previous, to

    def _maybe_half_open(self, now: float) -> tuple[CircuitState, CircuitState] | None:
        if (
            self._state is _OPEN
            and not self._forced_open
            and now - self._opened_at >= self._recovery_timeout
        ):
            return self._transition(_HALF_OPEN, now)
        return None

    def _retry_after(self, now: float) -> float:
        """Seconds until a call may get through: the rest of OPEN, or while HALF_OPEN
        with every permit taken, until the oldest could be reclaimed (at most a
        recovery period). A forced-open breaker never lets one through: inf."""
        if self._forced_open:
            return math.inf
        if self._state is _HALF_OPEN:
            reclaim = self._last_permit_at + self._permit_timeout - now
            return max(0.0, min(reclaim, self._recovery_timeout))
        return max(0.0, self._opened_at + self._recovery_timeout - now)

    def _admit(self) -> int:
        """Admit a call that found the breaker not CLOSED, or raise CircuitOpenError."""
        if self._disabled:
            return self._epoch
        changed = None
        with self._lock:
            now = self._clock.now()
            state = self._state
            if state is _OPEN:
                changed = self._maybe_half_open(now)
                state = self._state
            if state is _CLOSED:
                epoch: int | None = self._epoch
            elif state is _HALF_OPEN:
                epoch = self._take_permit(now)
            else:
                epoch = None
            if epoch is None:
                self._rejections += 1
                retry_after = self._retry_after(now)
        if changed:
            self._emit_transition(*changed)
        if epoch is None:
            if self._listeners:
                self._listeners.emit(
                    self._name, "rejected", now, state=state, retry_after=retry_after
                )
            raise CircuitOpenError(self._name, retry_after=retry_after)
        return epoch

    def _take_permit(self, now: float) -> int | None:
        if self._half_open_in_flight >= self._half_open_max_calls:
            if now - self._last_permit_at < self._permit_timeout:
                return None
            # Every permit is older than the limit: its calls leaked or hung.
            # A new epoch makes their late outcomes count for nothing.
            self._epoch += 1
            self._half_open_in_flight = self._half_open_successes = 0
        self._half_open_in_flight += 1
        self._last_permit_at = now
        return self._epoch

    def _record_result(self, epoch: int, start: float, result: object) -> None:
        predicate = self._result_is_failure
        failed = predicate is not None and bool(predicate(result))
        kind = "failure" if failed else "success"
        self._record(epoch, start, failed=failed, kind=kind, detail=result)

    def _record_exception(self, epoch: int, start: float, exc: BaseException) -> None:
        if self._counts_as_failure(exc):
            self._record(epoch, start, failed=True, kind="failure", detail=exc)
        else:
            self._record(epoch, start, failed=None, kind="ignored", detail=exc)

    def _record(
        self, epoch: int, start: float, *, failed: bool | None, kind: str, detail: object
    ) -> None:
        """Count one outcome: ``failed`` is None for an exception that does not count."""
        now = self._clock.now()
        limit = self._slow_duration
        slow = limit is not None and failed is not None and now - start >= limit
        changed = None
        with self._lock:
            if failed is None:
                self._ignored += 1
                ticket = 0
            else:
                ticket = self._take_ticket()
                if failed:
                    self._failures += 1
            current = epoch == self._epoch
            if failed and current:
                # A late failure from an older epoch is counted, but starts no run.
                follows = ticket == self._last_failure_ticket + 1
                self._consecutive_failures = self._consecutive_failures + 1 if follows else 1
                self._last_failure_ticket = ticket
            self._slow += slow
            if current and not self._disabled:
                if self._state is _CLOSED:
                    changed = self._closed_outcome(now, ticket, failed, slow)
                elif self._state is _HALF_OPEN:
                    changed = self._half_open_outcome(now, failed, slow)
        if self._listeners:
            key = "exception" if isinstance(detail, BaseException) else "result"
            self._listeners.emit(self._name, kind, now, slow=slow, **{key: detail})
        if changed:
            self._emit_transition(*changed)

    def _closed_outcome(
        self, now: float, ticket: int, failed: bool | None, slow: bool
    ) -> tuple[CircuitState, CircuitState] | None:
        if failed is None:
            return None
        self._window.record(now, ticket, failed, slow)
        if (
            failed
            and self._failure_threshold is not None
            and self._consecutive_failures >= self._failure_threshold
        ):
            return self._transition(_OPEN, now)
        if failed or slow:
            total, failures, slow_calls = self._window.totals(now, ticket)
            if total >= self._minimum_calls and (
                (self._rate_threshold is not None and failures / total >= self._rate_threshold)
                or (self._timed and slow_calls / total >= self._slow_rate_threshold)
            ):
                return self._transition(_OPEN, now)
        return None

    def _half_open_outcome(
        self, now: float, failed: bool | None, slow: bool
    ) -> tuple[CircuitState, CircuitState] | None:
        self._half_open_in_flight -= 1
        if failed is None:
            return None  # the permit is back; the probe proved nothing
        if failed or slow:
            return self._transition(_OPEN, now)
        self._half_open_successes += 1
        if self._half_open_successes >= self._success_threshold:
            return self._transition(_CLOSED, now)
        return None

    def _emit_transition(self, previous: CircuitState, current: CircuitState) -> None:
        if self._listeners:
            self._listeners.emit(
                self._name, "state_change", self._clock.now(), previous=previous, state=current
            )
