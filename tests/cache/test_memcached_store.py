"""MemcachedStore against real memcached servers (see tests/servers.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymemcache.exceptions import MemcacheIllegalInputError

from buttress.cache._memcached import MemcachedStore, _expire, _glob
from buttress.cache._store import Store
from servers import MemcachedServer


@pytest.fixture
def store(memcached_url: str) -> Iterator[MemcachedStore]:
    # Generous: these tests are about behaviour, not speed, and a loaded machine
    # stalls for more than the 50 ms default now and then.
    store = MemcachedStore(memcached_url, timeout=2.0)
    yield store
    store.close()


def _expires_in(server: MemcachedServer, key: str) -> int | None:
    """Seconds until ``key`` expires, as the server holds it (-1: never, None: absent).

    Asked with a meta get (``mg <key> t``), which reads one item exactly, where
    ``lru_crawler metadump`` may miss one that memcached is moving between LRUs.
    """
    reply = server.request(b"mg " + key.encode() + b" t\r\n")
    if reply.startswith(b"EN"):
        return None
    assert reply.startswith(b"HD "), reply
    (remaining,) = (flag[1:] for flag in reply.split()[1:] if flag.startswith(b"t"))
    return int(remaining)


def _holds(server: MemcachedServer, key: str) -> bool:
    return _expires_in(server, key) is not None


# -- the contract -------------------------------------------------------------


def test_is_a_store(store: MemcachedStore) -> None:
    typed: Store = store
    assert isinstance(typed, Store)
    assert store.name == "memcached"
    assert store.max_key_length == 250
    assert typed.subscribe("inval", lambda data: None, lambda: None) is None  # no pub/sub


def test_importing_the_cache_does_not_import_pymemcache() -> None:
    code = "import sys, buttress.cache; assert 'pymemcache' not in sys.modules, 'imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("memcached://127.0.0.1:11211", [("127.0.0.1", 11211)]),
        ("memcached://cache", [("cache", 11211)]),
        ("memcached://a:1,b:2", [("a", 1), ("b", 2)]),
        ("memcached://a:1, memcached://b", [("a", 1), ("b", 11211)]),
        ("memcached://[::1]:11212", [("::1", 11212)]),
    ],
)
def test_urls(url: str, servers: list[tuple[str, int]]) -> None:
    store = MemcachedStore(url)
    assert [server.address for server in store._servers] == servers
    store.close()


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379", "memcached://", "memcached://a:b", "memcached://a:1,", "x"],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        MemcachedStore(url)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"name": 3}, "name"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MemcachedStore("memcached://127.0.0.1:11211", **options)


def test_from_url() -> None:
    store = MemcachedStore.from_url("memcached://127.0.0.1:1", name="l3", timeout=0.2)
    assert (store.name, store.timeout) == ("l3", 0.2)
    assert "l3" in repr(store)


# -- reads and writes ---------------------------------------------------------


def test_round_trip(store: MemcachedStore) -> None:
    assert store.get_many([]) == []
    store.set_many([("a", b"1", None), ("b", b"\x00\r\n\xff", 60.0), ("ключ", b"u", None)])
    assert store.get_many(["a", "missing", "b", "ключ"]) == [b"1", None, b"\x00\r\n\xff", b"u"]
    store.set_many([("a", b"one", None), ("a", b"two", 5.0)])  # the last one wins
    assert store.get_many(["a"]) == [b"two"]
    store.delete_many(["a", "missing"])
    assert store.get_many(["a", "b"]) == [None, b"\x00\r\n\xff"]
    store.delete_many([])
    store.set_many([])
    store.ping()


async def test_round_trip_async(store: MemcachedStore) -> None:
    await store.aset_many([("a", b"1", None), ("b", b"2", 60.0)], publish=("ignored", b"x"))
    assert await store.aget_many(["a", "missing", "b"]) == [b"1", None, b"2"]
    await store.adelete_many(["a"], publish=("ignored", b"x"))
    assert await store.aget_many(["a", "b"]) == [None, b"2"]
    await store.aping()
    results = await asyncio.gather(*(store.aget_many(["b"]) for _ in range(100)))
    assert results == [[b"2"]] * 100
    await store.aclose()


def test_keys_memcached_cannot_take_raise(store: MemcachedStore) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        store.get_many(["has space"])
    with pytest.raises(MemcacheIllegalInputError):
        store.set_many([("x" * 251, b"v", None)])
    store.set_many([("x" * 250, b"v", None)])


# -- expiry -------------------------------------------------------------------


def test_expire_conversion() -> None:
    assert _expire(None) == 0
    assert _expire(1e-9) == 1  # at least a second: 0 would mean "never"
    assert _expire(0.0) == 1
    assert _expire(1.2) == 2
    assert _expire(30 * 86400) == 30 * 86400
    beyond = _expire(30 * 86400 + 1)  # memcached reads this as a unix time
    assert abs(beyond - (time.time() + 30 * 86400 + 1)) < 5
    assert _expire(1e12) == 2**31 - 1
    with pytest.raises(ValueError, match="ttl"):
        _expire(float("nan"))


def test_ttls_reach_the_server(store: MemcachedStore, memcached_server: MemcachedServer) -> None:
    store.set_many([("short", b"v", 9.2), ("forever", b"v", None), ("long", b"v", 40 * 86400.0)])
    assert 8 <= (_expires_in(memcached_server, "short") or 0) <= 10
    assert _expires_in(memcached_server, "forever") == -1
    assert abs((_expires_in(memcached_server, "long") or 0) - 40 * 86400) <= 2
    assert store.get_many(["long"]) == [b"v"]  # not read as a date in 1970


# -- delete_pattern -----------------------------------------------------------


def test_delete_pattern(store: MemcachedStore) -> None:
    matching = [f"user:{i}:profile" for i in range(1500)]
    others = [f"user:{i}:settings" for i in range(200)] + ["users", "xuser:1:profile"]
    store.set_many([(key, b"v", None) for key in matching + others])
    assert store.delete_pattern("user:*:profile") == 1500
    assert store.get_many(matching[:3] + others) == [None] * 3 + [b"v"] * len(others)
    assert store.delete_pattern("user:*:profile") == 0


def test_delete_pattern_special_characters(store: MemcachedStore) -> None:
    keys = ["a[1]", "a1", "a*b", "a?c", "ab", "a\\d", "héllo%wörld"]
    store.set_many([(key, b"v", None) for key in keys])
    assert store.delete_pattern("a\\[1\\]") == 1
    assert store.delete_pattern("a\\*b") == 1
    assert store.delete_pattern("a\\?c") == 1
    assert store.delete_pattern("a\\\\d") == 1
    assert store.delete_pattern("héllo%*") == 1
    assert store.delete_pattern("a[^1]") == 1
    assert store.get_many(keys) == [None, b"v", None, None, None, None, None]


async def test_delete_pattern_async(store: MemcachedStore) -> None:
    await store.aset_many([(f"t:{i}", b"v", None) for i in range(20)] + [("keep", b"v", None)])
    assert await store.adelete_pattern("t:*") == 20
    assert await store.aget_many(["t:1", "keep"]) == [None, b"v"]


def test_delete_pattern_right_after_reads(store: MemcachedStore) -> None:
    """Keys being read move between memcached's LRU queues, where a walk of the queues
    (``metadump all``) misses many of them; the hash walk does not."""
    rounds = [[f"{r}:{i}" for i in range(1000)] for r in range(4)]
    every = [key for keys in rounds for key in keys]
    store.set_many([(key, b"v", None) for key in every])
    for r, keys in enumerate(rounds):
        store.get_many(every)
        time.sleep(0.1)  # memcached's LRU maintainer starts moving the keys read
        store.get_many(every)
        assert store.delete_pattern(f"{r}:*") == len(keys)
        assert store.get_many(keys) == [None] * len(keys)


def test_delete_pattern_falls_back_to_the_lru_walk(
    store: MemcachedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without ``metadump hash`` (before 1.6.10) is listed by ``metadump all``."""
    import buttress.cache._memcached as module

    commands = (b"lru_crawler metadump nosuchmode", b"lru_crawler metadump all")
    monkeypatch.setattr(module, "_DUMP_COMMANDS", commands)
    store._servers[0].dump_command = commands[0]
    store.set_many([("a:1", b"v", None), ("a:2", b"v", None), ("b", b"v", None)])
    assert store.delete_pattern("a:*") == 2
    assert store._servers[0].dump_command == commands[1]  # remembered
    assert store.get_many(["a:1", "b"]) == [None, b"v"]


def test_delete_pattern_without_the_crawler_says_why(tmp_path: Path) -> None:
    with MemcachedServer(tmp_path, arguments=["-o", "no_lru_crawler"]) as server:
        store = MemcachedStore(server.url)
        store.set_many([("a", b"v", None)])
        with pytest.raises(RuntimeError, match="lru_crawler metadump"):
            store.delete_pattern("*")
        assert store.get_many(["a"]) == [b"v"]
        store.close()


_GLOB_KEYS = [
    "a", "b", "ab", "abc", "a.c", "a*c", "a?c", "a[c", "a]c", "a\\c", "a-c", "a^c",
    "abbbc", "hello", "hallo", "hxllo", "hllo", "héllo", "x\ny", "",
]  # fmt: skip
_GLOB_PATTERNS = [
    "*", "a*", "*c", "a?c", "a[bc]*", "a[^b]c", "a[a-c]c", "a[c-a]*", "h[ae]llo", "h*llo",
    "h?llo", "a\\*c", "a\\?c", "a\\[c", "a]c", "a\\\\c", "a[\\]]c", "a[-]c", "a.c", "[]*",
    "[^]*", "x?y", "*b*", "a[!b]c",
]  # fmt: skip


def test_glob_matches_like_redis(redis_url: str) -> None:
    """The same patterns select the same keys in Redis (SCAN MATCH) and here."""
    client = redis.Redis.from_url(redis_url)
    client.mset({key or "\x00empty": b"v" for key in _GLOB_KEYS})
    keys = [key or "\x00empty" for key in _GLOB_KEYS]
    for pattern in _GLOB_PATTERNS:
        in_redis = sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
        matches = _glob(pattern)
        assert sorted(key for key in keys if matches(key.encode())) == in_redis, pattern
    client.close()


# -- tag versions -------------------------------------------------------------


def test_ensure_versions_creates_then_keeps(store: MemcachedStore) -> None:
    assert store.ensure_versions([], 10.0) == []
    first = store.ensure_versions(["t:a", "t:b", "t:a"], 10.0)
    assert len(first[0]) == 16
    assert first[0] == first[2] != first[1]
    assert store.get_many(["t:a"]) == [first[0]]
    assert store.ensure_versions(["t:b", "t:a"], 10.0) == [first[1], first[0]]
    store.delete_many(["t:a"])  # an invalidation: the next version is a new one
    second = store.ensure_versions(["t:a", "t:b"], 10.0)
    assert second[0] not in (first[0], first[1])
    assert second[1] == first[1]


def test_ensure_versions_is_seen_by_other_stores(memcached_url: str) -> None:
    one, two = (
        MemcachedStore(memcached_url, timeout=1.0),
        MemcachedStore(memcached_url, timeout=1.0),
    )
    assert one.ensure_versions(["t"], 10.0) == two.ensure_versions(["t"], 10.0)
    one.close()
    two.close()


def test_ensure_versions_extends_the_expiry(
    store: MemcachedStore, memcached_server: MemcachedServer
) -> None:
    version = store.ensure_versions(["t"], 10.0)
    assert 19 <= (_expires_in(memcached_server, "t") or 0) <= 20  # twice the TTL
    assert store.ensure_versions(["t"], 100.0) == version
    assert 199 <= (_expires_in(memcached_server, "t") or 0) <= 200
    assert store.ensure_versions(["t"], 5.0) == version
    assert 199 <= (_expires_in(memcached_server, "t") or 0) <= 200  # not shortened


def test_ensure_versions_persist(store: MemcachedStore, memcached_server: MemcachedServer) -> None:
    created = store.ensure_versions(["new"], None)
    assert _expires_in(memcached_server, "new") == -1
    store.ensure_versions(["old"], 10.0)
    assert store.ensure_versions(["old"], None) == store.ensure_versions(["old"], None)
    assert _expires_in(memcached_server, "old") == -1  # a finite version made permanent
    assert store.ensure_versions(["new", "old"], 10.0)[0] == created[0]
    assert _expires_in(memcached_server, "new") == -1  # and a permanent one stays so
    assert _expires_in(memcached_server, "old") == -1


async def test_ensure_versions_async(store: MemcachedStore) -> None:
    first = await store.aensure_versions(["x", "y"], 20.0)
    assert await store.aensure_versions(["y", "x"], None) == [first[1], first[0]]


# -- leases -------------------------------------------------------------------


def test_lease_is_exclusive_and_released_only_by_its_token(
    store: MemcachedStore, memcached_server: MemcachedServer
) -> None:
    assert store.acquire_lease("lease", b"me", 5.0) is True
    assert 4 <= (_expires_in(memcached_server, "lease") or 0) <= 5
    assert store.acquire_lease("lease", b"you", 5.0) is False
    store.release_lease("lease", b"you")
    assert store.get_many(["lease"]) == [b"me"]
    store.release_lease("lease", b"me")
    assert store.get_many(["lease"]) == [None]
    assert store.acquire_lease("lease", b"you", 5.0) is True  # free again at once
    store.release_lease("other", b"me")  # nothing held: nothing happens


async def test_lease_async(store: MemcachedStore) -> None:
    assert await store.aacquire_lease("lease", b"me", 5.0) is True
    assert await store.aacquire_lease("lease", b"you", 5.0) is False
    await store.arelease_lease("lease", b"you")
    assert await store.aget_many(["lease"]) == [b"me"]
    await store.arelease_lease("lease", b"me")
    assert await store.aacquire_lease("lease", b"you", 5.0) is True


# -- failures -----------------------------------------------------------------


def test_a_paused_server_times_out(fresh_memcached: MemcachedServer) -> None:
    store = MemcachedStore(fresh_memcached.url, timeout=0.1)
    store.set_many([("a", b"1", None)])
    fresh_memcached.pause()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        store.get_many(["a"])
    assert time.monotonic() - started < 1.0
    fresh_memcached.resume()
    assert store.get_many(["a"]) == [b"1"]
    store.close()


async def test_a_paused_server_times_out_async(fresh_memcached: MemcachedServer) -> None:
    store = MemcachedStore(fresh_memcached.url, timeout=0.1)
    fresh_memcached.pause()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await store.aget_many(["a"])
    assert time.monotonic() - started < 1.0
    fresh_memcached.resume()
    await store.aclose()


def test_errors_raise_while_down_and_recovery_needs_no_restart(
    fresh_memcached: MemcachedServer,
) -> None:
    store = MemcachedStore(fresh_memcached.url, timeout=1.0)
    store.set_many([("a", b"1", None)])  # a pooled connection now exists
    fresh_memcached.kill()
    calls: list[Callable[[], object]] = [
        lambda: store.get_many(["a"]),
        lambda: store.set_many([("a", b"1", None)]),
        lambda: store.ensure_versions(["t"], 1.0),
        lambda: store.acquire_lease("l", b"t", 1.0),
        store.ping,
    ]
    for call in calls:
        with pytest.raises(ConnectionRefusedError):
            call()
    fresh_memcached.start()
    # The first call after the restart succeeds: the dead pooled socket is
    # noticed at checkout, not by failing a request on it.
    assert store.get_many(["a"]) == [None]
    store.close()


def test_a_restart_fails_no_call(fresh_memcached: MemcachedServer) -> None:
    store = MemcachedStore(fresh_memcached.url, timeout=1.0)
    store.set_many([("a", b"1", None)])
    fresh_memcached.stop()
    fresh_memcached.start()
    store.set_many([("a", b"2", None)])
    assert store.get_many(["a"]) == [b"2"]
    store.close()


def test_calls_wait_at_most_timeout_for_a_connection(memcached_url: str) -> None:
    store = MemcachedStore(memcached_url, timeout=0.2, max_connections=1)
    with store._connection(store._servers[0]):  # the only turn, as a call in flight holds it
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no free connection"):
            store.get_many(["a"])
        assert 0.15 < time.monotonic() - started < 1.0
    assert store.get_many(["a"]) == [None]
    store.close()


# -- several servers ----------------------------------------------------------


def test_keys_spread_over_servers_and_stay_put(
    memcached_server_factory: Callable[[], MemcachedServer],
) -> None:
    one, two = memcached_server_factory(), memcached_server_factory()
    store = MemcachedStore(f"{one.url},{two.host}:{two.port}", timeout=1.0)
    keys = [f"k{i}" for i in range(200)]
    store.set_many([(key, key.encode(), None) for key in keys])
    on_one = {key for key in keys if _holds(one, key)}
    on_two = {key for key in keys if _holds(two, key)}
    assert on_one | on_two == set(keys)
    assert not on_one & on_two
    assert len(on_one) > 50
    assert len(on_two) > 50
    assert store.get_many(keys) == [key.encode() for key in keys]
    assert store.delete_pattern("k1*") == len([k for k in keys if k.startswith("k1")])

    two.kill()
    survivor = next(key for key in sorted(on_one) if not key.startswith("k1"))
    assert store.get_many([survivor]) == [survivor.encode()]
    with pytest.raises(ConnectionRefusedError):  # never silently moved to the other server
        store.get_many([sorted(on_two)[0]])
    with pytest.raises(ConnectionRefusedError):
        store.set_many([(sorted(on_two)[0], b"new", None)])
    assert not _holds(one, sorted(on_two)[0])
    store.close()
