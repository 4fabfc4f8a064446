"""The public surface: what DESIGN.md promises is importable, and __all__ is honest."""

from __future__ import annotations

import importlib

import pytest

import buttress
import buttress.cache
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


CACHE_CONTRACT = ["Cache", "MemoryCache", "SyncCache", "RedisStore", "MemcachedStore", "cached"]


@pytest.mark.parametrize("name", CACHE_CONTRACT)
def test_cache_contract_names_are_importable(name: str) -> None:
    """`from buttress.cache import MemoryCache, Cache` and friends, as DESIGN.md shows."""
    assert name in buttress.cache.__all__
    assert getattr(buttress.cache, name) is not None


@pytest.mark.parametrize(
    "private",
    ["_cache", "_compression", "_memory", "_missing", "_serializers", "_store", "_tier"],
)
def test_cache_reexports_its_modules_public_names(private: str) -> None:
    """What a cache module exports publicly is importable from buttress.cache."""
    module = importlib.import_module(f"buttress.cache.{private}")
    public = {name for name in module.__all__ if not name.startswith("_")}
    internal = {"FAILED", "RemoteTier", "TierCall", "RAW", "ZSTD", "serializer_from_name"}
    assert set() == public - internal - set(buttress.cache.__all__)


def test_cache_classes_say_they_live_in_buttress_cache() -> None:
    assert "buttress.cache" == buttress.cache.Cache.__module__
    assert "buttress.cache" == buttress.cache.MemoryCache.__module__


@pytest.mark.parametrize("module", [buttress, buttress.resilience, buttress.cache])
def test_all_is_sorted_and_resolves(module: object) -> None:
    """__all__ is sorted, and each name in it exists."""
    names = list(module.__all__)  # type: ignore[attr-defined]
    # isort order, as ruff keeps it: CONSTANTS, then Classes, then functions.
    assert sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n)) == names
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


@pytest.mark.parametrize(
    ("package", "privates"),
    [
        ("buttress.observability", ["_logging", "_metrics", "_health"]),
        ("buttress.web", ["_app", "_service"]),
    ],
)
def test_ops_packages_reexport_their_modules_and_all_resolves(
    package: str, privates: list[str]
) -> None:
    public = importlib.import_module(package)
    names = list(public.__all__)
    assert sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n)) == names
    for name in names:
        assert hasattr(public, name), name
    for private in privates:
        module = importlib.import_module(f"{package}.{private}")
        assert set() == set(module.__all__) - set(names), private


def test_the_service_contract_is_importable() -> None:
    """DESIGN.md: create_app(settings), a router any FastAPI app includes, and settings."""
    from fastapi import APIRouter

    from buttress.config import Settings, load_settings
    from buttress.web import create_app, router

    assert isinstance(router, APIRouter)
    assert callable(create_app)
    assert isinstance(load_settings(_env_file=None), Settings)
