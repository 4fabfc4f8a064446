"""Registry: named primitives, findable by name, held weakly."""

from __future__ import annotations

import functools
import gc
import threading

import pytest

from buttress import Bulkhead, CircuitBreaker, RateLimiter, Registry, default_registry, retry


def test_named_primitives_can_be_looked_up() -> None:
    """A named primitive is in its registry under its name and type."""
    registry = Registry()
    breaker = CircuitBreaker("payments", registry=registry)
    bulkhead = Bulkhead(5, name="db", registry=registry)
    limiter = RateLimiter(10, name="api", registry=registry)
    assert breaker is registry.get("payments")
    assert breaker is registry["payments"]
    assert registry.get("payments", CircuitBreaker) is breaker
    assert registry.get("db", CircuitBreaker) is None
    assert [breaker] == registry.of_type(CircuitBreaker)
    assert ["api", "db", "payments"] == registry.names()
    assert [limiter, bulkhead, breaker] == registry.all()
    assert 3 == len(registry)
    assert "db" in registry


def test_the_default_registry_collects_named_primitives() -> None:
    """Without registry=, a named primitive joins the process-wide registry."""
    breaker = CircuitBreaker("default-registry-test")
    policy = retry(name="default-retry-test")
    assert breaker is default_registry.get("default-registry-test")
    assert policy is default_registry.get("default-retry-test")


def test_unknown_name_says_what_is_registered() -> None:
    """Looking up a missing name raises KeyError listing the names that exist."""
    registry = Registry()
    keep = CircuitBreaker("known", registry=registry)
    with pytest.raises(
        KeyError, match="no primitive named 'nope' is registered \\(registered: known\\)"
    ):
        registry["nope"]
    assert keep.name == "known"


def test_dropped_primitives_leave_the_registry() -> None:
    """The registry holds primitives weakly: a dropped breaker disappears."""
    registry = Registry()
    CircuitBreaker("temporary", registry=registry)
    gc.collect()
    assert registry.get("temporary") is None
    assert [] == registry.names()


def test_a_new_primitive_replaces_one_with_the_same_name() -> None:
    """Re-creating a breaker under its name (a module reload) replaces the old one."""
    registry = Registry()
    old = CircuitBreaker("same", registry=registry)
    new = CircuitBreaker("same", registry=registry)
    assert registry.get("same") is new
    del old
    gc.collect()
    assert registry.get("same") is new


def test_unregister_and_clear() -> None:
    """unregister() removes one name; clear() removes all."""
    registry = Registry()
    first = CircuitBreaker("one", registry=registry)
    second = CircuitBreaker("two", registry=registry)
    registry.unregister("one")
    assert ["two"] == registry.names()
    registry.clear()
    assert [] == registry.names()
    assert first is not second


def test_kinds_have_their_own_names() -> None:
    """A retry named like a breaker does not evict it; an ambiguous lookup says so."""
    registry = Registry()
    breaker = CircuitBreaker("payments", registry=registry)
    policy = retry(name="payments", registry=registry)
    assert breaker is registry.get("payments", CircuitBreaker)
    assert [breaker] == registry.of_type(CircuitBreaker)
    assert policy is registry.get("payments", type(policy))
    with pytest.raises(LookupError, match="'payments' names a CircuitBreaker, Retry; pass kind="):
        registry.get("payments")
    registry.unregister("payments", CircuitBreaker)
    assert policy is registry.get("payments")


def _hold(breaker: CircuitBreaker, event: object) -> None:
    """A listener that keeps a reference to its breaker."""


def test_garbage_collection_during_register_does_not_deadlock() -> None:
    """A dropped primitive collected while another registers cannot hang the registry."""
    registry = Registry()

    def churn() -> None:
        for index in range(2000):
            breaker = CircuitBreaker(f"cycle-{index % 3}", registry=registry)
            # a listener that refers back to its breaker: a cycle only gc frees
            breaker.add_listener(functools.partial(_hold, breaker))
            del breaker

    thresholds = gc.get_threshold()
    gc.set_threshold(1, 1, 1)  # collect at almost every allocation
    try:
        worker = threading.Thread(target=churn, daemon=True)
        worker.start()
        worker.join(30)
    finally:
        gc.set_threshold(*thresholds)
    assert not worker.is_alive()
