"""Invalidation bus latency between two processes, over Redis pub/sub and a SQLite file.

Starts its own redis-server (``tests/servers.py``; never the machine's own) and a SQLite
file in a temporary directory. For each transport, two processes made with the "spawn"
context each run an :class:`~stratacache.coherence.InvalidationBus`:

* the **sender** calls ``publish_keys([key])`` ``--n`` times at ``--rate`` per second,
  the key carrying ``time.monotonic()`` of the call (one clock for every process on
  Linux);
* the **receiver** records, in ``on_keys``, the arrival minus that time: the whole path,
  batching delay (``--batch-delay``, the bus's default 0.5 ms) included. After the run it
  sits idle for ``--idle`` seconds and reports its own CPU use (``getrusage``): what a
  bus costs a process when nothing is published, the 1 ms ``PRAGMA data_version`` poll
  of the SQLite transport in particular.

Prints p50 / p99 / max per transport and PASS/FAIL against the goal (p99 < 10 ms on
loopback Redis); nothing asserts, benchmarks report.

    python benchmarks/bus_latency.py                 # ~15 s
    python benchmarks/bus_latency.py --n 5000 --rate 2000 --idle 0
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers

from tests.servers import RedisServer  # noqa: E402

from stratacache.coherence import InvalidationBus, open_transport  # noqa: E402

P99_GOAL_MS = 10.0
SPAWN = multiprocessing.get_context("spawn")


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receiver(url: str, channel: str, n: int, idle: float, batch_delay: float, out: Any) -> None:
    latencies: list[float] = []
    calls = [0]
    done = threading.Event()

    def on_keys(keys: list[str], versions: list[int]) -> None:
        now = time.monotonic()
        calls[0] += 1
        for key in keys:
            latencies.append(now - float(key.split(":", 1)[1]))
        if len(latencies) >= n:
            done.set()

    transport = open_transport(url, channel=channel)
    bus = InvalidationBus(
        transport, on_keys=on_keys, on_reset=lambda: None, batch_delay=batch_delay, name="rx"
    )
    bus.start()
    transport.ready.wait(10)  # type: ignore[attr-defined]
    out.put(("ready",))
    complete = done.wait(60)
    idle_cpu = float("nan")
    if idle > 0:
        time.sleep(0.2)  # let the last messages settle
        cpu, wall = cpu_seconds(), time.monotonic()
        time.sleep(idle)
        idle_cpu = (cpu_seconds() - cpu) / (time.monotonic() - wall)
    stats = bus.stats.snapshot()
    bus.close()
    out.put(("result", latencies, calls[0], complete, idle_cpu, stats))


def sender(url: str, channel: str, n: int, rate: float, batch_delay: float, out: Any) -> None:
    transport = open_transport(url, channel=channel)
    bus = InvalidationBus(
        transport, on_keys=lambda k, v: None, on_reset=lambda: None, batch_delay=batch_delay
    )
    bus.start()
    transport.ready.wait(10)  # type: ignore[attr-defined]
    interval = 1.0 / rate
    due = time.monotonic()
    for _ in range(n):
        bus.publish_keys([f"t:{time.monotonic()!r}"])
        due += interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    bus.flush(5.0)
    stats = bus.stats.snapshot()
    bus.close()
    out.put(("sent", stats))


def run(label: str, url: str, args: argparse.Namespace) -> bool:
    channel = f"bench-{label}"
    out: Any = SPAWN.Queue()
    rx = SPAWN.Process(
        target=receiver, args=(url, channel, args.n, args.idle, args.batch_delay, out)
    )
    rx.start()
    assert out.get(timeout=30)[0] == "ready"
    tx = SPAWN.Process(target=sender, args=(url, channel, args.n, args.rate, args.batch_delay, out))
    tx.start()
    results: dict[str, tuple[Any, ...]] = {}
    while len(results) < 2:
        event = out.get(timeout=120)
        results[event[0]] = event
    tx.join(10)
    rx.join(10)
    _, latencies, calls, complete, idle_cpu, rx_stats = results["result"]
    _, tx_stats = results["sent"]
    ms = [value * 1e3 for value in latencies]
    p99 = quantile(ms, 0.99)
    print(
        f"{label:7s} keys={len(ms):5d} messages sent={tx_stats['published']:5d} got={calls:5d} "
        f"p50={quantile(ms, 0.5):6.3f} ms  p99={p99:6.3f} ms  max={max(ms, default=0):7.3f} ms"
        f"  idle receiver CPU={idle_cpu * 100:5.2f}% of a core"
        f"{'' if complete else '  INCOMPLETE'}"
    )
    if rx_stats["resets"] or rx_stats["gaps"] or rx_stats["rejected"] or rx_stats["lagged"]:
        print(f"        receiver stats: {rx_stats}")
    return complete and p99 < P99_GOAL_MS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="messages per transport")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU sampling")
    parser.add_argument("--batch-delay", type=float, default=0.0005)
    args = parser.parse_args()
    print(
        f"{args.n} single-key messages at {args.rate:g}/s, batch_delay "
        f"{args.batch_delay * 1e3:g} ms, sender and receiver in two spawned processes"
    )
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        redis_ok = run("redis", server.url, args)
        run("sqlite", str(Path(tmp) / "bus.db"), args)
    print(f"goal p99 < {P99_GOAL_MS:g} ms on loopback Redis: {'PASS' if redis_ok else 'FAIL'}")


if __name__ == "__main__":
    main()
