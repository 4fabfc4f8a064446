"""The breaker, driven by random call sequences, against a small reference model."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from buttress import CircuitBreaker, CircuitOpenError, CircuitState
from buttress.clock import ManualClock


@dataclass
class Model:
    """What the breaker should do, written as plainly as possible."""

    failure_threshold: int
    recovery_timeout: float
    success_threshold: int
    state: CircuitState = CircuitState.CLOSED
    now: float = 0.0
    consecutive: int = 0
    opened_at: float = 0.0
    probes_ok: int = 0
    forced: bool = False

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

    def call(self, outcome: str) -> bool:
        """Apply one call; return whether it was rejected."""
        state = self.current()
        if state is CircuitState.OPEN:
            return True
        if outcome == "ignored":
            return False
        if state is CircuitState.CLOSED:
            if outcome == "failure":
                self.consecutive += 1
                if self.consecutive >= self.failure_threshold:
                    self.open()
            else:
                self.consecutive = 0
        elif outcome == "failure":
            self.open()
        else:
            self.probes_ok += 1
            if self.probes_ok >= self.success_threshold:
                self.state, self.consecutive = CircuitState.CLOSED, 0
        return False


def run(outcome: str) -> str:
    if outcome == "failure":
        raise ConnectionError("down")
    if outcome == "ignored":
        raise ValueError("caller error")
    return "ok"


class BreakerMachine(RuleBasedStateMachine):
    """Random sequences of calls, clock moves, resets and forced opens."""

    @initialize(
        failure_threshold=st.integers(1, 5),
        recovery_timeout=st.sampled_from([0.0, 1.0, 5.0, 30.0]),
        success_threshold=st.integers(1, 3),
    )
    def setup(
        self, failure_threshold: int, recovery_timeout: float, success_threshold: int
    ) -> None:
        self.clock = ManualClock()
        self.breaker = CircuitBreaker(
            "model",
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            success_threshold=success_threshold,
            clock=self.clock,
            registry=None,
        )
        self.model = Model(failure_threshold, recovery_timeout, success_threshold)

    @rule(outcome=st.sampled_from(["success", "failure", "ignored"]))
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
        self.model.state, self.model.consecutive, self.model.forced = CircuitState.CLOSED, 0, False

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.model.open()
        self.model.forced = True

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "model"):
            assert self.model.current() == self.breaker.state

    @invariant()
    def same_consecutive_failures(self) -> None:
        if hasattr(self, "model") and self.model.current() is CircuitState.CLOSED:
            assert self.model.consecutive == self.breaker.metrics().consecutive_failures


TestBreakerAgainstModel = BreakerMachine.TestCase
TestBreakerAgainstModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


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
