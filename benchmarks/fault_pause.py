"""Redis paused (SIGSTOP) for N seconds under 4 threads of steady gets: what callers see.

A paused server is the hard outage: connections stay open and nothing answers, so every
call to it waits a full socket timeout unless something stops the calls. This starts a
private redis-server (``tests/servers.py``; never the machine's own), builds

    Cache([MemoryTier(1000, ttl=0.5), redis_url], origin)

over a resident key set larger than the L1 (pre-filled, so L1 misses are answered by
Redis), and runs ``--threads`` threads each calling ``cache.get`` at a steady
``--rate`` per second on random keys, recording every call's start, duration and any
exception. Phases: ``--healthy`` s as is, SIGSTOP for ``--pause`` s, SIGCONT, ``--after``
s more. A sampler thread reads the levels' counters every few milliseconds for the
recovery times.

It prints a per-second timeline, the figures the issue asks about and PASS/FAIL against
its bars (nothing asserts: benchmarks report):

* 0 caller errors: a level that stops answering is skipped, never raised to callers;
* at most the first few calls (``--few``, default one per thread: the calls in flight
  when the server stopped) wait about one socket timeout;
* p99 < 5 ms for calls during the pause, leaving out its first second;
* L2 answers again within 2 s of SIGCONT.

    python benchmarks/fault_pause.py                  # ~20 s
    python benchmarks/fault_pause.py --pause 30 --breaker-reset 5
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers

from tests.servers import RedisServer  # noqa: E402

from stratacache import Cache, MemoryTier  # noqa: E402
from stratacache.config import tier_from_url  # noqa: E402

P99_BAR_MS = 5.0
RECOVERY_BAR_S = 2.0
#: a call "waited a timeout" when it took at least this share of socket_timeout: a timed
#: out read returns a little after the timeout, never before, but the share leaves room
#: for a call that found a connection already part-way through its wait
SLOW_SHARE = 0.9
#: a window of L2 answers counts as "back to normal" at this share of the healthy rate
NORMAL_SHARE = 0.9
SAMPLE_EVERY = 0.005


@dataclass
class Call:
    start: float  # seconds since the run's t0
    duration: float
    error: str | None = None


@dataclass
class Sample:
    t: float
    l1_misses: int
    l2_hits: int
    l2_misses: int
    l2_errors: int
    breaker: str
    breaker_opens: int
    #: keys the hierarchy owes L2 a delete for (None: not found in this version)
    owed: int | None


@dataclass
class Run:
    t_stop: float = 0.0
    t_cont: float = 0.0
    t_end: float = 0.0
    calls: list[Call] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    #: (time, keys) of every origin call
    loads: list[tuple[float, int]] = field(default_factory=list)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def worker(
    cache: Cache, keys: list[str], rate: float, t0: float, stop: threading.Event, out: list[Call]
) -> None:
    rng = random.Random()
    interval = 1.0 / rate
    due = time.perf_counter()
    while not stop.is_set():
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        key = rng.choice(keys)
        start = time.perf_counter()
        error = None
        try:
            cache.get(key)
        except Exception as exc:  # a caller error is the thing being measured
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        out.append(Call(start - t0, end - start, error))
        # A call that stalled does not make up for lost time with a burst afterwards: the
        # load stays steady, so the calls after a stall measure the cache, not a backlog.
        due = max(due + interval, end)


def sampler(
    cache: Cache, t0: float, stop: threading.Event, out: list[Sample], every: float
) -> None:
    # The levels' own counter objects, read directly: cache.stats() computes quantiles,
    # too dear to run 200 times a second next to the threads being timed.
    l1, l2 = (level.stats for level in cache.levels)
    # Internal, read only to explain the recovery: the deletes L2 is owed for what it
    # missed (hierarchy/recovery.py) decide how much of it is usable after SIGCONT.
    repairs = getattr(getattr(cache, "_hierarchy", None), "repairs", None)
    pending = repairs[1] if repairs is not None else None
    while not stop.is_set():
        out.append(
            Sample(
                time.perf_counter() - t0,
                l1.misses,
                l2.hits,
                l2.misses,
                l2.errors,
                l2.breaker,
                l2.breaker_opens,
                None if pending is None else len(pending),
            )
        )
        time.sleep(every)


def run(args: argparse.Namespace, server: RedisServer) -> tuple[Run, Cache]:
    result = Run()
    lock = threading.Lock()

    def origin(keys: list[str]) -> dict[str, Any]:
        with lock:
            result.loads.append((time.perf_counter() - t0, len(keys)))
        return {key: {"key": key, "n": 1} for key in keys}

    options = {
        name: value
        for name, value in (
            ("socket_timeout", args.socket_timeout),
            ("breaker_reset", args.breaker_reset),
            ("breaker_failures", args.breaker_failures),
        )
        if value is not None
    }
    tier = tier_from_url(server.url, namespace="fault-pause", **options)
    cache = Cache([MemoryTier(args.l1_entries, ttl=args.l1_ttl), tier], origin)
    keys = [f"user:{i}" for i in range(args.keys)]
    for i in range(0, len(keys), 500):
        cache.set_many({key: {"key": key, "n": 1} for key in keys[i : i + 500]})
    # What set_many left in L1 expires first, so the healthy phase starts in steady state.
    time.sleep(args.l1_ttl + 0.1)

    t0 = time.perf_counter()
    stop = threading.Event()
    per_thread: list[list[Call]] = [[] for _ in range(args.threads)]
    threads = [
        threading.Thread(target=worker, args=(cache, keys, args.rate, t0, stop, calls))
        for calls in per_thread
    ]
    threads.append(
        threading.Thread(target=sampler, args=(cache, t0, stop, result.samples, SAMPLE_EVERY))
    )
    for thread in threads:
        thread.start()
    try:
        time.sleep(args.healthy)
        result.t_stop = time.perf_counter() - t0
        server.pause()
        time.sleep(args.pause)
        result.t_cont = time.perf_counter() - t0
        server.resume()
        time.sleep(args.after)
    finally:
        server.resume()
        stop.set()
        for thread in threads:
            thread.join()
    result.t_end = time.perf_counter() - t0
    result.calls = sorted((c for calls in per_thread for c in calls), key=lambda c: c.start)
    return result, cache


def at(samples: list[Sample], t: float) -> Sample | None:
    """The last sample taken at or before ``t``: windows are deltas between two such
    samples, so that a count moving between two windows lands in exactly one of them."""
    i = bisect.bisect_right([s.t for s in samples], t)
    return samples[i - 1] if i else None


def l2_rate(samples: list[Sample], start: float, end: float) -> tuple[int, int, int]:
    """(L2 hits, L2 misses, L1 misses) between two times. The share of L1 misses that L2
    answered, rather than L2's own hit rate, says how much of the traffic below L1 Redis
    carries: a skipped level makes no lookups at all."""
    first, last = at(samples, start) or (samples[0] if samples else None), at(samples, end)
    if first is None or last is None:
        return 0, 0, 0
    return (
        last.l2_hits - first.l2_hits,
        last.l2_misses - first.l2_misses,
        last.l1_misses - first.l1_misses,
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(args: argparse.Namespace, r: Run, cache: Cache, socket_timeout: float) -> None:
    stats = cache.stats()
    l2 = stats.levels[1]
    slow_at = SLOW_SHARE * socket_timeout
    errors = [c for c in r.calls if c.error]
    slow = [c for c in r.calls if c.duration >= slow_at]

    def phase(t: float) -> str:
        if t < r.t_stop:
            return "healthy"
        return "paused" if t < r.t_cont else "after"

    print(
        f"threads {args.threads} x {args.rate:g}/s, {args.keys} keys, L1 {args.l1_entries} "
        f"entries ttl {args.l1_ttl:g}s, socket_timeout {socket_timeout:g}s, "
        f"breaker_reset {cache.levels[1].options.breaker_reset:g}s, "
        f"breaker_failures {cache.levels[1].options.breaker_failures}"
    )
    print(
        f"SIGSTOP at {r.t_stop:.3f}s, SIGCONT at {r.t_cont:.3f}s, end {r.t_end:.3f}s; "
        f"{len(r.calls)} calls; times below relative to SIGSTOP"
    )
    print()
    print(
        "| t (s) | phase | calls | errors | p50 ms | p99 ms | max ms | slow | L2 hits | L2 misses "
        "| L2/L1-miss | origin keys | breaker opens | breaker at end |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    start = r.t_stop - args.healthy
    while start < r.t_end - 1e-9:
        # Windows aligned on SIGSTOP and SIGCONT, so no window mixes two phases.
        end = min(start + args.window, r.t_end)
        for edge in (r.t_stop, r.t_cont):
            if start < edge < end:
                end = edge
        inside = [c for c in r.calls if start <= c.start < end]
        durations = [c.duration for c in inside]
        hits, l2_misses, l1_misses = l2_rate(r.samples, start, end)
        first, last = at(r.samples, start) or r.samples[0], at(r.samples, end)
        opens = last.breaker_opens - first.breaker_opens if last else 0
        loads = sum(n for t, n in r.loads if start <= t < end)
        share = f"{hits / l1_misses:.0%}" if l1_misses else "-"
        print(
            f"| {start - r.t_stop:+.1f}..{end - r.t_stop:+.1f} | {phase(start)} | {len(inside)} "
            f"| {sum(1 for c in inside if c.error)} | {ms(quantile(durations, 0.5))} "
            f"| {ms(quantile(durations, 0.99))} | {ms(max(durations, default=float('nan')))} "
            f"| {sum(1 for d in durations if d >= slow_at)} | {hits} | {l2_misses} | {share} "
            f"| {loads} "
            f"| {opens} | {last.breaker if last else '-'} |"
        )
        start = end
    print()

    # The figures the issue asks for.
    paused = [c.duration for c in r.calls if r.t_stop + 1.0 <= c.start < r.t_cont]
    healthy = [c.duration for c in r.calls if c.start < r.t_stop]
    after = [c.duration for c in r.calls if c.start >= r.t_cont]
    print(f"caller errors: {len(errors)}")
    for c in errors[:5]:
        print(f"  at {c.start - r.t_stop:+.3f}s: {c.error}")
    print(f"calls >= {slow_at:.2f}s (~one socket timeout): {len(slow)}")
    for c in slow[:20]:
        print(
            f"  started {c.start - r.t_stop:+.3f}s after SIGSTOP ({phase(c.start)}), "
            f"took {c.duration:.3f}s"
        )
    if len(slow) > 20:
        print(f"  ... and {len(slow) - 20} more")
    for name, durations in (
        ("healthy", healthy),
        ("paused, after its first 1 s", paused),
        ("after SIGCONT", after),
    ):
        print(
            f"latency {name}: n={len(durations)} p50 {ms(quantile(durations, 0.5))} ms, "
            f"p99 {ms(quantile(durations, 0.99))} ms, max {ms(max(durations, default=0.0))} ms"
        )

    healthy_hits, _, healthy_misses = l2_rate(r.samples, 0.0, r.t_stop)
    healthy_share = healthy_hits / healthy_misses if healthy_misses else 0.0
    at_cont = at(r.samples, r.t_cont)
    hits_at_cont = at_cont.l2_hits if at_cont else 0
    first_hit = next((s.t for s in r.samples if s.t > r.t_cont and s.l2_hits > hits_at_cont), None)
    back = None
    later = [s for s in r.samples if s.t > r.t_cont]
    for i, s in enumerate(later):
        # The first window of args.normal_window seconds, starting after SIGCONT, whose
        # share of L1 misses answered by L2 is back near the healthy phase's.
        j = i
        while j < len(later) and later[j].t - s.t < args.normal_window:
            j += 1
        if j == len(later):
            break
        hits = later[j].l2_hits - s.l2_hits
        misses = later[j].l1_misses - s.l1_misses
        if misses and hits / misses >= NORMAL_SHARE * healthy_share:
            back = later[j].t
            break
    owed_at_cont = at_cont.owed if at_cont else None
    repaid = next((s.t for s in later if s.owed == 0), None)
    pause_loads = sum(n for t, n in r.loads if r.t_stop <= t < r.t_cont)
    opens_at_stop, opens_at_cont = at(r.samples, r.t_stop), at(r.samples, r.t_cont)
    pause_opens = (
        opens_at_cont.breaker_opens - opens_at_stop.breaker_opens
        if opens_at_stop and opens_at_cont
        else 0
    )
    print(f"healthy share of L1 misses answered by L2: {healthy_share:.1%}")
    print(
        "SIGCONT -> first L2 hit: "
        + (f"{first_hit - r.t_cont:.3f}s" if first_hit is not None else "never")
    )
    print(
        f"SIGCONT -> L2 answering >= {NORMAL_SHARE:.0%} of its healthy share "
        f"(over {args.normal_window:g}s): "
        + (
            f"{back - r.t_cont:.3f}s (end of that window)"
            if back is not None
            else "not in this run"
        )
    )
    if owed_at_cont is not None:
        print(
            f"deletes owed to L2 at SIGCONT (keys written while it was skipped): "
            f"{owed_at_cont}; all paid "
            + (f"{repaid - r.t_cont:.3f}s after SIGCONT" if repaid is not None else "not yet")
        )
    print(
        f"origin keys loaded: during the pause {pause_loads}, in total {stats.origin_loads} "
        f"({sum(n for t, n in r.loads if t < r.t_stop)} healthy, "
        f"{sum(n for t, n in r.loads if t >= r.t_cont)} after)"
    )
    print(
        f"breaker opens: {l2.breaker_opens} in total, "
        f"{pause_opens} during the pause; "
        f"L2 at the end: breaker {l2.breaker}, errors {l2.errors}, skipped {l2.skipped}, "
        f"pool_waits {l2.pool_waits}, pool_timeouts {l2.pool_timeouts}"
    )
    print()

    p99 = quantile(paused, 0.99)
    bars = [
        ("0 caller errors", len(errors) == 0, f"{len(errors)}"),
        (
            f"at most {args.few} calls wait ~one timeout",
            len(slow) <= args.few,
            f"{len(slow)} calls >= {slow_at:.2f}s",
        ),
        (
            f"p99 < {P99_BAR_MS:g} ms during the pause (after its first 1 s)",
            p99 < P99_BAR_MS / 1000,
            f"{ms(p99)} ms",
        ),
        (
            f"L2 hits again within {RECOVERY_BAR_S:g} s of SIGCONT",
            first_hit is not None and first_hit - r.t_cont <= RECOVERY_BAR_S,
            "never" if first_hit is None else f"{first_hit - r.t_cont:.3f}s",
        ),
    ]
    print("| bar | measured | verdict |")
    print("|---|---|---|")
    for name, ok, measured in bars:
        print(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pause", type=float, default=10.0, help="seconds SIGSTOPped")
    parser.add_argument("--healthy", type=float, default=2.0, help="seconds before the pause")
    parser.add_argument("--after", type=float, default=5.0, help="seconds after SIGCONT")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="gets per second per thread (paced: unpaced threads would measure the GIL)",
    )
    parser.add_argument("--keys", type=int, default=5000, help="resident keys (> L1)")
    parser.add_argument("--l1-entries", type=int, default=1000)
    parser.add_argument(
        "--l1-ttl", type=float, default=0.5, help="short, so that reads keep reaching L2"
    )
    parser.add_argument("--socket-timeout", type=float, help="tier option (default 1.0)")
    parser.add_argument("--breaker-reset", type=float, help="tier option (default 1.0)")
    parser.add_argument("--breaker-failures", type=int, help="tier option (default 3)")
    parser.add_argument(
        "--few", type=int, help="calls allowed to wait one timeout (default: --threads)"
    )
    parser.add_argument("--window", type=float, default=1.0, help="timeline rows, seconds")
    parser.add_argument(
        "--normal-window",
        type=float,
        default=0.25,
        help="window over which the L2 share must be back to normal, seconds",
    )
    args = parser.parse_args()
    if args.few is None:
        args.few = args.threads

    server = RedisServer().start()
    try:
        result, cache = run(args, server)
        socket_timeout = cache.levels[1].options.socket_timeout
        report(args, result, cache, socket_timeout)
        cache.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
