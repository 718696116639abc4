"""Two worker processes over one Redis, tried the way services run them.

Starts its own redis-server (``tests/servers.py``) and a SQLite origin in a temporary
directory (the write-behind journals go there too), then two spawned processes, each
with ``MemoryTier(500)`` over the Redis: one drives a sync ``Cache`` from 200 threads,
the other an ``AsyncCache`` from 1,000 asyncio tasks. The origin counts its loads
across both processes and takes 50 ms each.

1. **One missing key**: all 1,200 callers ask for it at once. Goal: 1 origin load.
2. **Resident keys**: 1,000 keys already in Redis; a burst over them. Goal: 0 loads,
   0 errors.
3. **Writes with Redis stopped**: both processes write 50 keys (``--write``: through,
   behind or around) and read others for about 2 s plus ``--pause``, the redis-server
   being SIGSTOP-ed for ``--pause`` seconds mid-run; after 2 s of quiet, each process
   reads the 50 keys. Goal: every value equals the origin's row.

Prints what each process saw. Nothing asserts: benchmarks report.

    python benchmarks/process_bursts.py
    python benchmarks/process_bursts.py --pause 5 --write behind
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers

from tests.integration.origin_table import make_origin_db, origin_rows  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

from stratacache import AsyncCache, Cache, CallableOrigin, MemoryTier  # noqa: E402
from stratacache.origin import SQLOrigin  # noqa: E402

SPAWN = mp.get_context("spawn")
RESIDENT = [f"r{i}" for i in range(1000)]
WRITTEN = RESIDENT[:50]


def counted_origin(url: str, loads: Any) -> CallableOrigin:
    base = SQLOrigin(url, "items", value_column="value")

    def load(keys: list[str]) -> Any:
        with loads.get_lock():
            loads.value += len(keys)
        time.sleep(0.05)
        return base.load_many(keys)

    return CallableOrigin(load, base.store_many, base.delete_many)


class Phases:
    """The events the parent sets to move both processes on together."""

    def __init__(self) -> None:
        self.hot, self.resident = SPAWN.Event(), SPAWN.Event()
        self.writes, self.stop = SPAWN.Event(), SPAWN.Event()


def threads_worker(
    level: str, origin: str, loads: Any, phases: Phases, out: Any, write: str
) -> None:
    cache = Cache(
        [MemoryTier(500), level],
        counted_origin(origin, loads),
        write=write,
        journal=Path(origin.removeprefix("sqlite:///")).parent / "journal-threads",
    )
    errors: list[str] = []

    def burst(key_of: Callable[[int], str], callers: int) -> list[Any]:
        answers: list[Any] = []

        def one(i: int) -> None:
            try:
                answers.append(cache.get(key_of(i)))
            except Exception as exc:
                errors.append(repr(exc)[:200])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return answers

    def write(thread: int) -> None:
        i = thread
        while not phases.stop.is_set():
            i += 7
            try:
                cache.set(WRITTEN[i % len(WRITTEN)], f"threads-{thread}-{i}")
                cache.get(RESIDENT[i * 13 % len(RESIDENT)])
            except Exception as exc:
                errors.append(repr(exc)[:200])

    phases.hot.wait()
    hot = burst(lambda i: "hot", 200)
    phases.resident.wait()
    resident = burst(lambda i: RESIDENT[i * 5 % len(RESIDENT)], 200)
    phases.writes.wait()
    writers = [threading.Thread(target=write, args=(t,)) for t in range(20)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    time.sleep(2.0)
    final = {key: cache.get(key) for key in WRITTEN}
    cache.close()
    out.put(("200 threads", hot, resident, errors, final))


def tasks_worker(level: str, origin: str, loads: Any, phases: Phases, out: Any, write: str) -> None:
    errors: list[str] = []

    async def main() -> tuple[list[Any], list[Any], dict[str, Any]]:
        cache = AsyncCache(
            [MemoryTier(500), level],
            counted_origin(origin, loads),
            write=write,
            journal=Path(origin.removeprefix("sqlite:///")).parent / "journal-tasks",
        )
        loop = asyncio.get_running_loop()

        async def one(key: str) -> Any:
            try:
                return await cache.get(key)
            except Exception as exc:
                errors.append(repr(exc)[:200])
                return None

        await loop.run_in_executor(None, phases.hot.wait)
        hot = await asyncio.gather(*(one("hot") for _ in range(1000)))
        await loop.run_in_executor(None, phases.resident.wait)
        resident = await asyncio.gather(*(one(key) for key in RESIDENT))
        await loop.run_in_executor(None, phases.writes.wait)
        i = 0
        while not phases.stop.is_set():
            i += 3
            try:
                await cache.set(WRITTEN[i % len(WRITTEN)], f"tasks-{i}")
                await asyncio.gather(*(one(RESIDENT[(i * 13 + j) % 1000]) for j in range(50)))
            except Exception as exc:
                errors.append(repr(exc)[:200])
        await asyncio.sleep(2.0)
        final = {key: await cache.get(key) for key in WRITTEN}
        await cache.close()
        return hot, resident, final

    hot, resident, final = asyncio.run(main())
    out.put(("1,000 tasks", hot, resident, errors, final))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=2.0, help="seconds Redis is stopped")
    parser.add_argument("--write", choices=["through", "behind", "around"], default="through")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    origin = make_origin_db(tmp / "origin.db")
    SQLOrigin(origin, "items", value_column="value").store_many(
        {"hot": "HOT", **{key: f"v-{key}" for key in RESIDENT}}
    )
    server = RedisServer().start()
    try:
        loads, phases, out = SPAWN.Value("i", 0), Phases(), SPAWN.Queue()
        workers = [
            SPAWN.Process(target=target, args=(server.url, origin, loads, phases, out, args.write))
            for target in (threads_worker, tasks_worker)
        ]
        for worker in workers:
            worker.start()
        time.sleep(3.0)  # both built and waiting
        phases.hot.set()
        time.sleep(2.0)
        hot_loads = loads.value
        warm = Cache([server.url], SQLOrigin(origin, "items", value_column="value"))
        warm.get_many(RESIDENT)
        warm.close()
        before = loads.value
        phases.resident.set()
        time.sleep(3.0)
        resident_loads = loads.value - before
        phases.writes.set()
        time.sleep(1.0)
        server.pause()
        time.sleep(args.pause)
        server.resume()
        time.sleep(1.0)
        phases.stop.set()
        results = [out.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(30)
        rows = origin_rows(tmp / "origin.db")
    finally:
        server.stop()
    print(f"1. one missing key, 1,200 callers in 2 processes: {hot_loads} origin load(s)")
    print(f"2. resident keys: {resident_loads} origin load(s)")
    print(f"3. {args.write} writes with Redis stopped {args.pause:g} s mid-run, then 2 s of quiet:")
    for name, hot, resident, errors, final in results:
        wrong = {key: (value, rows.get(key)) for key, value in final.items() if value != rows[key]}
        print(
            f"   {name}: hot answers {sorted(set(map(str, hot)))}, resident answers "
            f"{len(resident)} ({sum(v is None for v in resident)} None), errors "
            f"{len(errors)} {errors[:2]}, keys disagreeing with the origin "
            f"{len(wrong)}/{len(final)} {list(wrong.items())[:3]}"
        )


if __name__ == "__main__":
    main()
