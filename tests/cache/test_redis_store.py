"""RedisStore against a real redis-server (see tests/servers.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from buttress.cache._redis import RedisStore, RedisSubscription, _milliseconds
from buttress.cache._store import Store, Subscription
from servers import RedisServer, ServerError, reap_orphans


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    # Generous: these tests are about behaviour, not speed, and a loaded machine
    # stalls for more than the 50 ms default now and then.
    store = RedisStore(redis_url, timeout=2.0)
    yield store
    store.close()


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client to look at what the store did."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _calls(admin: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, e.g. ``{"mget": 1}``."""
    stats: dict[str, Any] = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _reset_stats(admin: redis.Redis) -> None:
    admin.config_resetstat()


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- the contract -------------------------------------------------------------


def test_is_a_store(store: RedisStore) -> None:
    typed: Store = store  # mypy checks the protocol; isinstance the names
    assert isinstance(typed, Store)
    assert store.name == "redis"
    assert store.max_key_length is None


def test_importing_the_cache_does_not_import_redis() -> None:
    code = "import sys, buttress.cache; assert 'redis' not in sys.modules, 'redis imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": 2.5}, "max_connections"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RedisStore("redis://127.0.0.1:6379/0", **options)


def test_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="url"):
        RedisStore("http://127.0.0.1:6379")


def test_a_client_that_decodes_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="client"):
        RedisStore(redis_url, client=client)
    client.close()


def test_from_url_and_repr_hide_the_password(redis_url: str) -> None:
    store = RedisStore.from_url("redis://user:s3cret@127.0.0.1:6379/0", name="l2")
    assert store.name == "l2"
    assert "s3cret" not in repr(store)
    assert "***" in repr(store)
    store.close()


# -- reads and writes ---------------------------------------------------------


def test_round_trip(store: RedisStore) -> None:
    assert store.get_many([]) == []
    store.set_many([("a", b"1", None), ("b", b"\x00\xff", 60.0)])
    assert store.get_many(["a", "missing", "b"]) == [b"1", None, b"\x00\xff"]
    assert store.get_many(["b"]) == [b"\x00\xff"]
    store.set_many([("a", b"one", None)])
    assert store.get_many(["a"]) == [b"one"]
    store.delete_many(["a", "missing"])
    assert store.get_many(["a", "b"]) == [None, b"\x00\xff"]
    store.delete_many([])
    store.set_many([])


async def test_round_trip_async(store: RedisStore) -> None:
    assert await store.aget_many([]) == []
    await store.aset_many([("a", b"1", None), ("b", b"2", 60.0)])
    await store.aset_many([("c", b"3", None)])
    assert await store.aget_many(["a", "missing", "b"]) == [b"1", None, b"2"]
    assert await store.aget_many(["c"]) == [b"3"]
    await store.adelete_many(["a"])
    assert await store.aget_many(["a", "b"]) == [None, b"2"]
    await store.aping()


def test_many_keys_are_one_mget(store: RedisStore, admin: redis.Redis) -> None:
    store.set_many([(f"k{i}", b"v", None) for i in range(5)])
    _reset_stats(admin)
    assert store.get_many([f"k{i}" for i in range(5)]) == [b"v"] * 5
    assert store.get_many(["k0"]) == [b"v"]
    calls = _calls(admin)
    assert calls.get("mget") == 1
    assert calls.get("get") == 1


def test_ttls_become_pexpire(store: RedisStore, admin: redis.Redis) -> None:
    store.set_many([("short", b"v", 1.5), ("frac", b"v", 2.0001), ("forever", b"v", None)])
    assert 1000 < admin.pttl("short") <= 1500
    assert 1900 < admin.pttl("frac") <= 2001  # rounded up to whole milliseconds
    assert admin.pttl("forever") == -1
    store.set_many([("tiny", b"v", 1e-9)])  # at least 1 ms, never "no expiry"
    assert admin.pttl("tiny") in (-2, 0, 1)


async def test_ttls_become_pexpire_async(store: RedisStore, admin: redis.Redis) -> None:
    await store.aset_many([("a", b"v", 30.0), ("b", b"v", None)])
    assert 29000 < admin.pttl("a") <= 30000
    assert admin.pttl("b") == -1


def test_ttls_round_up_to_milliseconds() -> None:
    assert _milliseconds(2.0001, "set") == 2001
    assert _milliseconds(0.5, "set") == 500
    assert _milliseconds(1e-9, "set") == 1  # never 0, which Redis refuses
    assert _milliseconds(0.0, "set") == 1


def test_infinite_ttl_is_refused(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.set_many([("a", b"v", float("inf"))])


def test_set_and_delete_publish(store: RedisStore, admin: redis.Redis) -> None:
    pubsub = admin.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("inval")
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
    store.set_many([("a", b"1", None), ("b", b"2", None)], publish=("inval", b"set a b"))
    store.set_many([("c", b"3", None)], publish=("inval", b"set c"))
    store.delete_many(["a"], publish=("inval", b"del a"))
    store.delete_many([], publish=("inval", b"clear"))
    received = [pubsub.get_message(timeout=1.0) for _ in range(4)]
    assert [m["data"] for m in received if m] == [b"set a b", b"set c", b"del a", b"clear"]
    assert store.get_many(["a", "b", "c"]) == [None, b"2", b"3"]
    pubsub.close()


async def test_set_and_delete_publish_async(store: RedisStore, admin: redis.Redis) -> None:
    pubsub = admin.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("inval")
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
    await store.aset_many([("a", b"1", 5.0)], publish=("inval", b"set"))
    await store.adelete_many(["a"], publish=("inval", b"del"))
    received = [pubsub.get_message(timeout=1.0) for _ in range(2)]
    assert [m["data"] for m in received if m] == [b"set", b"del"]
    assert await store.aget_many(["a"]) == [None]
    pubsub.close()


# -- delete_pattern -----------------------------------------------------------


def test_delete_pattern_scans_in_batches(store: RedisStore, admin: redis.Redis) -> None:
    matching = [f"user:{i}:profile" for i in range(2500)]
    others = [f"user:{i}:settings" for i in range(300)] + ["users", "user:", "xuser:1:profile"]
    store.set_many([(key, b"v", None) for key in matching + others])
    _reset_stats(admin)
    assert store.delete_pattern("user:*:profile") == 2500
    assert admin.dbsize() == len(others)
    calls = _calls(admin)
    assert "keys" not in calls
    assert calls["scan"] >= 3  # COUNT 1000 over ~2800 keys: several cursor steps
    assert store.delete_pattern("user:*:profile") == 0


def test_delete_pattern_special_characters(store: RedisStore, admin: redis.Redis) -> None:
    keys = ["a[1]", "a1", "a*b", "a?c", "ab", "a\\d", "héllo wörld"]
    store.set_many([(key, b"v", None) for key in keys])
    assert store.delete_pattern("a\\[1\\]") == 1
    assert store.delete_pattern("a\\*b") == 1
    assert store.delete_pattern("a\\?c") == 1
    assert store.delete_pattern("a\\\\d") == 1
    assert store.delete_pattern("héllo *") == 1
    assert sorted(admin.keys()) == [b"a1", b"ab"]
    assert store.delete_pattern("a[^1]") == 1
    assert admin.keys() == [b"a1"]


async def test_delete_pattern_async(store: RedisStore, admin: redis.Redis) -> None:
    await store.aset_many([(f"t:{i}", b"v", None) for i in range(1200)] + [("keep", b"v", None)])
    assert await store.adelete_pattern("t:*") == 1200
    assert admin.keys() == [b"keep"]


# -- tag versions -------------------------------------------------------------


def test_ensure_versions_creates_then_keeps(store: RedisStore, admin: redis.Redis) -> None:
    assert store.ensure_versions([], 10.0) == []
    first = store.ensure_versions(["t:a", "t:b", "t:a"], 10.0)
    assert len(first[0]) == 16
    assert first[0] == first[2] != first[1]
    assert admin.get("t:a") == first[0]
    assert store.ensure_versions(["t:b", "t:a"], 10.0) == [first[1], first[0]]
    admin.delete("t:a")  # an invalidation: the next version is a new one
    second = store.ensure_versions(["t:a", "t:b"], 10.0)
    assert second[0] not in (first[0], first[1])
    assert second[1] == first[1]


def test_ensure_versions_extends_never_shortens(store: RedisStore, admin: redis.Redis) -> None:
    version = store.ensure_versions(["t"], 10.0)
    assert 9000 < admin.pttl("t") <= 10000
    assert store.ensure_versions(["t"], 100.0) == version
    assert 99000 < admin.pttl("t") <= 100000
    assert store.ensure_versions(["t"], 5.0) == version
    assert 99000 < admin.pttl("t") <= 100000


def test_ensure_versions_persist(store: RedisStore, admin: redis.Redis) -> None:
    created = store.ensure_versions(["new"], None)
    assert admin.pttl("new") == -1
    store.ensure_versions(["old"], 10.0)
    assert store.ensure_versions(["old"], None) == store.ensure_versions(["old"], None)
    assert admin.pttl("old") == -1  # a finite version made permanent
    assert store.ensure_versions(["new", "old"], 10.0)[0] == created[0]
    assert admin.pttl("new") == -1  # and a permanent one stays so
    assert admin.pttl("old") == -1


async def test_ensure_versions_async(store: RedisStore, admin: redis.Redis) -> None:
    first = await store.aensure_versions(["x", "y"], 20.0)
    assert await store.aensure_versions(["y", "x"], None) == [first[1], first[0]]
    assert store.ensure_versions(["x"], 1.0) == [first[0]]
    assert admin.pttl("x") == -1


# -- leases -------------------------------------------------------------------


def test_lease_is_exclusive_and_released_only_by_its_token(
    store: RedisStore, admin: redis.Redis
) -> None:
    assert store.acquire_lease("lease", b"me", 5.0) is True
    assert 4000 < admin.pttl("lease") <= 5000
    assert store.acquire_lease("lease", b"you", 5.0) is False
    store.release_lease("lease", b"you")
    assert admin.get("lease") == b"me"
    store.release_lease("lease", b"me")
    assert admin.get("lease") is None
    assert store.acquire_lease("lease", b"you", 5.0) is True
    store.release_lease("other", b"me")  # nothing held: nothing happens


def test_release_survives_a_flushed_script_cache(store: RedisStore, admin: redis.Redis) -> None:
    assert store.acquire_lease("lease", b"me", 5.0)
    store.release_lease("lease", b"me")
    admin.script_flush()  # a restarted server has no scripts: NOSCRIPT, then load
    assert store.acquire_lease("lease", b"me", 5.0)
    store.release_lease("lease", b"me")
    assert admin.get("lease") is None


async def test_lease_async(store: RedisStore, admin: redis.Redis) -> None:
    assert await store.aacquire_lease("lease", b"me", 5.0) is True
    assert await store.aacquire_lease("lease", b"you", 5.0) is False
    await store.arelease_lease("lease", b"you")
    assert admin.get("lease") == b"me"
    admin.script_flush()
    await store.arelease_lease("lease", b"me")
    assert admin.get("lease") is None


# -- pub/sub ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lost = 0
        self.changed = threading.Condition()

    def on_message(self, data: bytes) -> None:
        with self.changed:
            self.messages.append(data)
            self.changed.notify_all()

    def on_lost(self) -> None:
        with self.changed:
            self.lost += 1
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


def test_subscribe_delivers_messages(store: RedisStore) -> None:
    recorder = Recorder()
    subscription = store.subscribe("inval", recorder.on_message, recorder.on_lost)
    assert isinstance(subscription, Subscription)
    assert subscription.wait_subscribed(0)  # in place when subscribe() returns
    store.set_many([("a", b"1", None)], publish=("inval", b"one"))
    store.delete_many(["a"], publish=("inval", b"two"))
    store.delete_many([], publish=("other", b"not for us"))
    assert recorder.wait(lambda: len(recorder.messages) == 2)
    assert recorder.messages == [b"one", b"two"]
    assert recorder.lost == 0
    subscription.close()
    assert not subscription.subscribed
    assert subscription.closed


def test_subscription_reports_loss_and_recovery(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=1.0)
    recorder = Recorder()
    subscription = store.subscribe("inval", recorder.on_message, recorder.on_lost)
    store.delete_many([], publish=("inval", b"before"))
    assert recorder.wait(lambda: recorder.messages == [b"before"])

    fresh_redis.kill()
    assert recorder.wait(lambda: recorder.lost == 1), "no on_lost when the server died"
    assert not subscription.subscribed
    time.sleep(0.3)  # several reconnect attempts fail meanwhile
    assert recorder.lost == 1, "on_lost is called once per outage, not per attempt"

    fresh_redis.start()
    assert recorder.wait(lambda: recorder.lost == 2), "no on_lost once resubscribed"
    assert subscription.wait_subscribed(5.0)
    store.delete_many([], publish=("inval", b"after"))
    assert recorder.wait(lambda: recorder.messages == [b"before", b"after"])
    store.close()
    assert subscription.closed


def test_a_silent_connection_counts_as_lost(
    fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that stops answering (no FIN: a frozen host, a cut network) is noticed
    by the PING the subscription sends when the connection has been quiet."""
    import buttress.cache._redis as module

    monkeypatch.setattr(module, "_KEEPALIVE", 0.2)
    store = RedisStore(fresh_redis.url, timeout=1.0)
    recorder = Recorder()
    subscription = store.subscribe("inval", recorder.on_message, recorder.on_lost)
    time.sleep(0.5)  # quiet, but answering PINGs: not lost
    assert recorder.lost == 0
    fresh_redis.pause()
    assert recorder.wait(lambda: recorder.lost == 1)
    fresh_redis.resume()
    assert recorder.wait(lambda: recorder.lost == 2)
    assert subscription.wait_subscribed(5.0)
    store.delete_many([], publish=("inval", b"back"))
    assert recorder.wait(lambda: recorder.messages == [b"back"])
    store.close()


def test_subscribe_while_the_server_is_down(fresh_redis: RedisServer) -> None:
    fresh_redis.kill()
    store = RedisStore(fresh_redis.url, timeout=1.0)
    recorder = Recorder()
    subscription = store.subscribe("inval", recorder.on_message, recorder.on_lost)
    assert recorder.wait(lambda: recorder.lost == 1)  # messages may be missed until up
    fresh_redis.start()
    assert recorder.wait(lambda: recorder.lost == 2)
    assert subscription.wait_subscribed(5.0)
    store.delete_many([], publish=("inval", b"hello"))
    assert recorder.wait(lambda: recorder.messages == [b"hello"])
    subscription.close()
    store.close()


def test_callback_errors_are_logged_and_survived(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[bytes] = []

    def on_message(data: bytes) -> None:
        received.append(data)
        if data == b"bad":
            raise RuntimeError("boom")

    subscription = store.subscribe("inval", on_message, lambda: None)
    with caplog.at_level(logging.ERROR, logger="buttress.cache"):
        store.delete_many([], publish=("inval", b"bad"))
        store.delete_many([], publish=("inval", b"good"))
        assert _eventually(lambda: received == [b"bad", b"good"])
    assert any("on_message" in r.message and r.exc_info for r in caplog.records)
    subscription.close()


def test_subscription_close_stops_its_thread(store: RedisStore) -> None:
    subscription = store.subscribe("inval", lambda data: None, lambda: None)
    assert isinstance(subscription, RedisSubscription)
    names = {t.name for t in threading.enumerate()}
    assert "buttress-redis-subscriber" in names
    started = time.monotonic()
    subscription.close()
    assert time.monotonic() - started < 1.0
    assert "buttress-redis-subscriber" not in {t.name for t in threading.enumerate()}


# -- failures -----------------------------------------------------------------


def test_a_paused_server_times_out(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=0.1)
    store.set_many([("a", b"1", None)])
    fresh_redis.pause()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        store.get_many(["a"])
    assert time.monotonic() - started < 1.0  # about the 0.1 s timeout, not redis-py's 5 s
    fresh_redis.resume()
    assert store.get_many(["a"]) == [b"1"]
    store.close()


async def test_a_sleeping_server_times_out_async(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=0.1)
    await store.aset_many([("a", b"1", None)])
    with socket.create_connection((fresh_redis.host, fresh_redis.port), timeout=5.0) as sleeper:
        sleeper.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.6\r\n")
        await asyncio.sleep(0.05)  # an idle server takes it at once, then sleeps
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await store.aget_many(["a"])
        assert time.monotonic() - started < 0.5
        assert sleeper.recv(100) == b"+OK\r\n"  # the sleep is over
    assert await store.aget_many(["a"]) == [b"1"]
    await store.aclose()


def test_errors_raise_while_down_and_recovery_needs_no_restart(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=1.0)
    store.set_many([("a", b"1", None)])  # a pooled connection now exists
    fresh_redis.kill()
    for call in (
        lambda: store.get_many(["a"]),
        lambda: store.set_many([("a", b"1", None)]),
        lambda: store.ensure_versions(["t"], 1.0),
        store.ping,
    ):
        with pytest.raises(redis.ConnectionError):
            call()
    fresh_redis.start()
    assert store.get_many(["a"]) == [None]  # a new, empty server: the stale socket was replaced
    store.ping()
    store.close()


def test_a_restart_fails_no_call(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=1.0)
    store.set_many([("a", b"1", None)])  # a pooled connection now exists
    fresh_redis.stop()
    fresh_redis.start()
    store.set_many([("a", b"2", None)])  # its dead socket is replaced at checkout
    assert store.get_many(["a"]) == [b"2"]
    store.close()


async def test_a_restart_fails_no_call_async(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=1.0)
    await store.aset_many([("a", b"1", None)])
    # The loop runs meanwhile, as in a service, and sees the server close the
    # pooled socket; the pool then replaces it at checkout.
    await asyncio.to_thread(fresh_redis.stop)
    await asyncio.to_thread(fresh_redis.start)
    await store.aset_many([("a", b"2", None)])
    assert await store.aget_many(["a"]) == [b"2"]
    await store.aclose()


async def test_errors_raise_while_down_async(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url, timeout=1.0)
    await store.aping()
    fresh_redis.kill()
    with pytest.raises(redis.ConnectionError):
        await store.aget_many(["a"])
    fresh_redis.start()
    await store.aping()
    await store.aclose()


def test_pool_waits_at_most_timeout_for_a_connection(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=0.2, max_connections=1)
    pool = store._client.connection_pool
    taken = pool.get_connection()  # the only one, as a call in flight holds it
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        store.get_many(["a"])
    assert 0.15 < time.monotonic() - started < 1.0
    pool.release(taken)
    assert store.get_many(["a"]) == [None]
    store.close()


# -- event loops --------------------------------------------------------------


def _connected(admin: redis.Redis) -> int:
    info: dict[str, Any] = admin.info("clients")
    return int(info["connected_clients"])


def test_one_store_serves_successive_event_loops(store: RedisStore, admin: redis.Redis) -> None:
    baseline = _connected(admin)

    async def use(value: bytes) -> list[bytes | None]:
        await store.aset_many([("k", value, None)])
        return await store.aget_many(["k"])

    assert asyncio.run(use(b"first")) == [b"first"]
    # The first loop's client was closed as the loop shut down.
    assert _eventually(lambda: _connected(admin) == baseline)
    assert asyncio.run(use(b"second")) == [b"second"]
    with asyncio.Runner() as runner:
        assert runner.run(use(b"third")) == [b"third"]
        assert runner.run(use(b"fourth")) == [b"fourth"]  # same loop: same client
    assert _eventually(lambda: _connected(admin) == baseline)


def test_store_in_loops_of_two_threads(store: RedisStore) -> None:
    results: list[list[bytes | None]] = []

    async def use(key: str) -> None:
        await store.aset_many([(key, key.encode(), None)])
        for _ in range(20):
            await asyncio.sleep(0)
            results.append(await store.aget_many([key]))

    threads = [threading.Thread(target=asyncio.run, args=(use(k),)) for k in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted({tuple(r) for r in results}) == [(b"x",), (b"y",)]
    assert len(results) == 40


async def test_a_given_async_client_is_used_and_left_open(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisStore(redis_url, async_client=client)
    await store.aset_many([("a", b"1", None)])
    assert await client.get("a") == b"1"
    await store.aclose()
    assert await client.get("a") == b"1"  # still usable: the store does not own it
    await client.aclose()


def test_a_given_client_is_used(redis_url: str, admin: redis.Redis) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(redis_url, client=client)
    store.set_many([("a", b"1", None)])
    assert admin.get("a") == b"1"
    recorder = Recorder()
    subscription = store.subscribe("ch", recorder.on_message, recorder.on_lost)
    store.delete_many([], publish=("ch", b"hi"))
    assert recorder.wait(lambda: recorder.messages == [b"hi"])
    subscription.close()
    store.close()
    assert client.get("a") == b"1"
    client.close()


# -- the server fixtures themselves -------------------------------------------


def _process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` ("Z": dead, not yet reaped), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_servers_of_a_killed_test_run_are_reaped() -> None:
    """A test run killed outright (SIGKILL) leaves its servers behind; the next run
    kills them."""
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]);"
        "from servers import RedisServer; server = RedisServer().start();"
        "print(server.pid, server.directory, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    tests = str(Path(__file__).parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", code, tests], capture_output=True, text=True, check=False
    )
    pid, directory = result.stdout.split()
    orphan = int(pid)
    assert _process_state(orphan) not in (None, "Z"), "the orphan should still run"
    assert Path(directory).is_dir()
    reap_orphans()
    assert _eventually(lambda: _process_state(orphan) in (None, "Z"))
    assert not Path(directory).exists()


def test_a_missing_server_binary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match=r"redis-server not found on PATH.*make servers"):
        RedisServer(tmp_path).start()


def test_a_server_that_cannot_start_shows_its_output(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, arguments=["--no-such-option", "1"])
    with pytest.raises(ServerError, match=r"(?s)exited with status.*no-such-option"):
        server.start()
    assert not server.running
