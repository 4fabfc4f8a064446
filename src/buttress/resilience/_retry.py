"""Retry with backoff, jitter, a deadline and an optional retry budget.

:meth:`Retry._plan` decides, for sync and async alike, whether another attempt
happens and after how long; ``call`` and ``call_async`` only run attempts and wait.
The first attempt runs with no bookkeeping at all, so a call that succeeds costs
one ``try``.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from buttress.clock import Clock
from buttress.errors import (
    BulkheadFullError,
    CircuitOpenError,
    Severity,
    classify,
    retry_after_of,
)
from buttress.resilience._common import (
    Duration,
    ExceptionFilter,
    Observable,
    Strategy,
    check_callable,
    check_fraction,
    check_int,
    check_number,
    check_seconds,
    exception_filter,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry

__all__ = [
    "Retry",
    "RetryAttempt",
    "RetryBudget",
    "RetryMetrics",
    "is_testing",
    "retry",
    "set_testing",
]

P = ParamSpec("P")
T = TypeVar("T")

_RETRYABLE = (Severity.TRANSIENT, Severity.RECOVERABLE)
_BACKOFFS = ("constant", "linear", "exponential")
_JITTERS = ("none", "full", "equal", "decorrelated")


@dataclass(frozen=True, slots=True)
class _TestingMode:
    attempts: int | None
    cap: bool


_testing: _TestingMode | None = None


def set_testing(testing: bool, *, attempts: int | None = None, cap: bool = False) -> None:
    """Turn the global testing mode on or off: retries then never wait.

    ``attempts`` replaces every retry's attempt count (or, with ``cap=True``,
    caps it), so a test of failure handling runs one attempt instead of five.

    >>> set_testing(True, attempts=1)   # in a conftest fixture
    >>> set_testing(False)
    """
    global _testing
    if attempts is not None:
        check_int("set_testing", "attempts", attempts, minimum=1)
    _testing = _TestingMode(attempts, cap) if testing else None


def is_testing() -> bool:
    """Whether :func:`set_testing` turned the testing mode on."""
    return _testing is not None


@dataclass(frozen=True, slots=True)
class RetryAttempt:
    """What a ``before_sleep`` hook learns about the retry about to happen."""

    name: str
    attempt: int
    """The attempt that just failed, from 1."""
    delay: float
    """Seconds until the next attempt."""
    elapsed: float
    """Seconds since the first attempt started (0.0 when no deadline is set)."""
    exception: BaseException | None
    result: object


@dataclass(frozen=True, slots=True)
class RetryMetrics:
    name: str
    retries: int
    """Attempts after the first."""
    recovered: int
    """Calls that failed at first and then succeeded."""
    exhausted: int
    """Calls that retried and still failed: out of attempts, time or budget."""
    not_retryable: int
    """Calls that failed with something not worth retrying, raised at once."""
    budget_denied: int
    """Retries the budget refused (each also ends a call as exhausted)."""


class RetryBudget:
    """A token bucket shared across calls that keeps retries to a fraction of calls.

    Each call deposits ``ratio`` tokens and each retry takes one, so retries stay
    under ``ratio`` of traffic however many callers fail at once: a dependency in
    trouble sees at most ``1 + ratio`` times its normal load, not ``attempts`` times.
    ``min_per_second`` tokens accrue with time, so rare calls can still retry.

    >>> budget = RetryBudget(ratio=0.1)
    >>> fetch = retry(attempts=5, budget=budget)(fetch)
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        max_tokens: float = 100.0,
        clock: Clock | None = None,
    ) -> None:
        where = "RetryBudget"
        self.ratio = check_fraction(where, "ratio", ratio)
        self.min_per_second = check_number(where, "min_per_second", min_per_second, minimum=0)
        # A retry costs one whole token: a smaller bucket could never pay for one.
        self.max_tokens = check_number(where, "max_tokens", max_tokens, minimum=1)
        self._clock = resolve_clock(where, clock)
        self._tokens = self.max_tokens
        self._refilled_at = self._clock.now()
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def deposit(self) -> None:
        """Count one call."""
        with self._lock:
            tokens = self._tokens + self.ratio
            self._tokens = tokens if tokens < self.max_tokens else self.max_tokens

    def try_withdraw(self) -> bool:
        """Take a token for one retry; False when the budget is spent."""
        with self._lock:
            self._refill()
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def _refill(self) -> None:
        now = self._clock.now()
        self._tokens = min(
            self.max_tokens, self._tokens + (now - self._refilled_at) * self.min_per_second
        )
        self._refilled_at = now


def _retryable_by_default(exc: BaseException) -> bool:
    # An open breaker or a full bulkhead is our own decision to shed load:
    # retrying it would wait out the rejection instead of failing fast (to a
    # fallback). Name them in ``on=`` to retry them anyway.
    return (
        isinstance(exc, Exception)
        and not isinstance(exc, CircuitOpenError | BulkheadFullError)
        and classify(exc) in _RETRYABLE
    )


class _Attempts:
    """The bookkeeping of one call that needed a retry."""

    __slots__ = ("attempt", "history", "previous_delay", "retryable", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.attempt = 1
        self.previous_delay = 0.0
        self.retryable = True
        self.history: list[str] = []


class Retry(Strategy, Observable):
    """Run a call again when it fails with something worth retrying.

    ``attempts`` counts every try, the first included. Between tries it waits
    ``wait_initial`` grown by ``backoff`` (``"exponential"`` by ``wait_exp_base``,
    ``"linear"``, or ``"constant"``), at most ``wait_max``, spread by ``wait_jitter``
    (``"full"``, ``"equal"``, ``"decorrelated"`` or ``"none"``). Decorrelated
    jitter is a backoff of its own (each wait is drawn between ``wait_initial``
    and three times the last one), so it ignores ``backoff``. An exception's
    ``retry_after`` hint (a 429's) is a floor on the wait.

    ``deadline`` bounds the retrying, measured from the first attempt: no attempt
    starts after it, nor one whose wait would end after it. An attempt already
    running is not interrupted; to bound each attempt, put a :class:`Timeout`
    inside the retry.

    Events: ``retry`` (before each wait) and ``exhausted``.

    By default it retries what :func:`classify` calls TRANSIENT or RECOVERABLE,
    except an open breaker's or a full bulkhead's rejection, which should fail
    fast rather than wait.
    When it gives up, the caller's own exception comes through, with the story
    of the earlier attempts attached as notes (shown in its traceback).

    >>> @retry(attempts=3, on=(ConnectionError,))
    ... def fetch() -> bytes: ...
    """

    def __init__(
        self,
        attempts: int = 3,
        *,
        on: ExceptionFilter | None = None,
        on_result: Callable[[Any], bool] | None = None,
        deadline: Duration | None = None,
        backoff: str = "exponential",
        wait_initial: Duration = 0.1,
        wait_max: Duration = 10.0,
        wait_exp_base: float = 2.0,
        wait_jitter: str = "full",
        budget: RetryBudget | None = None,
        before_sleep: Callable[[RetryAttempt], object] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
        rng: random.Random | None = None,
    ) -> None:
        where = "Retry" if name is None else f"Retry({name!r})"
        self._attempts = check_int(where, "attempts", attempts, minimum=1)
        self._deadline = None if deadline is None else check_seconds(where, "deadline", deadline)
        if backoff not in _BACKOFFS:
            raise ValueError(f"{where}: backoff must be one of {_BACKOFFS}, got {backoff!r}")
        if wait_jitter not in _JITTERS:
            raise ValueError(f"{where}: wait_jitter must be one of {_JITTERS}, got {wait_jitter!r}")
        self._backoff = backoff
        self._jitter = wait_jitter
        self._wait_initial = check_seconds(where, "wait_initial", wait_initial)
        self._wait_max = check_seconds(where, "wait_max", wait_max)
        if self._wait_max < self._wait_initial:
            raise ValueError(
                f"{where}: wait_max ({self._wait_max}) must be >= wait_initial "
                f"({self._wait_initial})"
            )
        self._exp_base = check_number(where, "wait_exp_base", wait_exp_base, minimum=1)
        self._should_retry = exception_filter(where, on, _retryable_by_default)
        self._on_result = check_callable(where, "on_result", on_result)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ValueError(f"{where}: budget must be a RetryBudget, got {budget!r}")
        self._budget = budget
        self._before_sleep = check_callable(where, "before_sleep", before_sleep)
        self._register(name, "retry", registry)
        self._clock = resolve_clock(where, clock)
        self._random = rng.random if rng is not None else random.random
        self._lock = threading.Lock()
        self._retries = self._recovered = self._exhausted = self._budget_denied = 0
        self._not_retryable = 0

    def __repr__(self) -> str:
        return f"<Retry {self._name!r} attempts={self._attempts}>"

    def metrics(self) -> RetryMetrics:
        with self._lock:
            return RetryMetrics(
                self._name,
                self._retries,
                self._recovered,
                self._exhausted,
                self._not_retryable,
                self._budget_denied,
            )

    # -- running attempts ---------------------------------------------------------

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``fn(*args, **kwargs)``, retrying as configured."""
        if self._budget is not None:
            self._budget.deposit()
        start = self._clock.now() if self._deadline is not None else 0.0
        result: Any = None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            failure: BaseException | None = exc
        else:
            if self._on_result is None or not self._on_result(result):
                return result
            failure = None
        state = _Attempts(start)
        while (
            delay := self._plan(state, failure, result if failure is None else None)
        ) is not None:
            self._clock.sleep(delay)
            state.attempt += 1
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                failure = exc
                continue
            failure = None
            if self._on_result is None or not self._on_result(result):
                self._count_recovery()
                return result
        return self._give_up(state, failure, result)

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Await ``fn(*args, **kwargs)``, retrying as configured."""
        if self._budget is not None:
            self._budget.deposit()
        start = self._clock.now() if self._deadline is not None else 0.0
        result: Any = None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            failure: BaseException | None = exc
        else:
            if self._on_result is None or not self._on_result(result):
                return result
            failure = None
        state = _Attempts(start)
        while (
            delay := self._plan(state, failure, result if failure is None else None)
        ) is not None:
            await self._clock.sleep_async(delay)
            state.attempt += 1
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                failure = exc
                continue
            failure = None
            if self._on_result is None or not self._on_result(result):
                self._count_recovery()
                return result
        return self._give_up(state, failure, result)

    # -- the decisions, shared by sync and async -------------------------------------

    def _plan(
        self, state: _Attempts, failure: BaseException | None, result: object
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to stop (noting why)."""
        outcome = f"raised {failure!r}" if failure is not None else f"returned {result!r}"
        if failure is not None and not self._should_retry(failure):
            state.history.append(f"attempt {state.attempt} {outcome}: not retryable")
            state.retryable = False
            return None
        attempts = self._attempts
        if _testing is not None and _testing.attempts is not None:
            attempts = min(attempts, _testing.attempts) if _testing.cap else _testing.attempts
        if state.attempt >= attempts:
            state.history.append(
                f"attempt {state.attempt} of {attempts} {outcome}: no attempts left"
            )
            return None
        delay = self._compute_backoff(state)
        hint = None if failure is None else retry_after_of(failure)
        if hint is not None and hint > delay:
            if not math.isfinite(hint):
                state.history.append(
                    f"attempt {state.attempt} {outcome}: it asks never to be retried"
                )
                return None
            delay = hint
        if _testing is not None:
            delay = 0.0
        elapsed = 0.0
        if self._deadline is not None:
            elapsed = self._clock.now() - state.start
            if elapsed + delay > self._deadline:
                state.history.append(
                    f"attempt {state.attempt} {outcome}: waiting {delay:.3g}s would pass the "
                    f"{self._deadline:.3g}s deadline"
                )
                return None
        if self._budget is not None and not self._budget.try_withdraw():
            with self._lock:
                self._budget_denied += 1
            state.history.append(f"attempt {state.attempt} {outcome}: retry budget spent")
            return None
        state.history.append(
            f"attempt {state.attempt} of {attempts} {outcome}; retrying in {delay:.3g}s"
        )
        state.previous_delay = delay
        with self._lock:
            self._retries += 1
        if self._before_sleep is not None or self._listeners:
            info = RetryAttempt(self._name, state.attempt, delay, elapsed, failure, result)
            if self._before_sleep is not None:
                self._before_sleep(info)
            self._listeners.emit(
                self._name,
                "retry",
                self._clock.now(),
                attempt=state.attempt,
                delay=delay,
                exception=failure,
            )
        return delay

    def _compute_backoff(self, state: _Attempts) -> float:
        initial, cap = self._wait_initial, self._wait_max
        if self._jitter == "decorrelated":
            # AWS's "decorrelated jitter": each wait grows from the last one.
            upper = max(initial, state.previous_delay * 3)
            return min(cap, initial + self._random() * (upper - initial))
        if self._backoff == "constant":
            base = initial
        elif self._backoff == "linear":
            base = initial * state.attempt
        else:
            base = initial * self._exp_base ** min(state.attempt - 1, 1000)
        base = min(base, cap)
        if self._jitter == "full":
            return self._random() * base
        if self._jitter == "equal":
            return base / 2 + self._random() * base / 2
        return base

    def _count_recovery(self) -> None:
        with self._lock:
            self._recovered += 1

    def _give_up(self, state: _Attempts, failure: BaseException | None, result: T) -> T:
        if not state.retryable and state.attempt == 1:
            # Never retried: the exception needs no story, and nothing ran out.
            with self._lock:
                self._not_retryable += 1
            assert failure is not None
            raise failure
        with self._lock:
            if state.retryable:
                self._exhausted += 1
            else:
                self._not_retryable += 1
        if self._listeners and state.retryable:
            self._listeners.emit(
                self._name,
                "exhausted",
                self._clock.now(),
                attempts=state.attempt,
                exception=failure,
            )
        if failure is None:
            return result  # retried on results and ran out: the last result stands
        for line in state.history:
            failure.add_note(f"buttress.retry {self._name!r}: {line}")
        raise failure


retry = Retry
"""``@retry(attempts=3, on=(ConnectionError,))``: the decorator spelling of :class:`Retry`."""
