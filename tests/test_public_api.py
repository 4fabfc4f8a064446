"""The public surface: what DESIGN.md promises is importable, and __all__ is honest."""

from __future__ import annotations

import importlib

import pytest

import buttress
import buttress.resilience

CONTRACT = [
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Pipeline",
    "RateLimitExceeded",
    "RateLimiter",
    "Retry",
    "fallback",
    "hedge",
    "retry",
    "timeout",
]


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_names_are_importable_from_the_top(name: str) -> None:
    """Every name the design promises is importable from buttress."""
    assert name in buttress.__all__
    assert getattr(buttress, name) is not None


def test_manual_clock_lives_in_buttress_clock() -> None:
    """`from buttress.clock import ManualClock` works, and the testing module re-exports it."""
    from buttress.clock import ManualClock
    from buttress.testing import ManualClock as FromTesting

    assert ManualClock is FromTesting


@pytest.mark.parametrize("module", [buttress, buttress.resilience])
def test_all_is_sorted_and_resolves(module: object) -> None:
    """__all__ is sorted, and each name in it exists."""
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert sorted(names) == names
    for name in names:
        assert hasattr(module, name), name


@pytest.mark.parametrize(
    "private",
    [
        "_breaker",
        "_bulkhead",
        "_fallback",
        "_hedge",
        "_pipeline",
        "_ratelimit",
        "_registry",
        "_retry",
        "_timeout",
    ],
)
def test_resilience_reexports_everything_its_modules_export(private: str) -> None:
    """Each private module's __all__ is re-exported by buttress.resilience."""
    module = importlib.import_module(f"buttress.resilience.{private}")
    missing = set(module.__all__) - set(buttress.resilience.__all__)
    assert set() == missing


def test_public_classes_say_they_live_in_the_public_module() -> None:
    """Re-exported classes report buttress.resilience as their module, not a private one."""
    assert "buttress.resilience" == buttress.CircuitBreaker.__module__


def test_version_is_a_string() -> None:
    """buttress.__version__ is the package version."""
    assert buttress.__version__.count(".") >= 2
