"""Request and response bodies of the ops API (they are its OpenAPI schema)."""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from buttress._jsonable import MAX_DEPTH
from buttress.cache import TieredStats
from buttress.config import BreakerSettings
from buttress.resilience import CircuitMetrics
from buttress.tasks import QueueStats, Task
from buttress.tasks._views import stats_view, task_view

PriorityName = Literal["critical", "high", "normal", "low", "bulk"]
StatusName = Literal["queued", "scheduled", "running", "succeeded", "failed", "dead", "cancelled"]
FinalStatus = Literal["succeeded", "dead", "cancelled"]
Name = Field(min_length=1, max_length=200, pattern=r"^[\w.:\-]+$")


class Body(BaseModel):
    """A request body: unknown fields are refused, so a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


def _shallow(value: Any) -> Any:
    """Refuse JSON nested deeper than ``MAX_DEPTH``: every reader of it would pay."""
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, list | dict)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return value
    raise ValueError(f"nested deeper than {MAX_DEPTH} levels")


JsonValue = Annotated[Any, AfterValidator(_shallow)]
"""Any JSON a client sends, within a sane nesting depth."""


class Snapshot(BaseModel):
    """A response read off a primitive's metrics dataclass, field by field."""

    model_config = ConfigDict(from_attributes=True)


def _finite(value: float | None) -> float | None:
    # JSON has no Infinity: a forced-open breaker's wait is "until reset", sent as null.
    return value if value is None or math.isfinite(value) else None


# --- resilience ------------------------------------------------------------------------


class BreakerOut(BaseModel):
    name: str
    state: Literal["closed", "open", "half_open"]
    calls: int
    successes: int
    failures: int
    rejections: int
    slow_calls: int
    failure_rate: float
    consecutive_failures: int
    retry_after: float | None = Field(description="Seconds until a probe; null when forced open")
    forced_open: bool
    disabled: bool

    @classmethod
    def of(cls, m: CircuitMetrics) -> BreakerOut:
        return cls(
            name=m.name,
            state=m.state.value,
            calls=m.calls,
            successes=m.successes,
            failures=m.failures,
            rejections=m.rejections,
            slow_calls=m.slow_calls,
            failure_rate=m.failure_rate,
            consecutive_failures=m.consecutive_failures,
            retry_after=_finite(m.retry_after),
            forced_open=m.forced_open,
            disabled=m.disabled,
        )


class BreakerIn(BreakerSettings):
    """Register a breaker from configuration (the same fields as ``BUTTRESS_BREAKERS__…``)."""

    name: str = Name


class BulkheadOut(Snapshot):
    name: str
    max_concurrent: int
    max_queue: int
    active: int
    queued: int
    rejected: int


class RateLimiterOut(Snapshot):
    name: str
    rate: float
    per: float
    burst: int
    allowed: int
    rejected: int
    keys: int


# --- cache -------------------------------------------------------------------------------


class TierOut(Snapshot):
    name: str
    hits: int
    misses: int
    errors: int
    calls: int
    latency_seconds: float
    available: bool


class CacheStatsOut(BaseModel):
    name: str
    tiers: list[TierOut]
    loads: int
    load_errors: int
    stale_served: int
    coalesced: int
    refreshes: int
    write_behind_pending: int
    write_behind_failures: int

    @classmethod
    def of(cls, name: str, stats: TieredStats) -> CacheStatsOut:
        return cls.model_validate({**dataclasses.asdict(stats), "name": name})


CacheKey = Annotated[str, Field(min_length=1, max_length=512)]
TaskIdItem = Annotated[str, Field(min_length=1, max_length=64)]
Tag = Annotated[str, Field(min_length=1, max_length=200)]
Tags: Any = Field(default_factory=list, max_length=100)
Ttl = Field(default=None, gt=0, le=31_536_000, description="Seconds; null: the cache's default")


class CacheEntryOut(BaseModel):
    key: str
    value: Any


class CacheSetIn(Body):
    value: JsonValue
    ttl: float | None = Ttl
    tags: list[Tag] = Tags


class CacheKeysIn(Body):
    keys: list[CacheKey] = Field(min_length=1, max_length=1000)


class CacheBatchOut(BaseModel):
    values: dict[str, Any]
    missing: list[str]


class CacheBatchSetIn(Body):
    items: dict[CacheKey, JsonValue] = Field(min_length=1, max_length=1000)
    ttl: float | None = Ttl
    tags: list[Tag] = Tags


class CacheInvalidateIn(Body):
    """Give tags, a glob pattern (``user:*``), or both."""

    tags: list[Tag] = Tags
    pattern: str | None = Field(default=None, min_length=1, max_length=512)


class CountOut(BaseModel):
    count: int


class WarmOut(BaseModel):
    warmed: int
    missing: list[str]


# --- tasks -------------------------------------------------------------------------------


class TaskIn(Body):
    name: str = Field(min_length=1, max_length=200)
    args: list[JsonValue] = Field(default_factory=list, max_length=1000)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict, max_length=1000)
    priority: PriorityName | None = None
    delay: float | None = Field(default=None, ge=0, le=31_536_000)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    metadata: dict[str, JsonValue] = Field(default_factory=dict, max_length=100)
    dedup_key: str | None = Field(default=None, min_length=1, max_length=200)
    retries: int | None = Field(default=None, ge=0, le=100)
    timeout: float | None = Field(default=None, gt=0, le=86_400)


class TaskErrorOut(BaseModel):
    type: str
    message: str


class TaskOut(BaseModel):
    id: str
    name: str
    status: StatusName
    priority: PriorityName
    owner: str | None
    attempts: int
    max_retries: int
    args: list[Any]
    kwargs: dict[str, Any]
    tags: list[str]
    metadata: dict[str, Any]
    progress: float
    progress_message: str
    error: TaskErrorOut | None
    enqueued_at: float
    eta: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        return cls.model_validate(task_view(task))


class TaskPageOut(BaseModel):
    tasks: list[TaskOut]
    cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class DeadLetterGroupOut(BaseModel):
    name: str
    error_type: str
    count: int


class QueueStatsOut(BaseModel):
    by_status: dict[StatusName, int]
    by_priority: dict[PriorityName, int]
    finished_last_minute: int
    mean_wait_seconds: float | None
    mean_run_seconds: float | None
    oldest_waiting_seconds: float | None
    dead_letters: list[DeadLetterGroupOut]

    @classmethod
    def of(cls, stats: QueueStats) -> QueueStatsOut:
        return cls.model_validate(stats_view(stats))


class ReprocessIn(Body):
    ids: list[TaskIdItem] | None = Field(default=None, min_length=1, max_length=10_000)
    name: str | None = Field(default=None, min_length=1, max_length=200)


class CleanupIn(Body):
    older_than: float = Field(ge=0, le=315_360_000, description="Seconds since they finished")
    statuses: list[FinalStatus] = Field(
        default_factory=lambda: list[FinalStatus](["succeeded", "dead", "cancelled"]),
        min_length=1,
    )


class BulkIn(Body):
    """A bulk action on ``ids``, or on every task matching the filter (one is required)."""

    action: Literal["cancel", "retry", "delete"]
    ids: list[TaskIdItem] | None = Field(default=None, min_length=1, max_length=10_000)
    status: list[StatusName] | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    tag: str | None = Field(default=None, min_length=1, max_length=200)
    owner: str | None = Field(default=None, min_length=1, max_length=200)


class BulkOut(BaseModel):
    action: str
    count: int
    ids: list[str]


# --- health --------------------------------------------------------------------------------


class LiveOut(BaseModel):
    status: Literal["ok"]


class ComponentOut(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    latency_seconds: float
    detail: Any = None
    error: str | None = None


class ReadyOut(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    components: dict[str, ComponentOut]


class ProblemOut(BaseModel):
    """RFC 9457 problem details, the body of every error."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    error_id: str
    request_id: str | None = None
    retryable: bool
    retry_after: int | None = None
    errors: list[dict[str, Any]] | None = None
