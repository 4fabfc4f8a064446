"""The breaker, driven by random call sequences, against a small reference model."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from buttress import CircuitBreaker, CircuitOpenError, CircuitState
from buttress.clock import ManualClock


@dataclass
class Model:
    """What the breaker should do, written as plainly as possible."""

    failure_threshold: int | None
    recovery_timeout: float
    success_threshold: int
    rate_threshold: float | None = None
    minimum_calls: int = 1
    window: int = 1
    state: CircuitState = CircuitState.CLOSED
    now: float = 0.0
    consecutive: int = 0
    opened_at: float = 0.0
    probes_ok: int = 0
    forced: bool = False
    disabled: bool = False
    recent: deque[bool] = field(default_factory=deque)  # True for a failure

    def current(self) -> CircuitState:
        if (
            self.state is CircuitState.OPEN
            and not self.forced
            and self.now - self.opened_at >= self.recovery_timeout
        ):
            self.state, self.probes_ok = CircuitState.HALF_OPEN, 0
        return self.state

    def open(self) -> None:
        self.state, self.opened_at, self.consecutive = CircuitState.OPEN, self.now, 0

    def close(self) -> None:
        self.state, self.consecutive = CircuitState.CLOSED, 0
        self.recent.clear()

    def rate_trips(self) -> bool:
        calls = len(self.recent)
        return (
            self.rate_threshold is not None
            and calls >= self.minimum_calls
            and sum(self.recent) / calls >= self.rate_threshold
        )

    def call(self, outcome: str) -> bool:
        """Apply one call; return whether it was rejected."""
        state = self.current()
        if self.disabled:
            if outcome == "failure":
                self.consecutive += 1
            elif outcome == "success":
                self.consecutive = 0
            return False
        if state is CircuitState.OPEN:
            return True
        if outcome == "ignored":
            return False
        failed = outcome == "failure"
        if state is CircuitState.CLOSED:
            self.consecutive = self.consecutive + 1 if failed else 0
            self.recent.append(failed)
            if len(self.recent) > self.window:
                self.recent.popleft()
            threshold = self.failure_threshold
            if failed and (
                (threshold is not None and self.consecutive >= threshold) or self.rate_trips()
            ):
                self.open()
        elif failed:
            self.open()
        else:
            self.probes_ok += 1
            if self.probes_ok >= self.success_threshold:
                self.close()
        return False


def run(outcome: str) -> str:
    if outcome == "failure":
        raise ConnectionError("down")
    if outcome == "ignored":
        raise ValueError("caller error")
    return "ok"


class BreakerMachine(RuleBasedStateMachine):
    """Random sequences of calls, clock moves, resets, forced opens and disables."""

    @initialize(
        failure_threshold=st.one_of(st.none(), st.integers(1, 5)),
        recovery_timeout=st.sampled_from([0.0, 1.0, 5.0, 30.0]),
        success_threshold=st.integers(1, 3),
        rate=st.one_of(
            st.none(),
            st.tuples(st.sampled_from([0.25, 0.5, 1.0]), st.integers(1, 4), st.integers(4, 8)),
        ),
    )
    def setup(
        self,
        failure_threshold: int | None,
        recovery_timeout: float,
        success_threshold: int,
        rate: tuple[float, int, int] | None,
    ) -> None:
        if failure_threshold is None and rate is None:
            failure_threshold = 3  # a breaker needs at least one rule to open
        rate_threshold, minimum_calls, window = rate or (None, 10, 100)
        self.clock = ManualClock()
        self.breaker = CircuitBreaker(
            "model",
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            success_threshold=success_threshold,
            failure_rate_threshold=rate_threshold,
            minimum_calls=minimum_calls,
            window=window,
            clock=self.clock,
            registry=None,
        )
        self.model = Model(
            failure_threshold,
            recovery_timeout,
            success_threshold,
            rate_threshold,
            minimum_calls,
            window,
        )

    @rule(outcome=st.sampled_from(["success", "failure", "failure", "ignored"]))
    def call(self, outcome: str) -> None:
        expected_rejected = self.model.call(outcome)
        try:
            self.breaker.call(run, outcome)
        except CircuitOpenError:
            rejected = True
        except (ConnectionError, ValueError):
            rejected = False
        else:
            rejected = False
        assert expected_rejected == rejected

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.close()
        self.model.forced = self.model.disabled = False

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.model.open()
        self.model.forced, self.model.disabled = True, False

    @rule()
    def disable(self) -> None:
        self.breaker.disable()
        self.model.close()
        self.model.forced, self.model.disabled = False, True

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "model"):
            assert self.model.current() == self.breaker.state

    @invariant()
    def same_consecutive_failures(self) -> None:
        if hasattr(self, "model") and self.model.current() is CircuitState.CLOSED:
            assert self.model.consecutive == self.breaker.metrics().consecutive_failures

    @invariant()
    def same_failure_rate_while_closed(self) -> None:
        if (
            hasattr(self, "model")
            and self.model.current() is CircuitState.CLOSED
            and not self.model.disabled
        ):
            recent = self.model.recent
            expected = sum(recent) / len(recent) if recent else 0.0
            assert abs(expected - self.breaker.metrics().failure_rate) < 1e-9


TestBreakerAgainstModel = BreakerMachine.TestCase
TestBreakerAgainstModel.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)


def test_model_itself_opens_and_recovers() -> None:
    """The reference model follows the documented rules (a check on the checker)."""
    model = Model(failure_threshold=2, recovery_timeout=5, success_threshold=1)
    model.call("failure")
    model.call("failure")
    assert CircuitState.OPEN == model.current()
    assert model.call("success") is True
    model.now = 5
    assert model.call("success") is False
    assert CircuitState.CLOSED == model.current()


def test_model_rate_rule_waits_for_minimum_calls() -> None:
    """The model's rate rule trips only once minimum_calls are in its window."""
    model = Model(None, 5, 1, rate_threshold=0.5, minimum_calls=4, window=4)
    for outcome in ["failure", "success", "failure"]:
        model.call(outcome)
    assert CircuitState.CLOSED == model.current()
    model.call("failure")
    assert CircuitState.OPEN == model.current()
