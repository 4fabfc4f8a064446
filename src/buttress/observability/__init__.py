"""Observability: structured logs with secret redaction, Prometheus metrics, health checks.

Nothing here imports FastAPI: the web service and plain applications use the same
pieces.

>>> from buttress.observability import configure_logging, Metrics, Health
>>> configure_logging(level="INFO")          # JSON lines, secrets removed
>>> metrics = Metrics()                      # reads every registered primitive
>>> health = Health(timeout=2.0)
"""

from buttress.observability._health import (
    ComponentHealth,
    Health,
    HealthCheck,
    HealthReport,
    HealthStatus,
    breakers_check,
    cache_check,
    queue_check,
)
from buttress.observability._logging import (
    REDACTED,
    RedactSecrets,
    configure_logging,
    current_request_id,
    get_logger,
    reset_request_id,
    set_request_id,
)
from buttress.observability._metrics import Metrics

__all__ = [
    "REDACTED",
    "ComponentHealth",
    "Health",
    "HealthCheck",
    "HealthReport",
    "HealthStatus",
    "Metrics",
    "RedactSecrets",
    "breakers_check",
    "cache_check",
    "configure_logging",
    "current_request_id",
    "get_logger",
    "queue_check",
    "reset_request_id",
    "set_request_id",
]
