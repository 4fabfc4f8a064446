"""Resilience strategies: circuit breaker, retry, timeout, bulkhead, hedge, fallback,
rate limiter, and the pipeline that composes them.

Each strategy is a decorator for ``def`` and ``async def``, has ``call`` and
``call_async``, reports ``metrics()`` and emits events to listeners.
"""

from buttress.resilience._breaker import CircuitBreaker, CircuitMetrics, CircuitState
from buttress.resilience._bulkhead import Bulkhead, BulkheadMetrics
from buttress.resilience._common import Duration, ExceptionFilter, ResilienceEvent, Strategy
from buttress.resilience._fallback import Fallback, FallbackMetrics, fallback
from buttress.resilience._hedge import Hedge, HedgeMetrics, hedge
from buttress.resilience._pipeline import Pipeline
from buttress.resilience._ratelimit import RateLimitDecision, RateLimiter, RateLimiterMetrics
from buttress.resilience._registry import Registry, default_registry
from buttress.resilience._retry import (
    Retry,
    RetryAttempt,
    RetryBudget,
    RetryMetrics,
    is_testing,
    retry,
    set_testing,
)
from buttress.resilience._timeout import Timeout, TimeoutMetrics, timeout

__all__ = [
    "Bulkhead",
    "BulkheadMetrics",
    "CircuitBreaker",
    "CircuitMetrics",
    "CircuitState",
    "Duration",
    "ExceptionFilter",
    "Fallback",
    "FallbackMetrics",
    "Hedge",
    "HedgeMetrics",
    "Pipeline",
    "RateLimitDecision",
    "RateLimiter",
    "RateLimiterMetrics",
    "Registry",
    "ResilienceEvent",
    "Retry",
    "RetryAttempt",
    "RetryBudget",
    "RetryMetrics",
    "Strategy",
    "Timeout",
    "TimeoutMetrics",
    "default_registry",
    "fallback",
    "hedge",
    "is_testing",
    "retry",
    "set_testing",
    "timeout",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("buttress.resilience._"):
        _obj.__module__ = __name__
del _name, _obj
