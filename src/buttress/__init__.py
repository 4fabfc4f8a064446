"""buttress: the production machinery of a Python backend, in one piece.

The public API is re-exported here; everything is defined in its own module.

>>> from buttress import CircuitBreaker, retry, Pipeline
"""

from buttress._version import __version__
from buttress.errors import (
    BulkheadFullError,
    ButtressError,
    CircuitOpenError,
    OperationTimeoutError,
    RateLimitExceeded,
    Severity,
    classify,
    to_problem,
)
from buttress.resilience import (
    Bulkhead,
    CircuitBreaker,
    CircuitMetrics,
    CircuitState,
    Fallback,
    Hedge,
    Pipeline,
    RateLimiter,
    Registry,
    ResilienceEvent,
    Retry,
    RetryBudget,
    Timeout,
    default_registry,
    fallback,
    hedge,
    retry,
    timeout,
)

__all__ = [
    "Bulkhead",
    "BulkheadFullError",
    "ButtressError",
    "CircuitBreaker",
    "CircuitMetrics",
    "CircuitOpenError",
    "CircuitState",
    "Fallback",
    "Hedge",
    "OperationTimeoutError",
    "Pipeline",
    "RateLimitExceeded",
    "RateLimiter",
    "Registry",
    "ResilienceEvent",
    "Retry",
    "RetryBudget",
    "Severity",
    "Timeout",
    "__version__",
    "classify",
    "default_registry",
    "fallback",
    "hedge",
    "retry",
    "timeout",
    "to_problem",
]
