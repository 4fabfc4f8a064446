"""The Redis tier: a :class:`~buttress.cache._store.Store` over redis-py.

::

    >>> store = RedisStore("redis://127.0.0.1:6379/0", timeout=0.05)
    >>> store.set_many([("k", b"v", 60.0)], publish=("inval", b"k"))
    >>> store.get_many(["k", "missing"])
    [b'v', None]
    >>> await store.aget_many(["k"])
    [b'v']

Every call but ``delete_pattern`` is one round trip (a pipeline when it sends
several commands), and every round trip is bounded by ``timeout`` (socket reads
and writes, 50 ms by default) and ``connect_timeout``. A pool of at most
``max_connections`` connections is shared by the calling threads; a caller waits
at most ``timeout`` for a free one. redis-py does not retry here: a failure raises
at once (a redis-py ``ConnectionError`` or ``TimeoutError``), and the cache above
counts it and trips the tier's breaker. A pooled connection the server closed (a
restart) is noticed and replaced when it is checked out, so only calls in flight
during an outage fail.

The async methods use ``redis.asyncio``. Its connections belong to the event loop
that opened them, so the store keeps one async client per running loop: a second
``asyncio.run`` (or a new loop per test) gets its own, and a loop's client is
closed when the loop shuts down (``asyncio.run`` and ``asyncio.Runner`` close the
loop's async generators first, which is the hook used). A loop closed without that
step (``loop.close()`` with no ``shutdown_asyncgens()``) is not noticed: its client
and connections stay with the store until ``close()``. Use ``asyncio.run``, or
``await loop.shutdown_asyncgens()`` before closing a loop by hand.

Needs Redis 7.0 or later (``SET ... NX GET`` and ``PEXPIRE ... GT``). redis-py is
imported when a store is made, never by ``import buttress.cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Self, cast
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.client import PubSub
    from redis.commands.core import AsyncScript, Script

    from buttress.cache._store import SetItem

__all__ = ["RedisStore", "RedisSubscription"]

_log = logging.getLogger("buttress.cache")

_SCHEMES = ("redis", "rediss", "unix")
_SCAN_COUNT = 1000

# Delete the key only while it still holds our token: a lease that expired and
# was taken by someone else must not be released by its former holder.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Reconnection backoff of a subscription, and how long its connection may stay
# silent before a PING checks it (a dead peer that sent no FIN is noticed by the
# missing reply, not by TCP keepalive minutes later).
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0
_POLL = 0.05
_KEEPALIVE = 1.0


def _milliseconds(ttl: float, where: str) -> int:
    """A TTL in seconds as whole milliseconds, rounded up, at least 1."""
    if not math.isfinite(ttl):
        raise ValueError(f"RedisStore.{where}: ttl must be a finite number of seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _seconds(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"RedisStore: {name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _decodes(client: Any) -> bool:
    return bool(client.connection_pool.connection_kwargs.get("decode_responses"))


def _redact(url: str) -> str:
    """``url`` with its password masked, for repr and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _LoopClient:
    """The async client of one event loop, and the generator that closes it with the loop."""

    __slots__ = ("client", "closer", "release")

    def __init__(self, client: redis.asyncio.Redis, release: AsyncScript) -> None:
        self.client = client
        self.release = release
        self.closer: AsyncGenerator[None, None] | None = None


class RedisStore:
    """A remote cache tier on Redis (see the module docstring).

    ``client`` / ``async_client`` replace the clients the store would make from
    ``url`` (the store then neither configures nor closes them; an ``async_client``
    is used from whatever loop calls, so it must be that loop's). Subscriptions
    always open their own connection.
    """

    max_key_length: int | None = None
    """Redis keys may be up to 512 MB: no limit worth checking."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        timeout: float = 0.05,
        connect_timeout: float | None = None,
        max_connections: int = 50,
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        name: str = "redis",
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(
                f"RedisStore: url must start with redis://, rediss:// or unix://, got {url!r}"
            )
        self._timeout = _seconds("timeout", timeout)
        self._connect_timeout = (
            self._timeout
            if connect_timeout is None
            else _seconds("connect_timeout", connect_timeout)
        )
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"RedisStore: max_connections must be an int, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"RedisStore: max_connections must be >= 1, got {max_connections!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"RedisStore: name must be a non-empty string, got {name!r}")
        self.name = name
        self.url = url
        self._max_connections = max_connections

        import redis  # noqa: PLC0415 - optional dependency, loaded on use

        for option, given in (("client", client), ("async_client", async_client)):
            if given is not None and _decodes(given):
                raise ValueError(
                    f"RedisStore: {option} must not decode responses (values are bytes)"
                )
        self._owns_client = client is None
        self._client: redis.Redis = (
            client if client is not None else redis.Redis(connection_pool=self._sync_pool())
        )
        self._release: Script = self._client.register_script(_RELEASE_LUA)
        self._async_client = async_client
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient]
        self._loop_clients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._subscriptions: weakref.WeakSet[RedisSubscription] = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """``RedisStore(url, **options)``."""
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"RedisStore(name={self.name!r}, url={_redact(self.url)!r})"

    @property
    def timeout(self) -> float:
        return self._timeout

    # -- connections ---------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        return {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._connect_timeout,
            # No retries in the driver: the breaker above decides what a failure means.
            "retry": Retry(NoBackoff(), 0),
            # RESP2: with RESP3, redis-py 8 turns on "maintenance notifications",
            # which stretch socket timeouts during server maintenance and skip the
            # check that replaces a pooled socket the server has closed.
            "protocol": 2,
        }

    def _sync_pool(self) -> redis.BlockingConnectionPool:
        import redis  # noqa: PLC0415

        return redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self._timeout,  # wait for a free connection this long at most
            **self._options(),
        )

    def _new_async_client(self) -> redis.asyncio.Redis:
        import redis.asyncio  # noqa: PLC0415

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self._timeout,
            **self._options(),
        )
        return redis.asyncio.Redis.from_pool(pool)  # the client owns (and closes) the pool

    async def _bound(self) -> _LoopClient:
        """The running loop's async client, made on first use in that loop."""
        loop = asyncio.get_running_loop()
        bound = self._loop_clients.get(loop)
        if bound is not None:
            return bound
        client = self._async_client
        if client is None:
            client = self._new_async_client()
        bound = _LoopClient(client, client.register_script(_RELEASE_LUA))
        if self._async_client is None:
            # An async generator suspended in its try block: the loop finalizes it
            # at shutdown (shutdown_asyncgens), which closes the client in the
            # loop that owns its connections.
            closer = self._close_with_loop(bound)
            await anext(closer)
            bound.closer = closer
        with self._lock:
            self._loop_clients[loop] = bound
        return bound

    async def _close_with_loop(self, bound: _LoopClient) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            # Finalized in its own loop: at loop shutdown, or by aclose()/close().
            with self._lock:
                for loop, entry in list(self._loop_clients.items()):
                    if entry is bound:
                        del self._loop_clients[loop]
            await bound.client.aclose()

    # -- reads and writes ----------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if len(keys) == 1:
            return [cast("bytes | None", self._client.get(keys[0]))]
        return cast("list[bytes | None]", self._client.mget(keys))

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        client = (await self._bound()).client
        if len(keys) == 1:
            return [cast("bytes | None", await client.get(keys[0]))]
        return cast("list[bytes | None]", await client.mget(keys))

    def set_many(
        self, items: Sequence[SetItem], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        if len(items) == 1 and publish is None:
            key, value, ttl = items[0]
            self._client.set(key, value, px=None if ttl is None else _milliseconds(ttl, "set"))
        elif items or publish is not None:
            pipe = self._client.pipeline(transaction=False)
            _queue_sets(pipe, items, publish)
            pipe.execute()

    async def aset_many(
        self, items: Sequence[SetItem], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        if not items and publish is None:
            return
        client = (await self._bound()).client
        if len(items) == 1 and publish is None:
            key, value, ttl = items[0]
            await client.set(key, value, px=None if ttl is None else _milliseconds(ttl, "set"))
            return
        async with client.pipeline(transaction=False) as pipe:
            _queue_sets(pipe, items, publish)
            await pipe.execute()

    def delete_many(self, keys: Sequence[str], *, publish: tuple[str, bytes] | None = None) -> None:
        if publish is None:
            if keys:
                self._client.unlink(*keys)
            return
        pipe = self._client.pipeline(transaction=False)
        _queue_deletes(pipe, keys, publish)
        pipe.execute()

    async def adelete_many(
        self, keys: Sequence[str], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        if not keys and publish is None:
            return
        client = (await self._bound()).client
        if publish is None:
            await client.unlink(*keys)
            return
        async with client.pipeline(transaction=False) as pipe:
            _queue_deletes(pipe, keys, publish)
            await pipe.execute()

    def delete_pattern(self, pattern: str) -> int:
        """SCAN ``MATCH pattern COUNT 1000`` and UNLINK each batch: never KEYS, which
        blocks the server for the whole keyspace. Keys written during the scan may
        or may not be deleted; keys present throughout are."""
        deleted = 0
        cursor = 0
        while True:
            cursor, keys = self._client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            if keys:
                deleted += self._client.unlink(*keys)
            if cursor == 0:
                return deleted

    async def adelete_pattern(self, pattern: str) -> int:
        client = (await self._bound()).client
        deleted = 0
        cursor = 0
        while True:
            cursor, keys = await client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            if keys:
                deleted += await client.unlink(*keys)
            if cursor == 0:
                return deleted

    # -- tag versions and leases ---------------------------------------------

    def ensure_versions(self, keys: Sequence[str], ttl: float | None) -> list[bytes]:
        """One pipeline of, per key, ``SET key <random> NX GET [PX ttl]`` (get or create)
        and ``PEXPIRE key ttl GT`` (extend, never shorten; a key without expiry keeps
        none) or, for ``ttl=None``, ``PERSIST key``."""
        if not keys:
            return []
        fresh = _fresh_versions(len(keys))
        pipe = self._client.pipeline(transaction=False)
        _queue_ensure(pipe, keys, fresh, ttl)
        return _versions(pipe.execute(), fresh)

    async def aensure_versions(self, keys: Sequence[str], ttl: float | None) -> list[bytes]:
        if not keys:
            return []
        fresh = _fresh_versions(len(keys))
        client = (await self._bound()).client
        async with client.pipeline(transaction=False) as pipe:
            _queue_ensure(pipe, keys, fresh, ttl)
            return _versions(await pipe.execute(), fresh)

    def acquire_lease(self, key: str, token: bytes, ttl: float) -> bool:
        return bool(self._client.set(key, token, nx=True, px=_milliseconds(ttl, "acquire_lease")))

    async def aacquire_lease(self, key: str, token: bytes, ttl: float) -> bool:
        client = (await self._bound()).client
        return bool(await client.set(key, token, nx=True, px=_milliseconds(ttl, "acquire_lease")))

    def release_lease(self, key: str, token: bytes) -> None:
        # A Script runs EVALSHA and loads the script on NOSCRIPT (a restarted or
        # flushed server), so it is sent in full at most once per server.
        self._release(keys=[key], args=[token])

    async def arelease_lease(self, key: str, token: bytes) -> None:
        bound = await self._bound()
        await bound.release(keys=[key], args=[token])

    # -- health, pub/sub, shutdown -------------------------------------------

    def ping(self) -> None:
        self._client.ping()

    async def aping(self) -> None:
        await (await self._bound()).client.ping()

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_lost: Callable[[], None],
    ) -> RedisSubscription:
        """Start a daemon thread delivering ``channel``'s messages (see :class:`RedisSubscription`).

        Waits for the first attempt to subscribe (up to ``connect_timeout`` plus a
        few ``timeout``, at least a second), so a message published after this
        returns is delivered; if Redis is down it returns anyway (``on_lost`` has
        been called) and the thread keeps trying.
        """
        import redis  # noqa: PLC0415

        if self._owns_client:
            pool = redis.ConnectionPool.from_url(self.url, **self._options())
        else:
            existing = self._client.connection_pool
            pool = redis.ConnectionPool(
                connection_class=existing.connection_class, **existing.connection_kwargs
            )
        subscription = RedisSubscription(
            redis.Redis(connection_pool=pool),
            channel,
            on_message,
            on_lost,
            timeout=self._timeout,
            thread_name=f"buttress-{self.name}-subscriber",
        )
        with self._lock:
            self._subscriptions.add(subscription)
        subscription.wait_first_attempt(max(1.0, self._connect_timeout + 4 * self._timeout))
        return subscription

    def close(self) -> None:
        """Stop the subscriptions and close the connections the store opened.

        Async clients of loops that are running (in other threads) are closed on
        their loops; the others close when their loop shuts down. The store stays
        usable: a later call reconnects.
        """
        with self._lock:
            subscriptions = list(self._subscriptions)
            self._subscriptions.clear()
            bound = list(self._loop_clients.items())
        for subscription in subscriptions:
            subscription.close()
        for loop, entry in bound:
            if entry.closer is not None and loop.is_running() and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    asyncio.run_coroutine_threadsafe(_finish(entry.closer), loop)
        if self._owns_client:
            self._client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the running loop's async client too, then as :meth:`close`."""
        loop = asyncio.get_running_loop()
        entry = self._loop_clients.get(loop)
        if entry is not None and entry.closer is not None:
            await entry.closer.aclose()
        # Joining subscriber threads blocks; keep it off the loop.
        await asyncio.to_thread(self.close)


async def _finish(closer: AsyncGenerator[None, None]) -> None:
    """``closer.aclose()`` as a coroutine, for ``run_coroutine_threadsafe``."""
    await closer.aclose()


def _queue_sets(pipe: Any, items: Sequence[SetItem], publish: tuple[str, bytes] | None) -> None:
    for key, value, ttl in items:
        pipe.set(key, value, px=None if ttl is None else _milliseconds(ttl, "set_many"))
    if publish is not None:
        pipe.publish(*publish)


def _queue_deletes(pipe: Any, keys: Sequence[str], publish: tuple[str, bytes]) -> None:
    if keys:
        pipe.unlink(*keys)
    pipe.publish(*publish)


def _fresh_versions(count: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(count)]


def _queue_ensure(pipe: Any, keys: Sequence[str], fresh: list[bytes], ttl: float | None) -> None:
    if ttl is None:
        for key, version in zip(keys, fresh, strict=True):
            pipe.set(key, version, nx=True, get=True)
            pipe.persist(key)
    else:
        ms = _milliseconds(ttl, "ensure_versions")
        for key, version in zip(keys, fresh, strict=True):
            pipe.set(key, version, nx=True, get=True, px=ms)
            pipe.pexpire(key, ms, gt=True)


def _versions(replies: list[Any], fresh: list[bytes]) -> list[bytes]:
    # Replies alternate SET (the previous value, or None if ours was stored) and
    # PEXPIRE/PERSIST.
    return [
        previous if previous is not None else version
        for previous, version in zip(replies[::2], fresh, strict=True)
    ]


class RedisSubscription:
    """A channel subscription served by a daemon thread with its own connection.

    ``on_message(data)`` gets each message's raw bytes, in order, on that thread.
    When the connection fails (or stays silent through a PING) ``on_lost()`` is
    called, the thread reconnects with a backoff from 0.05 s doubling to 1 s,
    resubscribes, and calls ``on_lost()`` again: messages published in between
    were missed. A callback that raises is logged to ``buttress.cache`` and the
    thread carries on. :meth:`close` stops the thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        on_message: Callable[[bytes], None],
        on_lost: Callable[[], None],
        *,
        timeout: float,
        thread_name: str,
    ) -> None:
        self.channel = channel
        self._client = client
        self._on_message = on_message
        self._on_lost = on_lost
        self._timeout = timeout
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._attempted = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "subscribed" if self.subscribed else "closed" if self.closed else "connecting"
        return f"RedisSubscription(channel={self.channel!r}, {state})"

    @property
    def subscribed(self) -> bool:
        """Whether the subscription is in place right now."""
        return self._subscribed.is_set()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def wait_first_attempt(self, timeout: float | None = None) -> bool:
        """Block until the first attempt to subscribe succeeded or failed."""
        return self._attempted.wait(timeout)

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the subscription is in place; False if ``timeout`` ran out first."""
        return self._subscribed.wait(timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Stop delivering and wait (up to ``timeout``) for the thread to end."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = _BACKOFF_MIN
        lost = False
        try:
            while not self._stop.is_set():
                pubsub: PubSub = self._client.pubsub()  # type: ignore[no-untyped-call]
                try:
                    self._subscribe(pubsub)
                    if lost:
                        lost = False
                        self._notify_lost()
                    delay = _BACKOFF_MIN
                    self._listen(pubsub)
                except Exception as exc:
                    self._subscribed.clear()
                    if self._stop.is_set():
                        break
                    _log.debug("subscription to %r lost: %r", self.channel, exc)
                    if not lost:
                        lost = True
                        self._notify_lost()
                    self._attempted.set()
                    self._stop.wait(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                finally:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        finally:
            self._subscribed.clear()
            with contextlib.suppress(Exception):
                self._client.connection_pool.disconnect()

    def _subscribe(self, pubsub: PubSub) -> None:
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + max(self._timeout, _POLL) * 4
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=_POLL)
            if message is not None and message["type"] == "subscribe":
                self._subscribed.set()
                self._attempted.set()
                return
            if message is not None and message["type"] == "message":
                self._deliver(message["data"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SUBSCRIBE confirmation for {self.channel!r}")

    def _listen(self, pubsub: PubSub) -> None:
        heard = time.monotonic()
        pinged = False
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=_POLL)
            now = time.monotonic()
            if message is None:
                if now - heard > 2 * _KEEPALIVE:
                    raise TimeoutError(f"no reply to PING on the {self.channel!r} subscription")
                if now - heard > _KEEPALIVE and not pinged:
                    pubsub.ping()
                    pinged = True
                continue
            heard, pinged = now, False
            if message["type"] == "message":
                self._deliver(message["data"])

    def _deliver(self, data: bytes) -> None:
        try:
            self._on_message(data)
        except Exception:
            _log.exception("on_message callback of the %r subscription failed", self.channel)

    def _notify_lost(self) -> None:
        try:
            self._on_lost()
        except Exception:
            _log.exception("on_lost callback of the %r subscription failed", self.channel)
