"""The memcached tier: a :class:`~buttress.cache._store.Store` over pymemcache.

::

    >>> store = MemcachedStore("memcached://10.0.0.1:11211,10.0.0.2:11211", timeout=0.05)
    >>> store.set_many([("k", b"v", 60.0)])
    >>> store.get_many(["k", "missing"])
    [b'v', None]

Why pymemcache: it is maintained (Pinterest), pure Python (no C library to build,
unlike pylibmc, which needs libmemcached), speaks the text protocol with
``gets``/``cas``/``add``/``touch`` and multi-key get, and has per-socket connect
and I/O timeouts, which a cache tier that must fail fast needs. aiomcache is
async only (the sync cache would need a second client and its logic twice) and
talks to a single server. The store drives pymemcache's single-connection
``Client`` itself:

* a small pool per server, at most ``max_connections`` calls in flight across all
  of them (a caller waits ``timeout`` for a turn, then gets ``TimeoutError``); a
  pooled socket the server closed (a restart) is found at checkout and replaced,
  so only calls in flight during an outage fail;
* keys are spread over several servers by rendezvous hashing, as pymemcache's
  ``HashClient`` spreads them (same node names, same placement), but a server
  that fails is never dropped from the ring: its keys' calls raise, the cache
  above trips the tier's breaker, and no key ever moves to a server where an
  older copy could be read after recovery;
* failures raise as they come (``OSError`` and ``TimeoutError`` from the socket,
  ``pymemcache.exceptions.MemcacheError``); nothing is retried or swallowed.

pymemcache is blocking, so the async methods run the sync ones on a dedicated
thread pool of ``max_connections`` threads (``loop.run_in_executor``). A cancelled
async call stops waiting at once; its thread finishes the call, which ``timeout``
bounds.

What memcached cannot do, and what the store does instead:

* TTLs are whole seconds (rounded up, at least 1 s); above 30 days memcached reads
  the number as a unix time, so such TTLs are sent as one (capped at 2038-01-19,
  the protocol's limit), which assumes the server's clock agrees with ours.
* No pub/sub: ``publish=`` is ignored and :meth:`~MemcachedStore.subscribe` returns
  ``None``; the cache invalidates memcached by deleting.
* No key listing in the normal protocol: :meth:`~MemcachedStore.delete_pattern`
  reads ``lru_crawler metadump hash`` from every server, an O(number of keys)
  admin operation.
* A lease is released with ``gets`` then ``cas`` of an already-expired value, so
  only the token that still holds the lease removes it.
* Tag versions (:meth:`~MemcachedStore.ensure_versions`) are kept alive on a best
  effort basis: memcached can be asked to *set* an expiry (``touch``) but not to
  extend one, nor to report it. A version is stored, or touched, for twice the
  asked TTL, and touched again only when this store's record of the expiry it set
  falls short. Another process may shorten it, and memory pressure may evict it
  at any time; a version that disappears is replaced by a new one, which only
  ever invalidates more entries, never fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

if TYPE_CHECKING:
    from buttress.cache._store import SetItem

__all__ = ["MemcachedStore"]

T = TypeVar("T")

_SCHEME = "memcached://"
_DEFAULT_PORT = 11211
# memcached's default item size limit (-I 1m) covers key, flags and header too:
# a value beyond this is not sent (and any older copy is deleted), rather than
# refused by the server as an error that would count against the tier.
_MAX_VALUE_SIZE = 1024 * 1024 - 512
_RELATIVE_LIMIT = 30 * 24 * 3600
"""Larger expiry values are unix times to memcached."""
_LAST_UNIX_TIME = 2**31 - 1
"""memcached parses expiry as a signed 32-bit number."""
_EXPIRED = -1
"""A negative expiry stores the item already expired: a delete that ``cas`` can guard."""
_ADMIN_TIMEOUT = 5.0
"""Per-read timeout of ``lru_crawler metadump``, which streams the whole key space."""
_DELETE_BATCH = 1000
_DUMP_COMMANDS = (b"lru_crawler metadump hash", b"lru_crawler metadump all")
"""Walk the hash table (a complete listing) where the server can, else the LRU queues."""
_BUSY_RETRIES = 40
_KEPT_LIMIT = 10_000


def _seconds(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"MemcachedStore: {name} must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def _expire(ttl: float | None) -> int:
    """A TTL in seconds as memcached's ``exptime``: 0 for none, else whole seconds,
    rounded up, as a unix time beyond 30 days."""
    if ttl is None:
        return 0
    if not math.isfinite(ttl):
        raise ValueError(f"MemcachedStore: ttl must be a finite number of seconds, got {ttl!r}")
    seconds = max(1, math.ceil(ttl))
    if seconds <= _RELATIVE_LIMIT:
        return seconds
    return min(int(time.time()) + seconds, _LAST_UNIX_TIME)


def _parse_servers(url: str) -> list[tuple[str, int]]:
    if not isinstance(url, str) or not url.startswith(_SCHEME):
        raise ValueError(
            f"MemcachedStore: url must look like memcached://host:port[,host:port...], got {url!r}"
        )
    servers = []
    for part in url[len(_SCHEME) :].split(","):
        spec = part.strip().removeprefix(_SCHEME)
        try:
            parts = urlsplit(_SCHEME + spec)
            host, port = parts.hostname, parts.port or _DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"MemcachedStore: bad server {spec!r} in url {url!r}: {exc}") from None
        if not host or parts.path.strip("/") or parts.query or parts.username:
            raise ValueError(f"MemcachedStore: bad server {spec!r} in url {url!r}")
        servers.append((host, port))
    return servers


def _glob(pattern: str) -> Callable[[bytes], bool]:
    """A matcher of UTF-8 keys for a Redis glob: ``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``.

    Like Redis it works on bytes, so ``?`` is one byte, not one character: a
    pattern selects the same keys in either tier.
    """
    import re  # noqa: PLC0415 - only delete_pattern needs it

    raw = pattern.encode()
    out: list[bytes] = []
    i, n = 0, len(raw)

    def literal(at: int) -> bytes:
        return re.escape(raw[at : at + 1])

    while i < n:
        char = raw[i : i + 1]
        if char == b"*":
            out.append(b".*")
        elif char == b"?":
            out.append(b".")
        elif char == b"\\" and i + 1 < n:
            i += 1
            out.append(literal(i))
        elif char == b"[":
            i += 1
            negate = i < n and raw[i : i + 1] == b"^"
            i += negate
            members: list[bytes] = []
            while i < n and raw[i : i + 1] != b"]":
                if raw[i : i + 1] == b"\\" and i + 1 < n:
                    i += 1
                    members.append(literal(i))
                elif i + 2 < n and raw[i + 1 : i + 2] == b"-" and raw[i + 2 : i + 3] != b"]":
                    low, high = sorted((i, i + 2), key=lambda at: raw[at])
                    members.append(literal(low) + b"-" + literal(high))
                    i += 2
                else:
                    members.append(literal(i))
                i += 1
            if members:
                out.append(b"[" + (b"^" if negate else b"") + b"".join(members) + b"]")
            else:  # "[]" matches nothing, "[^]" any one byte, as in Redis
                out.append(b"." if negate else b"(?!)")
        else:
            out.append(literal(i))
        i += 1
    compiled = re.compile(b"".join(out), re.DOTALL)
    return lambda key: compiled.fullmatch(key) is not None


class _Server:
    """The idle connections to one memcached server."""

    __slots__ = ("_generation", "_idle", "_lock", "_make", "address", "dump_command", "node")

    def __init__(self, address: tuple[str, int], make: Callable[[tuple[str, int]], Any]) -> None:
        self.address = address
        self.node = "%s:%s" % address  # noqa: UP031 - HashClient's node name, for equal placement
        self._make = make
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._generation = 0
        self.dump_command = _DUMP_COMMANDS[0]  # downgraded once if the server refuses it

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
            generation = self._generation
        if client is None or _stale(client.sock):
            if client is not None:
                client.close()
            client = self._make(self.address)
        try:
            yield client
        except BaseException:
            client.close()  # its socket may be mid-reply
            raise
        with self._lock:
            if generation == self._generation:
                self._idle.append(client)
                return
        client.close()  # the pool was closed while it was out

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for client in idle:
            client.close()


def _stale(sock: socket.socket | None) -> bool:
    """Whether an idle connection is unusable: the server closed it, or sent
    something nobody asked for. A healthy idle socket has nothing to read."""
    if sock is None:
        return False  # not connected yet: it connects on first use
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        sock.recv(1, socket.MSG_PEEK)  # b"" (closed) or stray bytes: either way, stale
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)
    return True


class MemcachedStore:
    """A remote cache tier on one or more memcached servers (see the module docstring)."""

    max_key_length: int | None = 250
    """memcached's limit, in bytes of UTF-8."""

    def __init__(
        self,
        url: str = "memcached://127.0.0.1:11211",
        *,
        timeout: float = 0.05,
        connect_timeout: float | None = None,
        max_connections: int = 50,
        name: str = "memcached",
    ) -> None:
        addresses = _parse_servers(url)
        self._timeout = _seconds("timeout", timeout)
        self._max_value_size = _MAX_VALUE_SIZE
        self._connect_timeout = self._timeout
        if connect_timeout is not None:
            self._connect_timeout = _seconds("connect_timeout", connect_timeout)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(
                f"MemcachedStore: max_connections must be an int, got {max_connections!r}"
            )
        if max_connections < 1:
            raise ValueError(
                f"MemcachedStore: max_connections must be >= 1, got {max_connections!r}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"MemcachedStore: name must be a non-empty string, got {name!r}")
        self.name = name
        self.url = url
        self._max_connections = max_connections

        from pymemcache.client.base import Client  # noqa: PLC0415 - optional dependency
        from pymemcache.client.rendezvous import RendezvousHash  # noqa: PLC0415

        make = functools.partial(
            Client,
            connect_timeout=self._connect_timeout,
            timeout=self._timeout,
            no_delay=True,
            allow_unicode_keys=True,
            default_noreply=False,
        )
        self._servers = [_Server(address, make) for address in dict.fromkeys(addresses)]
        self._by_node = {server.node: server for server in self._servers}
        self._ring = RendezvousHash(nodes=[server.node for server in self._servers])
        self._slots = threading.BoundedSemaphore(max_connections)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # key -> monotonic time until which this store last made a tag version live
        self._kept: dict[str, float] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """``MemcachedStore(url, **options)``."""
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"MemcachedStore(name={self.name!r}, url={self.url!r})"

    @property
    def timeout(self) -> float:
        return self._timeout

    # -- routing and connections ---------------------------------------------

    def _server(self, key: str) -> _Server:
        if len(self._servers) == 1:
            return self._servers[0]
        return self._by_node[self._ring.get_node(key)]

    def _by_server(self, keys: Sequence[str]) -> dict[_Server, list[str]]:
        groups: dict[_Server, list[str]] = {}
        for key in keys:
            groups.setdefault(self._server(key), []).append(key)
        return groups

    @contextlib.contextmanager
    def _connection(self, server: _Server) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self._timeout):
            raise TimeoutError(
                f"memcached: no free connection within {self._timeout} s "
                f"(max_connections={self._max_connections})"
            )
        try:
            with server.connection() as client:
                yield client
        finally:
            self._slots.release()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self._max_connections, thread_name_prefix=f"buttress-{self.name}"
                    )
                executor = self._executor
        queued = time.monotonic()
        return await asyncio.get_running_loop().run_in_executor(
            executor, self._in_turn, queued, fn, args
        )

    def _in_turn(self, queued: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # Waiting for a pool thread is waiting for a turn, like waiting for a
        # connection: at most `timeout` in all, or the caller is told so.
        waited = time.monotonic() - queued
        if waited > self._timeout:
            raise TimeoutError(
                f"memcached: no free connection for {waited:.3f}s (timeout {self._timeout}s)"
            )
        return fn(*args)

    # -- reads and writes ----------------------------------------------------

    def _fetch(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for server, group in self._by_server(keys).items():
            with self._connection(server) as client:
                found.update(client.get_many(group))
        return found

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One multi-key ``get`` per server involved."""
        if not keys:
            return []
        found = self._fetch(keys)
        return [found.get(key) for key in keys]

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._run(self.get_many, keys)

    def set_many(
        self, items: Sequence[SetItem], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        """One pipelined ``set`` batch per server and distinct expiry; ``publish`` is ignored
        (memcached has no pub/sub)."""
        latest: dict[str, tuple[bytes, int]] = {}  # a repeated key: the last one wins
        for key, value, ttl in items:
            latest[key] = (value, _expire(ttl))
        batches: dict[tuple[_Server, int], dict[str, bytes]] = {}
        too_large = []
        for key, (value, expire) in latest.items():
            if len(value) > self._max_value_size:
                too_large.append(key)  # memcached would refuse it; that is no outage
                continue
            batches.setdefault((self._server(key), expire), {})[key] = value
        if too_large:
            # Not stored: an older copy must not be served in its place.
            self.delete_many(too_large)
        for (server, expire), values in batches.items():
            with self._connection(server) as client:
                failed = client.set_many(values, expire=expire, noreply=False)
            if failed:
                raise RuntimeError(f"memcached {server.node} did not store {failed!r}")

    async def aset_many(
        self, items: Sequence[SetItem], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        await self._run(self.set_many, items)

    def delete_many(self, keys: Sequence[str], *, publish: tuple[str, bytes] | None = None) -> None:
        """One pipelined ``delete`` batch per server; ``publish`` is ignored."""
        for server, group in self._by_server(keys).items():
            with self._connection(server) as client:
                client.delete_many(group, noreply=False)

    async def adelete_many(
        self, keys: Sequence[str], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        await self._run(self.delete_many, keys)

    def delete_pattern(self, pattern: str) -> int:
        """Delete the keys matching a Redis-style glob; the number of matching keys found.

        Lists every server's keys with ``lru_crawler metadump hash`` (recent 1.6
        releases, 1.6.18 among them; the LRU crawler must be enabled, the default),
        an admin operation that walks the whole key space; raises ``RuntimeError``
        if a server refuses. The hash walk sees every key present throughout it.
        Older servers only have ``metadump all``, which walks the LRU queues and
        can miss a key memcached moves between them meanwhile (one that was just
        read, say): best effort there.
        """
        matches = _glob(pattern)
        deleted = 0
        for server in self._servers:
            keys = [key for key in self._dump_keys(server) if matches(key)]
            for start in range(0, len(keys), _DELETE_BATCH):
                with self._connection(server) as client:
                    client.delete_many(keys[start : start + _DELETE_BATCH], noreply=False)
            deleted += len(keys)
        return deleted

    async def adelete_pattern(self, pattern: str) -> int:
        return await self._run(self.delete_pattern, pattern)

    def _dump_keys(self, server: _Server) -> Iterator[bytes]:
        """The live keys on ``server``, from ``lru_crawler metadump``."""
        reply = b""
        for command in _DUMP_COMMANDS[_DUMP_COMMANDS.index(server.dump_command) :]:
            for attempt in range(_BUSY_RETRIES + 1):
                with socket.create_connection(
                    server.address, timeout=self._connect_timeout
                ) as sock:
                    sock.settimeout(max(self._timeout, _ADMIN_TIMEOUT))
                    sock.sendall(command + b"\r\n")
                    lines = _lines(sock)
                    reply = next(lines)
                    if reply.startswith(b"BUSY") and attempt < _BUSY_RETRIES:
                        # memcached crawls by itself now and then to reclaim expired
                        # items, and runs one crawl at a time: wait for our turn.
                        time.sleep(0.05)
                        continue
                    if not reply.startswith(b"key=") and reply != b"END":
                        break  # refused: an older server, or no crawler at all
                    server.dump_command = command
                    now = time.time()
                    line = reply
                    while line != b"END":
                        key = _dumped_key(line, now)
                        if key is not None:
                            yield key
                        line = next(lines)
                    return
            if b"disabled" in reply:
                break
        answer = reply.decode("ascii", "replace")
        raise RuntimeError(
            f"memcached {server.node} cannot list its keys (lru_crawler metadump answered "
            f"{answer!r}), so delete_pattern cannot work there; is the LRU crawler disabled?"
        )

    # -- tag versions and leases ---------------------------------------------

    def ensure_versions(self, keys: Sequence[str], ttl: float | None) -> list[bytes]:
        """Read the versions (one round trip per server); ``add`` those missing and
        ``touch`` those this store has not yet kept alive long enough (see the module
        docstring for why this is best effort)."""
        if not keys:
            return []
        now = time.monotonic()
        needed = math.inf if ttl is None else now + ttl
        # Twice the asked TTL, so steady callers touch once per TTL, not per call.
        horizon = math.inf if ttl is None else now + 2 * ttl
        expire = _expire(None if ttl is None else 2 * ttl)
        if len(self._kept) > _KEPT_LIMIT:
            self._kept.clear()
        versions: dict[str, bytes] = {}
        pending = list(dict.fromkeys(keys))
        for _ in range(3):
            found = self._fetch(pending)
            missing = []
            for key in pending:
                server = self._server(key)
                version = found.get(key)
                if version is None:
                    version = os.urandom(16)
                    with self._connection(server) as client:
                        created = client.add(key, version, expire=expire, noreply=False)
                    if not created:  # another writer's add came first: read theirs
                        missing.append(key)
                        continue
                    self._kept[key] = horizon
                elif self._kept.get(key, -math.inf) < needed:
                    with self._connection(server) as client:
                        if client.touch(key, expire, noreply=False):
                            self._kept[key] = horizon
                versions[key] = version
            if not missing:
                break
            pending = missing
        else:
            # Keys that kept vanishing between add and get: an unstored version
            # matches no entry, which is the safe answer.
            versions.update((key, os.urandom(16)) for key in missing)
        return [versions[key] for key in keys]

    async def aensure_versions(self, keys: Sequence[str], ttl: float | None) -> list[bytes]:
        return await self._run(self.ensure_versions, keys, ttl)

    def acquire_lease(self, key: str, token: bytes, ttl: float) -> bool:
        with self._connection(self._server(key)) as client:
            return bool(client.add(key, token, expire=_expire(ttl), noreply=False))

    async def aacquire_lease(self, key: str, token: bytes, ttl: float) -> bool:
        return await self._run(self.acquire_lease, key, token, ttl)

    def release_lease(self, key: str, token: bytes) -> None:
        with self._connection(self._server(key)) as client:
            value, cas = client.gets(key)
            if value == token:
                # Replaced by an already-expired value only if nobody wrote it since
                # the gets: a delete guarded by the CAS token.
                client.cas(key, b"", cas, expire=_EXPIRED, noreply=False)

    async def arelease_lease(self, key: str, token: bytes) -> None:
        await self._run(self.release_lease, key, token)

    # -- health, pub/sub, shutdown -------------------------------------------

    def ping(self) -> None:
        """Ask every server for its ``version``."""
        for server in self._servers:
            with self._connection(server) as client:
                client.version()

    async def aping(self) -> None:
        await self._run(self.ping)

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_lost: Callable[[], None],
    ) -> None:
        """memcached has no pub/sub: ``None``."""

    def close(self) -> None:
        """Close the idle connections and stop the thread pool (calls in flight finish).
        The store stays usable: a later call reconnects."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        for server in self._servers:
            server.close()

    async def aclose(self) -> None:
        self.close()


def _lines(sock: socket.socket) -> Iterator[bytes]:
    """The lines a socket sends (``\\n``-terminated, a trailing ``\\r`` dropped)."""
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("memcached closed the connection during metadump")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r")


def _dumped_key(line: bytes, now: float) -> bytes | None:
    """The key of one metadump line (``key=<url-encoded> exp=<unix time or -1> ...``),
    or None if it has expired."""
    fields = dict(field.split(b"=", 1) for field in line.split(b" ") if b"=" in field)
    raw = fields.get(b"key")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        expires = int(fields.get(b"exp", b"-1"))
        if expires != -1 and expires <= now:
            return None
    return unquote_to_bytes(raw)
