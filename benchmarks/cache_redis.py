"""Redis through the tiered cache against raw redis-py, cashews and aiocache.

Every row reads keys that are present (get-hits) through the cache with L1
disabled, so each read goes to Redis: what is measured is what the cache adds
on top of the network round trip. Candidates run in one event loop against one
Redis server that this script starts on a free loopback port; repeats are
interleaved and the best repeat counts (noise only ever adds time).

    python benchmarks/cache_redis.py [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import redis.asyncio as aioredis
from aiocache import RedisCache
from cashews import Cache as CashewsCache
from rich.console import Console

from _harness import Report, Target, machine_facts, print_header, print_summary, ratio, version_of
from buttress.cache import Cache, RedisStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import RedisServer

KEYS = [f"bench:{i}" for i in range(1000)]
CASHEWS_KEYS = ["c:" + key for key in KEYS]
VALUE = {"id": 1, "name": "Ada Lovelace", "roles": ["admin", "user"], "score": 0.97}
CONCURRENCY = 50
BATCH = 100

Op = Callable[[int], Awaitable[object]]


class Candidates:
    """One client per library, all on the same server, each with its own copy of the data."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def setup(self) -> None:
        self.raw = aioredis.Redis.from_url(self.url)
        await self.raw.mset(dict.fromkeys(KEYS, b"x" * 60))
        self.ours = Cache([RedisStore(self.url, timeout=1.0)], namespace="b", ttl=None)
        await self.ours.set_many(dict.fromkeys(KEYS, VALUE))
        self.cashews = CashewsCache()
        self.cashews.setup(self.url)
        for key in KEYS:
            await self.cashews.set("c:" + key, VALUE, expire=3600)
        host, port = self.url.removeprefix("redis://").split("/")[0].split(":")
        self.aiocache = RedisCache(endpoint=host, port=int(port), namespace="a")
        for key in KEYS:
            await self.aiocache.set(key, VALUE)

    async def close(self) -> None:
        await self.ours.close()
        await self.raw.aclose()
        await self.cashews.close()
        await self.aiocache.close()

    def single(self) -> dict[str, Op]:
        return {
            "redis-py GET (raw)": lambda i: self.raw.get(KEYS[i % 1000]),
            "buttress Cache.get": lambda i: self.ours.get(KEYS[i % 1000]),
            "cashews get": lambda i: self.cashews.get(CASHEWS_KEYS[i % 1000]),
            "aiocache get": lambda i: self.aiocache.get(KEYS[i % 1000]),
        }

    def batch(self) -> dict[str, Op]:
        def keys(i: int) -> list[str]:
            start = (i * BATCH) % (1000 - BATCH)
            return KEYS[start : start + BATCH]

        return {
            "redis-py MGET (raw)": lambda i: self.raw.mget(keys(i)),
            "buttress Cache.get_many": lambda i: self.ours.get_many(keys(i)),
            "cashews get_many": lambda i: self.cashews.get_many(*("c:" + k for k in keys(i))),
            "aiocache multi_get": lambda i: self.aiocache.multi_get(keys(i)),
        }


async def _sequential(op: Op, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await op(i)
    return time.perf_counter() - start


async def _concurrent(op: Op, calls: int) -> float:
    per_caller = max(1, calls // CONCURRENCY)

    async def caller(offset: int) -> None:
        for i in range(per_caller):
            await op(offset + i)

    start = time.perf_counter()
    await asyncio.gather(*(caller(c * per_caller) for c in range(CONCURRENCY)))
    return time.perf_counter() - start


async def measure(
    ops: dict[str, Op],
    run: Callable[[Op, int], Awaitable[float]],
    calls: int,
    repeats: int,
) -> dict[str, float]:
    """Best µs per call of each op, repeats interleaved."""
    best = dict.fromkeys(ops, float("inf"))
    for op in ops.values():  # warm up connections
        await run(op, min(calls, 200))
    for _ in range(repeats):
        for label, op in ops.items():
            elapsed = await run(op, calls)
            best[label] = min(best[label], elapsed / calls * 1e6)
    return best


def report(title: str, timings: dict[str, float], raw: str, note: str) -> Report:
    table = Report(title, ["candidate", "version", "µs/call", "calls/s", "throughput vs raw"])
    versions = {"redis-py": "redis", "buttress": "buttress", "cashews": "cashews"}
    for label, micros in timings.items():
        dist = versions.get(label.split()[0], label.split()[0])
        table.rows.append(
            [
                label,
                version_of(dist),
                f"{micros:,.1f}",
                f"{1e6 / micros:,.0f}",
                "(baseline)" if label == raw else ratio(timings[raw], micros),
            ]
        )
    table.notes.append(note)
    ours = next(label for label in timings if label.startswith("buttress"))
    share = timings[raw] / timings[ours]
    table.targets.append(
        Target(
            f"{title.split('.', maxsplit=1)[0]}: buttress at least 0.85x raw redis-py",
            f"{share:.2f}x",
            share >= 0.85,
        )
    )
    return table


async def run_all(url: str, calls: int, repeats: int) -> list[Report]:
    candidates = Candidates(url)
    await candidates.setup()
    try:
        single = candidates.single()
        batch = candidates.batch()
        return [
            report(
                "1. get-hit, one caller",
                await measure(single, _sequential, calls, repeats),
                "redis-py GET (raw)",
                "A 60-byte value for raw GET; a small dict for the caches "
                "(buttress: msgpack in an envelope; cashews and aiocache: pickle).",
            ),
            report(
                f"2. get-hit, {CONCURRENCY} concurrent callers",
                await measure(single, _concurrent, calls * 2, repeats),
                "redis-py GET (raw)",
                f"{CONCURRENCY} tasks share one client (redis-py pool) per library; "
                "µs is wall time per get.",
            ),
            report(
                f"3. get_many({BATCH})",
                await measure(batch, _sequential, max(calls // 10, 20), repeats),
                "redis-py MGET (raw)",
                f"{BATCH} present keys per call; µs per call of {BATCH} keys.",
            ),
        ]
    finally:
        await candidates.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    calls, repeats = (300, 2) if args.quick else (3000, 5)
    console = Console(width=None if Console().is_terminal else 140)
    facts = machine_facts()
    facts.append(
        (
            "peers",
            ", ".join(f"{n} {version_of(n)}" for n in ("redis", "cashews", "aiocache")),
        )
    )
    with RedisServer() as server:
        facts.append(("server", f"redis-server on {server.url} (loopback, no persistence)"))
        print_header(console, "buttress cache benchmarks: Redis", facts, markdown=args.markdown)
        reports = asyncio.run(run_all(server.url, calls, repeats))
    targets: list[Target] = []
    for table in reports:
        table.render(console, markdown=args.markdown)
        targets += table.targets
    print_summary(console, targets, markdown=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
