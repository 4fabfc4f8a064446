"""The tiered cache's logic, written once for the sync and the async cache.

Every method that does I/O is a generator of effects (see ``_runtime``): the
async :class:`~buttress.cache.Cache` drives it with ``await``, the
:class:`~buttress.cache.SyncCache` with blocking calls. State lives here too,
so the two faces of one cache share their tiers, single-flight, stats and L1.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from buttress.cache._compression import RAW, Compression
from buttress.cache._entry import Entry, decode_entry, encode_entry
from buttress.cache._memory import MemoryCache
from buttress.cache._missing import MISSING
from buttress.cache._runtime import (
    AsyncRuntime,
    Call,
    Flight,
    Gather,
    Logic,
    Sleep,
    Spawn,
    SyncRuntime,
)
from buttress.cache._serializers import MsgpackSerializer, Serializer
from buttress.cache._store import SetItem, Store, Subscription
from buttress.cache._tier import FAILED, RemoteTier, TierCall, TierStats
from buttress.cache._writebehind import WriteBehind
from buttress.clock import Clock, SystemClock
from buttress.errors import SerializationError
from buttress.resilience import CircuitBreaker, CircuitState, ResilienceEvent
from buttress.resilience._common import Duration, check_int, check_seconds, resolve_clock

__all__ = ["CacheCore", "CacheResult", "TieredStats", "WarmReport"]

log = logging.getLogger("buttress.cache")

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.:-]*")
_MEMCACHED_BAD_KEY = re.compile(r"[\x00-\x20\x7f]")
_TAG_PREFIX = "__tag__:"
_LEASE_PREFIX = "__lease__:"
_CHANNEL = "__invalidate__"
_INF = math.inf
_MAX_MARKS = 10_000


@dataclass(frozen=True, slots=True)
class CacheResult:
    """What :meth:`Cache.load` found: the value, whether it is stale, and where it came from.

    ``stale`` is True when the loader failed (or its breaker was open) and a
    value past its TTL, still inside the grace period, was served instead.
    ``source`` is ``"cache"`` (a tier had it), ``"loader"`` (just loaded) or
    ``"stale"`` (served from the grace period).
    """

    value: Any
    stale: bool
    source: str


@dataclass(frozen=True, slots=True)
class TieredStats:
    """A snapshot of a tiered cache: per-tier counters and what the cache itself did."""

    tiers: tuple[TierStats, ...]
    loads: int
    load_errors: int
    stale_served: int
    coalesced: int
    """Callers that waited for another caller's load instead of running the loader."""
    refreshes: int
    write_behind_pending: int
    write_behind_failures: int

    def tier(self, name: str) -> TierStats:
        for stats in self.tiers:
            if stats.name == name:
                return stats
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class WarmReport:
    """What :meth:`Cache.warm` did."""

    loaded: int
    skipped: int
    """Keys already cached (not reloaded)."""
    failed: int
    """Keys whose batch loader failed; the failure is logged."""


def _seconds_or_none(where: str, name: str, value: Duration | None) -> float | None:
    return None if value is None else check_seconds(where, name, value)


class CacheCore:
    """Tiers, options, state and the logic of one tiered cache."""

    def __init__(
        self,
        tiers: Sequence[MemoryCache[Any, Any] | Store],
        *,
        name: str,
        namespace: str,
        ttl: Duration | None,
        ttls: Mapping[str, Duration | None],
        l1_ttl: Duration | None,
        stale_ttl: Duration,
        serializer: Serializer | None,
        compression: Compression | None,
        loader: Callable[[str], Any] | None,
        writer: Callable[[str, Any], Any] | None,
        write_behind: Callable[[list[tuple[str, Any]]], Any] | None,
        write_behind_batch: int,
        write_behind_interval: Duration,
        refresh_ahead: float | None,
        early_expiration: float | None,
        lease: Duration | None,
        coherence: bool,
        tier_failure_threshold: int,
        tier_recovery_timeout: Duration,
        clock: Clock | None,
    ) -> None:
        where = f"Cache({name!r})"
        if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
            raise ValueError(
                f"{where}: namespace must be letters, digits and '_.:-' only, got {namespace!r}"
            )
        self.name = name
        self.prefix = f"{namespace}:" if namespace else ""
        self.clock = resolve_clock(where, clock)
        # Remote tiers compare timestamps written by other processes, so the
        # system clock means wall time here; a test clock is its own timeline.
        self.now: Callable[[], float] = (
            time.time if isinstance(self.clock, SystemClock) else self.clock.now
        )
        self.l1, remotes = self._split_tiers(where, tiers)
        self.default_ttl = _seconds_or_none(where, "ttl", ttl)
        self.ttls = {
            category: _seconds_or_none(where, f"ttls[{category!r}]", value)
            for category, value in dict(ttls).items()
        }
        self.l1_ttl = _seconds_or_none(where, "l1_ttl", l1_ttl)
        self.stale_ttl = check_seconds(where, "stale_ttl", stale_ttl)
        self.serializer = serializer if serializer is not None else MsgpackSerializer()
        self.compression = compression if compression is not None else Compression()
        self.serializer_name = self.serializer.name.encode("ascii")
        self.loader = loader
        self.writer = writer
        if writer is not None and write_behind is not None:
            raise ValueError(f"{where}: give writer= (write-through) or write_behind=, not both")
        self.refresh_ahead = (
            None if refresh_ahead is None else _fraction(where, "refresh_ahead", refresh_ahead)
        )
        self.early_expiration = (
            None
            if early_expiration is None
            else _positive(where, "early_expiration", early_expiration)
        )
        self.lease_ttl = _seconds_or_none(where, "lease", lease)
        self.remotes = self._remote_tiers(
            where, remotes, tier_failure_threshold, tier_recovery_timeout
        )
        for tier in self.remotes:
            tier.breaker.add_listener(self._tier_state_changed, kinds=("state_change",))
        self.authority = self.remotes[0] if self.remotes else None
        self.lease_tier = next(
            (tier for tier in self.remotes if tier.name == "redis"), self.authority
        )
        limits = [s.max_key_length for s in remotes if s.max_key_length is not None]
        self.max_key_bytes = min(limits) if limits else None
        self.strict_keys = any(s.name == "memcached" for s in remotes)
        self.channel = self.prefix + _CHANNEL
        self.origin = uuid.uuid4().hex[:16].encode()
        # Invalidation bookkeeping: a read or load copies a value into a tier
        # only if its key was not invalidated since it started (see unchanged()).
        self.seq = 0
        self.barrier = 0
        self.invalidated: dict[str, int] = {}
        self.tag_index: dict[str, set[str]] = {}
        self.tag_index_size = 0  # entries added since the last pruning, roughly
        self.tag_index_floor = 0
        self.tag_lock = threading.Lock()
        self.refreshing: dict[str, float] = {}  # key -> when its refresh started
        self.loads = 0
        self.load_errors = 0
        self.stale_served = 0
        self.refreshes = 0
        self.sync_runtime = SyncRuntime(self.clock, self._background_failed)
        self.async_runtime = AsyncRuntime(self.clock, self._background_failed)
        self.write_behind = (
            None
            if write_behind is None
            else WriteBehind(
                write_behind,
                batch_size=check_int(where, "write_behind_batch", write_behind_batch, minimum=1),
                interval=check_seconds(
                    where, "write_behind_interval", write_behind_interval, allow_zero=False
                ),
                clock=self.clock,
            )
        )
        self._start_coherence(coherence)

    def _start_coherence(self, coherence: bool) -> None:
        """Listen for other processes' invalidations (when a Redis tier carries them)."""
        self.channel_tier = next((tier for tier in self.remotes if tier.name == "redis"), None)
        self.coherence = coherence
        self.subscription: Subscription | None = None
        # Subscribed even without L1: a message also stops in-flight reads from
        # copying a just-deleted value into an upper tier.
        if coherence and self.channel_tier is not None:
            self.subscription = self.channel_tier.store.subscribe(
                self.channel, self._remote_invalidation, self._channel_lost
            )

    def _remote_tiers(
        self, where: str, stores: list[Store], failure_threshold: int, recovery_timeout: Duration
    ) -> list[RemoteTier]:
        """One breaker per store: a failing tier is skipped, then probed again."""
        threshold = check_int(where, "tier_failure_threshold", failure_threshold, minimum=1)
        recovery = check_seconds(where, "tier_recovery_timeout", recovery_timeout)
        return [
            RemoteTier(
                store,
                CircuitBreaker(
                    f"cache.{self.name}.{store.name}",
                    failure_threshold=threshold,
                    recovery_timeout=recovery,
                    on=Exception,
                    clock=self.clock,
                ),
            )
            for store in stores
        ]

    @staticmethod
    def _split_tiers(
        where: str, tiers: Sequence[MemoryCache[Any, Any] | Store]
    ) -> tuple[MemoryCache[Any, Any] | None, list[Store]]:
        if isinstance(tiers, MemoryCache | str) or not isinstance(tiers, Sequence):
            raise ValueError(f"{where}: tiers must be a list of tiers, got {tiers!r}")
        if not tiers:
            raise ValueError(f"{where}: give at least one tier")
        l1 = tiers[0] if isinstance(tiers[0], MemoryCache) else None
        remotes: list[Store] = []
        for index, tier in enumerate(tiers[1:] if l1 is not None else tiers):
            if isinstance(tier, MemoryCache):
                raise ValueError(f"{where}: a MemoryCache can only be the first tier (L1)")
            if not isinstance(tier, Store):
                raise ValueError(
                    f"{where}: tier {index} must be a MemoryCache or a Store "
                    f"(RedisStore, MemcachedStore), got {tier!r}"
                )
            remotes.append(tier)
        return l1, remotes

    # --- keys, ttls, encoding ----------------------------------------------------

    def full_key(self, key: object) -> str:
        """The stored key of ``key``; a clear error for a key no tier can hold."""
        if type(key) is not str:
            raise TypeError(f"cache key must be a str, got {type(key).__name__}: {key!r}")
        if not key:
            raise ValueError("cache key must not be empty")
        full = self.prefix + key
        limit = self.max_key_bytes
        if limit is not None and len(full) * 4 > limit and len(full.encode()) > limit:
            raise ValueError(
                f"cache key {key[:40]!r}… is {len(full.encode())} bytes with its namespace; "
                f"a tier of this cache (memcached) takes at most {limit}: shorten or hash it"
            )
        if self.strict_keys and _MEMCACHED_BAD_KEY.search(full):
            raise ValueError(
                f"cache key {key!r} contains whitespace or control characters, "
                "which memcached does not allow"
            )
        return full

    def user_key(self, full: str) -> str:
        return full[len(self.prefix) :]

    def tag_key(self, tag: str) -> str:
        return self.prefix + _TAG_PREFIX + tag

    def check_tags(self, tags: Iterable[str] | None) -> tuple[str, ...]:
        if tags is None:
            return ()
        if isinstance(tags, str):
            raise TypeError(f"tags must be a list of strings, not one string: {tags!r}")
        result = tuple(tags)
        for tag in result:
            if type(tag) is not str or not tag:
                raise ValueError(f"a tag must be a non-empty string, got {tag!r}")
            if self.strict_keys and _MEMCACHED_BAD_KEY.search(tag):
                raise ValueError(f"tag {tag!r} contains whitespace or control characters")
            limit = self.max_key_bytes
            if limit is not None and len(self.tag_key(tag).encode()) > limit:
                raise ValueError(
                    f"tag {tag[:40]!r}… is too long: with its namespace it must fit the "
                    f"{limit} bytes a tier of this cache (memcached) allows in a key"
                )
        return result

    def resolve_ttl(self, ttl: Duration | None, category: str | None) -> float | None:
        """Seconds until stale: the call's ``ttl``, else its category's, else the default."""
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int | float | timedelta):
                raise TypeError(f"ttl must be seconds or a timedelta, got {ttl!r}")
            seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
            if math.isnan(seconds) or seconds < 0:
                raise ValueError(f"ttl must be >= 0 seconds, got {ttl!r}")
            return seconds
        if category is not None:
            try:
                return self.ttls[category]
            except KeyError:
                raise ValueError(
                    f"unknown cache category {category!r}; known: {sorted(self.ttls)}"
                ) from None
        return self.default_ttl

    def new_entry(
        self,
        value: object,
        ttl: float | None,
        tags: tuple[tuple[str, bytes], ...],
        delta: float = 0.0,
    ) -> Entry:
        now = self.now()
        fresh_until = _INF if ttl is None else now + ttl
        return Entry(value, fresh_until, fresh_until + self.stale_ttl, now, delta, tags)

    def encode(self, entry: Entry) -> bytes:
        payload = self.compression.compress(self.serializer.dumps(entry.value))
        return encode_entry(entry, self.serializer_name, payload)

    def decode(self, tier: RemoteTier, raw: bytes) -> Entry | None:
        try:
            entry, serializer_name, offset = decode_entry(raw)
            if serializer_name != self.serializer_name:
                raise SerializationError(
                    "a cache entry could not be read",
                    detail=f"written with {serializer_name!r}, read with {self.serializer.name}",
                )
            if raw[offset] == RAW:  # most entries: skip decompress() and a copy
                entry.value = self.serializer.loads(raw[offset + 1 :])
            else:
                entry.value = self.serializer.loads(self.compression.decompress(raw[offset:]))
        except Exception as exc:
            # A corrupt or foreign entry is a miss, not the caller's exception.
            tier.errors += 1
            log.warning("cache tier %s: unreadable entry skipped: %r", tier.name, exc)
            return None
        return entry

    # --- L1 --------------------------------------------------------------------------

    def l1_set(self, full: str, entry: Entry, now: float) -> None:
        l1 = self.l1
        if l1 is None:
            return
        ttl = entry.remaining(now)
        if self.l1_ttl is not None:
            ttl = self.l1_ttl if ttl is None else min(ttl, self.l1_ttl)
        if ttl is not None and ttl <= 0:
            l1.delete(full)
            return
        l1.set(full, entry, ttl=ttl)
        if entry.tags:
            with self.tag_lock:
                for tag, _ in entry.tags:
                    self.tag_index.setdefault(tag, set()).add(full)
                self.tag_index_size += len(entry.tags)
                if self.tag_index_size > 2 * self.tag_index_floor + 1024:
                    self._prune_tag_index(l1)

    def _prune_tag_index(self, l1: MemoryCache[Any, Any]) -> None:
        # The index grows by L1 writes and never shrinks by itself: when it has
        # doubled since the last pruning, drop the keys L1 no longer holds. The
        # doubling makes the scan amortised O(1) per write, and bounds the index
        # to about twice what L1's live entries need.
        for tag in list(self.tag_index):
            alive = {key for key in self.tag_index[tag] if key in l1}
            if alive:
                self.tag_index[tag] = alive
            else:
                del self.tag_index[tag]
        self.tag_index_size = self.tag_index_floor = sum(map(len, self.tag_index.values()))

    def l1_drop_tags(self, tags: Iterable[str]) -> None:
        l1 = self.l1
        if l1 is None:
            return
        with self.tag_lock:
            keys = [key for tag in tags for key in self.tag_index.pop(tag, ())]
        for key in keys:
            l1.delete(key)

    def mark(self, fulls: Iterable[str]) -> None:
        """Record that ``fulls`` changed: copies started before now must not land."""
        self.seq += 1
        seq = self.seq
        invalidated = self.invalidated
        for full in fulls:
            invalidated[full] = seq
        if len(invalidated) > _MAX_MARKS:
            self.mark_all()

    def mark_all(self) -> None:
        """Everything may have changed (tags, patterns, a lost channel)."""
        self.seq += 1
        self.barrier = self.seq
        self.invalidated = {}

    def unchanged(self, full: str, since: int) -> bool:
        """Whether ``full`` was not invalidated after ``since`` (a :attr:`seq` reading)."""
        return self.barrier <= since and self.invalidated.get(full, 0) <= since

    def l1_flush(self) -> None:
        self.mark_all()
        if self.l1 is not None:
            self.l1.clear()
        with self.tag_lock:
            self.tag_index.clear()
            self.tag_index_size = self.tag_index_floor = 0

    # --- coherence ------------------------------------------------------------------

    def message(self, op: bytes, items: Iterable[str] = ()) -> tuple[str, bytes] | None:
        """The invalidation to publish with a write, or None if nobody needs to hear it."""
        if self.channel_tier is None or not self.coherence:
            return None
        return self.channel, b"|".join((self.origin, op, "\0".join(items).encode()))

    def _remote_invalidation(self, data: bytes) -> None:
        try:
            origin, op, body = data.split(b"|", 2)
        except ValueError:
            log.warning("cache %s: malformed invalidation message ignored", self.name)
            return
        if origin == self.origin:
            return
        items = body.decode().split("\0") if body else []
        # Copies racing this message must not land.
        if op == b"k":
            self.mark(items)
        else:
            self.mark_all()
        if self.l1 is None:
            return
        if op == b"k":
            for key in items:
                self.l1.delete(key)
        elif op == b"t":
            self.l1_drop_tags(items)
        elif op == b"p":
            for pattern in items:
                self.l1.delete_pattern(pattern)
        else:
            self.l1_flush()

    def _channel_lost(self) -> None:
        # Invalidations may have been missed: nothing in L1 can be trusted.
        log.warning("cache %s: invalidation channel lost; L1 flushed", self.name)
        self.l1_flush()

    def _tier_state_changed(self, event: ResilienceEvent) -> None:
        state = event.attributes.get("state")
        if state is CircuitState.OPEN:
            log.warning(
                "cache %s: tier %s is failing; serving from the other tiers and loaders",
                self.name,
                event.source,
            )
        elif state is CircuitState.CLOSED:
            log.info("cache %s: tier %s is back", self.name, event.source)

    def _background_failed(self, error: BaseException) -> None:
        log.error("cache %s: background work failed: %r", self.name, error, exc_info=error)

    # --- reads ------------------------------------------------------------------------

    def lookup(self, fulls: Sequence[str]) -> Logic[tuple[dict[str, Entry], dict[str, Entry]]]:
        """Fresh entries of ``fulls``, tier by tier (one call per tier), backfilling above.

        Also returns the stale entries seen (still in their grace period) for
        keys with no fresh entry: stale-if-error serves them when loading fails.
        """
        now = self.now()
        fresh: dict[str, Entry] = {}
        stale: dict[str, Entry] = {}
        l1 = self.l1
        if l1 is not None:
            for full, entry in l1.get_many(fulls).items():
                if now < entry.fresh_until:
                    fresh[full] = entry
                elif now < entry.stale_until:
                    stale[full] = entry
        missing = [full for full in fulls if full not in fresh]
        since = self.seq
        for index, tier in enumerate(self.remotes):
            if not missing:
                break
            if (tier.owed or tier.owed_patterns) and not (yield from self.settle(tier)):
                continue
            raws = yield TierCall(tier, "get_many", missing)
            if raws is FAILED:
                continue
            found: dict[str, tuple[Entry, bytes]] = {}
            tagged = False
            for full, raw in zip(missing, raws, strict=True):
                if raw is None:
                    continue
                entry = self.decode(tier, raw)
                if entry is not None and now < entry.stale_until:
                    found[full] = (entry, raw)
                    tagged = tagged or bool(entry.tags)
            if tagged:
                valid = yield from self.valid_tags([entry for entry, _ in found.values()])
                found = {full: pair for full, pair in found.items() if valid[id(pair[0])]}
            tier.hits += len(found)
            tier.misses += len(missing) - len(found)
            backfill: list[SetItem] = []
            copy_up = index > 0 or l1 is not None
            for full, (entry, raw) in found.items():
                if now < entry.fresh_until:
                    fresh[full] = entry
                    # Not copied when invalidated meanwhile: the copy might
                    # be the value that was just deleted.
                    if copy_up and self.unchanged(full, since):
                        backfill.append((full, raw, entry.remaining(now)))
                        self.l1_set(full, entry, now)
                else:
                    stale.setdefault(full, entry)
            if backfill:
                for upper in self.remotes[:index]:
                    yield TierCall(upper, "set_many", backfill)
            missing = [full for full in missing if full not in fresh]
        return fresh, stale

    def valid_tags(self, entries: Sequence[Entry]) -> Logic[dict[int, bool]]:
        """Whether each entry's tag versions are still current (by ``id(entry)``)."""
        tags = sorted({tag for entry in entries for tag, _ in entry.tags})
        current: dict[str, bytes | None] = {}
        authority = self.authority
        if (
            authority is not None
            and tags
            and (not authority.owed or (yield from self.settle(authority)))
        ):
            versions = yield TierCall(authority, "get_many", [self.tag_key(tag) for tag in tags])
            if versions is not FAILED:
                current = dict(zip(tags, versions, strict=True))
        # Unverifiable (the authority is down) counts as invalid: never serve a
        # value whose tags may have been invalidated.
        return {
            id(entry): all(current.get(tag) == version for tag, version in entry.tags)
            for entry in entries
        }

    def settle(self, tier: RemoteTier) -> Logic[bool]:
        """Replay the deletes ``tier`` missed; False while it still can't take them."""
        keys = list(tier.owed)
        if keys:
            if (yield TierCall(tier, "delete_many", keys)) is FAILED:
                return False
            for key in keys:
                tier.owed.pop(key, None)
        for pattern in list(tier.owed_patterns):
            if (yield TierCall(tier, "delete_pattern", pattern)) is FAILED:
                return False
            tier.owed_patterns.remove(pattern)
        return True

    def tag_versions(
        self, tags: tuple[str, ...], ttl: float | None
    ) -> Logic[tuple[tuple[str, bytes], ...]]:
        """The current version of each tag, read before the value is computed."""
        if not tags:
            return ()
        if self.authority is None:
            return tuple((tag, b"") for tag in tags)
        keep = None if ttl is None else ttl + self.stale_ttl
        versions = yield TierCall(
            self.authority, "ensure_versions", [self.tag_key(tag) for tag in tags], keep
        )
        if versions is FAILED:
            # No authority: record a version no tag can have, so the remote
            # copies are never trusted; L1 still works through its own index.
            return tuple((tag, b"\0unverified") for tag in tags)
        return tuple(zip(tags, versions, strict=True))

    def get(self, full: str) -> Logic[Any]:
        fresh, _ = yield from self.lookup((full,))
        entry = fresh.get(full)
        return MISSING if entry is None else entry.value

    @staticmethod
    def value_of(load: Logic[CacheResult]) -> Logic[Any]:
        return (yield from load).value

    def get_many(self, fulls: Sequence[str]) -> Logic[dict[str, Any]]:
        fresh, _ = yield from self.lookup(fulls)
        return {self.user_key(full): entry.value for full, entry in fresh.items()}

    def load(
        self,
        full: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
    ) -> Logic[CacheResult]:
        """Cache-aside / read-through: the cached value, or the loader's, once per key."""
        fresh, stale = yield from self.lookup((full,))
        entry = fresh.get(full)
        now = self.now()
        if entry is not None:
            if self._refresh_due(entry, now) and now - self.refreshing.get(full, -_INF) > 60:
                # Keyed by start time: a refresh whose task never ran (its loop
                # shut down) doesn't block refreshes of the key for ever.
                self.refreshing[full] = now
                yield Spawn(lambda: self._refresh(full, loader, ttl, tags))
            if not self._expire_early(entry, now):
                return CacheResult(entry.value, False, "cache")
        previous = entry or stale.get(full)
        result: CacheResult = yield Flight(
            full, lambda: self._load_once(full, loader, ttl, tags, previous)
        )
        return result

    def _refresh_due(self, entry: Entry, now: float) -> bool:
        fraction = self.refresh_ahead
        if fraction is None or entry.fresh_until == _INF:
            return False
        return now >= entry.fresh_until - fraction * (entry.fresh_until - entry.created)

    def _expire_early(self, entry: Entry, now: float) -> bool:
        # XFetch (Vattani et al.): recompute before expiry with a probability
        # that rises as expiry nears and with how long the value took to load.
        beta = self.early_expiration
        if beta is None or entry.fresh_until == _INF or entry.delta <= 0:
            return False
        return now - entry.delta * beta * math.log(1.0 - random.random()) >= entry.fresh_until

    def _refresh(
        self, full: str, loader: Callable[[], Any], ttl: float | None, tags: tuple[str, ...]
    ) -> Logic[None]:
        try:
            self.refreshes += 1
            yield Flight(full, lambda: self._load_once(full, loader, ttl, tags, None))
        finally:
            self.refreshing.pop(full, None)

    def _load_once(
        self,
        full: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        previous: Entry | None,
    ) -> Logic[CacheResult]:
        token = None
        if self.lease_ttl is not None and self.lease_tier is not None:
            waited = yield from self._wait_for_lease(full)
            if isinstance(waited, CacheResult):
                return waited
            token = waited
        try:
            result = yield from self._load_and_store(full, loader, ttl, tags, previous)
        except Exception:
            if token is not None:
                yield from self._release_lease(full, token)
            raise
        # Not in `finally`: a logic being closed (cancelled) may not yield; its
        # lease then simply times out.
        if token is not None:
            yield from self._release_lease(full, token)
        return result

    def _load_and_store(
        self,
        full: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        previous: Entry | None,
    ) -> Logic[CacheResult]:
        # Versions are read before the value is computed: an invalidation that
        # lands while loading makes this entry invalid, as it should.
        since = self.seq
        versions = yield from self.tag_versions(tags, ttl)
        start = self.now()
        self.loads += 1
        try:
            value = yield Call(loader)
        except Exception as exc:
            self.load_errors += 1
            if previous is not None and previous.is_usable(self.now()):
                self.stale_served += not previous.is_fresh(self.now())
                log.warning(
                    "cache %s: loader failed for %r, serving the stale value: %r",
                    self.name,
                    self.user_key(full),
                    exc,
                )
                stale = not previous.is_fresh(self.now())
                return CacheResult(previous.value, stale, "stale" if stale else "cache")
            raise
        if ttl != 0:
            entry = self.new_entry(value, ttl, versions, self.now() - start)
            yield from self.store([(full, entry)], since)
        return CacheResult(value, False, "loader")

    def _lease_key(self, full: str) -> str:
        # A digest: fixed length, so a key that fits a tier always has a lease that fits.
        return (
            self.prefix + _LEASE_PREFIX + hashlib.blake2b(full.encode(), digest_size=16).hexdigest()
        )

    def _wait_for_lease(self, full: str) -> Logic[CacheResult | bytes | None]:
        """Take the cross-process load lease, or wait for its holder's value."""
        tier = self.lease_tier
        assert tier is not None
        assert self.lease_ttl is not None
        key = self._lease_key(full)
        token = os.urandom(16)
        deadline = self.now() + self.lease_ttl
        poll = min(0.05, self.lease_ttl / 10)
        waited = False
        while True:
            acquired = yield TierCall(tier, "acquire_lease", key, token, self.lease_ttl)
            if acquired is FAILED:
                return None  # no lease service: load locally rather than wait
            if acquired:
                if waited:
                    # The previous holder may have stored the value and let go
                    # just before this lease was taken.
                    fresh, _ = yield from self.lookup((full,))
                    if full in fresh:
                        yield from self._release_lease(full, token)
                        return CacheResult(fresh[full].value, False, "cache")
                return token
            waited = True
            if self.now() >= deadline:
                return None  # the holder is stuck: load anyway
            yield Sleep(poll)
            fresh, _ = yield from self.lookup((full,))
            if full in fresh:
                return CacheResult(fresh[full].value, False, "cache")

    def _release_lease(self, full: str, token: bytes) -> Logic[None]:
        assert self.lease_tier is not None
        yield TierCall(self.lease_tier, "release_lease", self._lease_key(full), token)

    # --- writes -----------------------------------------------------------------------

    def store(self, items: Sequence[tuple[str, Entry]], since: int | None = None) -> Logic[None]:
        """Write entries to every tier (remote first, then L1) and tell other processes.

        ``since`` is :attr:`seq` from before a loaded value was computed: if its
        key was invalidated since, the value may be out of date and L1 (which
        does not check tag versions) doesn't take it.
        """
        now = self.now()
        if since is None:  # a direct write: reads in flight must not copy older values
            self.mark(full for full, _ in items)
        if self.remotes:
            encoded = [(full, self.encode(entry), entry.remaining(now)) for full, entry in items]
            message = self.message(b"k", (full for full, _ in items))
            for tier in self.remotes:
                done = yield TierCall(
                    tier,
                    "set_many",
                    encoded,
                    publish=message if tier is self.channel_tier else None,
                )
                # A tier that missed the write may still hold the old value.
                (tier.owe if done is FAILED else tier.paid)(full for full, _ in items)
        for full, entry in items:
            if since is None or self.unchanged(full, since):
                self.l1_set(full, entry, now)

    def set_many(
        self,
        items: Sequence[tuple[str, Any]],
        ttl: float | None,
        tags: tuple[str, ...],
    ) -> Logic[None]:
        if self.write_behind is not None:
            self.write_behind.check_open()
        if self.writer is not None:
            for full, value in items:
                yield Call(self.writer, self.user_key(full), value)
        if ttl == 0:
            yield from self.delete([full for full, _ in items])
        else:
            versions = yield from self.tag_versions(tags, ttl)
            entries = [(full, self.new_entry(value, ttl, versions)) for full, value in items]
            yield from self.store(entries)
        if self.write_behind is not None:
            yield from self.write_behind.add([(self.user_key(f), v) for f, v in items])

    def delete(self, fulls: Sequence[str]) -> Logic[None]:
        self.mark(fulls)  # reads and loads in flight must not copy old values back
        if self.l1 is not None:
            for full in fulls:
                self.l1.delete(full)
        message = self.message(b"k", fulls)
        for tier in self.remotes:
            done = yield TierCall(
                tier,
                "delete_many",
                list(fulls),
                publish=message if tier is self.channel_tier else None,
            )
            if done is FAILED:
                tier.owe(fulls)

    def invalidate_tags(self, tags: tuple[str, ...]) -> Logic[None]:
        """Drop every entry carrying one of ``tags``, on every tier, in every process."""
        self.mark_all()
        self.l1_drop_tags(tags)
        if self.authority is not None:
            # Deleting a tag's version invalidates every entry that recorded it:
            # one atomic step per tag, and no index of entries to grow.
            tag_keys = [self.tag_key(tag) for tag in tags]
            done = yield TierCall(
                self.authority,
                "delete_many",
                tag_keys,
                publish=self.message(b"t", tags) if self.authority is self.channel_tier else None,
            )
            if done is FAILED:
                self.authority.owe(tag_keys)
            if self.channel_tier is not None and self.channel_tier is not self.authority:
                yield TierCall(
                    self.channel_tier, "delete_many", [], publish=self.message(b"t", tags)
                )

    def delete_pattern(self, pattern: str) -> Logic[int]:
        if type(pattern) is not str or not pattern:
            raise ValueError(f"pattern must be a non-empty glob string, got {pattern!r}")
        full = self.prefix + pattern
        self.mark_all()
        deleted = self.l1.delete_pattern(full) if self.l1 is not None else 0
        for tier in self.remotes:
            count = yield TierCall(tier, "delete_pattern", full)
            if count is FAILED:
                tier.owe_pattern(full)
            else:
                deleted = max(deleted, count)
        if self.channel_tier is not None:
            yield TierCall(self.channel_tier, "delete_many", [], publish=self.message(b"p", [full]))
        return deleted

    def clear(self) -> Logic[None]:
        self.l1_flush()
        pattern = _glob_escape(self.prefix) + "*"
        for tier in self.remotes:
            if (yield TierCall(tier, "delete_pattern", pattern)) is FAILED:
                tier.owe_pattern(pattern)
        if self.channel_tier is not None:
            yield TierCall(self.channel_tier, "delete_many", [], publish=self.message(b"c"))

    def contains(self, full: str) -> Logic[bool]:
        fresh, _ = yield from self.lookup((full,))
        return full in fresh

    def write_around(self, full: str, value: Any) -> Logic[None]:
        if self.writer is None:
            raise ValueError(f"Cache({self.name!r}): write_around needs writer= on the cache")
        yield Call(self.writer, self.user_key(full), value)
        yield from self.delete([full])

    def warm(
        self,
        fulls: Sequence[str],
        loader: Callable[[list[str]], Any],
        *,
        ttl: float | None,
        tags: tuple[str, ...],
        batch_size: int,
        concurrency: int,
        skip_cached: bool,
    ) -> Logic[WarmReport]:
        batches = [fulls[i : i + batch_size] for i in range(0, len(fulls), batch_size)]
        reports: list[WarmReport] = yield Gather(
            [
                functools.partial(self._warm_batch, batch, loader, ttl, tags, skip_cached)
                for batch in batches
            ],
            concurrency,
        )
        return WarmReport(
            sum(r.loaded for r in reports),
            sum(r.skipped for r in reports),
            sum(r.failed for r in reports),
        )

    def _warm_batch(
        self,
        fulls: Sequence[str],
        loader: Callable[[list[str]], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        skip_cached: bool,
    ) -> Logic[WarmReport]:
        missing = list(fulls)
        if skip_cached:
            fresh, _ = yield from self.lookup(fulls)
            missing = [full for full in fulls if full not in fresh]
        if not missing:
            return WarmReport(0, len(fulls), 0)
        try:
            values = yield Call(loader, [self.user_key(full) for full in missing])
            if not isinstance(values, Mapping):
                raise TypeError(
                    f"a warm loader must return a mapping of key to value, got {type(values)!r}"
                )
        except Exception as exc:
            log.error("cache %s: warming %d keys failed: %r", self.name, len(missing), exc)
            return WarmReport(0, len(fulls) - len(missing), len(missing))
        try:
            items = [(self.full_key(key), value) for key, value in values.items()]
        except (TypeError, ValueError) as exc:
            log.error("cache %s: a warm loader returned a bad key: %s", self.name, exc)
            return WarmReport(0, len(fulls) - len(missing), len(missing))
        yield from self.set_many(items, ttl, tags)
        return WarmReport(len(items), len(fulls) - len(missing), len(missing) - len(items))

    # --- stats ------------------------------------------------------------------------

    def stats(self) -> TieredStats:
        tiers: list[TierStats] = []
        if self.l1 is not None:
            l1 = self.l1.stats()
            tiers.append(TierStats("memory", l1.hits, l1.misses, 0, l1.hits + l1.misses, 0.0, True))
        tiers += [tier.stats() for tier in self.remotes]
        wb = self.write_behind
        return TieredStats(
            tuple(tiers),
            self.loads,
            self.load_errors,
            self.stale_served,
            self.sync_runtime.flights.coalesced + self.async_runtime.coalesced,
            self.refreshes,
            0 if wb is None else wb.pending,
            0 if wb is None else wb.failures,
        )

    def hot_keys(self, n: int) -> list[tuple[str, int]]:
        if self.l1 is None:
            return []
        prefix = self.prefix
        return [
            (key[len(prefix) :], count)
            for key, count in self.l1.hot_keys(n)
            if isinstance(key, str) and key.startswith(prefix)
        ]

    def close_subscription(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _fraction(where: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{where}: {name} must be a fraction in (0, 1), got {value!r}")
    return float(value)


def _positive(where: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < _INF:
        raise ValueError(f"{where}: {name} must be a positive number, got {value!r}")
    return float(value)
