"""Score the default policy against libCacheSim on workloads that played no part in tuning it.

``hit_ratio.py`` scores the default policy on the 46 rows of ``ANCHORS.md``, the traces its
parameters were chosen on. This script applies the same bar to a held-out set:

* synthetic families, each generated here from a fixed seed (Zipf at three skews, Zipf whose
  ranking is reshuffled or drifts, Zipf polluted by one-time scans, a loop mixed with a hot
  set, an LRU stack-distance model, and a stream of items that burst into popularity and
  fade; see ``WORKLOADS``);
* one real trace that is not among the 14: the address trace ``parda.trace`` that ships in
  the ``mimircache`` 0.0.2.10 source distribution on PyPI (by its name, the sample trace of
  PARDA, a reuse-distance analyser), read as byte addresses and as 64-byte lines. It is fetched with
  ``pip download`` when it is not already in ``--data``; ``--no-real`` skips it.

``--variant validation`` replaces both with the *validation set* (``VALIDATION``): the same
families with other seeds and other parameters (other Zipf skews and key counts, faster and
slower shifts and drifts, another scan share, shorter and longer loops, a power-law and
another lognormal stack-distance law, shorter-lived bursts) and the real trace at 16-byte
granularity (not independent: it is the same trace). It was fixed before any change to the
default policy was tried on the held-out set, and is meant to be run once, at the end, to
check that what was decided on the held-out set and ``ANCHORS.md`` carries over.
``--seed S`` draws workload i from seed S + i instead of its own (another sample of either
set).

Each workload is replayed at 0.1%, 1%, 10% and 30% of its unique keys (sizes under 10 entries
are skipped), every request counting and no warm-up, one object per key, through:

* ours: ``make_policy(DEFAULT_POLICY, size)``, plus the same policy with
  ``adaptation="climb"`` (Caffeine's hill climber) and ``adaptation="fixed"`` (1% window) as
  extra columns, and Belady's OPT (``OPTPolicy``);
* libCacheSim 0.3.5 natively (``cache.process_trace`` over an oracleGeneral file), the 16
  algorithms of ``ANCHORS.md``, each run in a forked child. A run that does not finish
  within ``--timeout`` seconds (libCacheSim's LFUDA loops forever at some small sizes) is no
  result, and so is a result of exactly 1.0 when the cache holds fewer than 100 entries or
  when LRU hits something on the same row: a structure that rounded to nothing, not a miss
  ratio. Both are dashes in ``ANCHORS.md``.

The scoring is ``hit_ratio.score``, imported: (a) mean below every libCacheSim algorithm,
(b) within 1 point of the row's best on at least 75% of rows, (c) never more than 5 points
worse. Two checks that the harness is right run too (``--no-checks`` skips them): our LRU,
ARC, SIEVE, S3-FIFO, LFU (aging off) and OPT against libCacheSim's LRU, ARC, Sieve, S3FIFO,
LFU and Belady on every held-out row, and libCacheSim driven this way against the figures of
``ANCHORS.md`` on its traces under 200k requests.

    python benchmarks/hit_ratio_heldout.py --jobs 2      # about 5.5 minutes on 2 cores
    python benchmarks/hit_ratio_heldout.py --jobs 2 --variant validation

The exit status is 0 when the default policy passes all three criteria, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import math
import os
import select
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hit_ratio import DEFAULT_TRACES, Row, parse_anchors, score
from stratacache.policies import DEFAULT_POLICY, make_policy
from stratacache.policies.opt import OPTPolicy
from stratacache.sim.traces import read_trace

# ANCHORS.md's column names -> libCacheSim 0.3.5's classes.
LIBCACHESIM = {
    "LRU": "LRU",
    "FIFO": "FIFO",
    "CLOCK": "Clock",
    "SLRU": "SLRU",
    "2Q": "TwoQ",
    "ARC": "ARC",
    "LIRS": "LIRS",
    "S3-FIFO": "S3FIFO",
    "SIEVE": "Sieve",
    "Clock2Q+": "Clock2QPlus",
    "W-TinyLFU": "WTinyLFU",
    "LeCaR": "LeCaR",
    "Cacheus": "Cacheus",
    "LFU": "LFU",
    "LFUDA": "LFUDA",
    "LHD": "LHD",
}
# Our columns: name -> (policy, options). "default" is the policy being scored.
OURS: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
    "default": (DEFAULT_POLICY, ()),
    "climb": (DEFAULT_POLICY, (("adaptation", "climb"),)),
    "fixed": (DEFAULT_POLICY, (("adaptation", "fixed"),)),
}
# The harness check: our policy -> the libCacheSim column it must reproduce.
TWINS: dict[str, tuple[str, tuple[tuple[str, Any], ...], str]] = {
    "lru": ("lru", (), "LRU"),
    "arc": ("arc", (), "ARC"),
    "sieve": ("sieve", (), "SIEVE"),
    "s3fifo": ("s3fifo", (), "S3-FIFO"),
    "lfu": ("lfu", (("aging_factor", 10**9),), "LFU"),
}
# libCacheSim's algorithms that draw random numbers: their results depend on the state of
# its random generator, so they differ between ways of driving it (see check_anchors).
RANDOMIZED = ("LeCaR", "Cacheus", "LHD")
PERCENTS = (0.1, 1.0, 10.0, 30.0)
MIN_SIZE = 10
PARDA_SDIST = "mimircache==0.0.2.10"
PARDA_MEMBER = "mimircache-0.0.2.10/mimircache/data/parda.trace"
PARDA_SHA256 = "a25ebf0c4676273c516f952e83a9d8ae5967dff222ba6a0e5f147f1b291c4a12"


# -- workloads ------------------------------------------------------------------------


def _zipf_ranks(rng: np.random.Generator, n_keys: int, alpha: float, count: int) -> np.ndarray:
    """``count`` ranks in [0, n_keys) drawn with probability proportional to 1/(rank+1)^alpha."""
    cdf = np.cumsum(1.0 / np.arange(1, n_keys + 1, dtype=np.float64) ** alpha)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(count)), n_keys - 1)


def zipf(rng: np.random.Generator, n_keys: int, alpha: float, n_req: int) -> np.ndarray:
    """Independent Zipf requests; key ids are a random permutation of the ranks."""
    keys = rng.permutation(n_keys).astype(np.uint64) + 1
    return keys[_zipf_ranks(rng, n_keys, alpha, n_req)]


def zipf_shift(
    rng: np.random.Generator, n_keys: int, alpha: float, n_req: int, phase: int
) -> np.ndarray:
    """Zipf whose rank -> key mapping is redrawn at random every ``phase`` requests."""
    ranks = _zipf_ranks(rng, n_keys, alpha, n_req)
    out = np.empty(n_req, dtype=np.uint64)
    for start in range(0, n_req, phase):
        keys = rng.permutation(n_keys).astype(np.uint64) + 1
        out[start : start + phase] = keys[ranks[start : start + phase]]
    return out


def zipf_drift(
    rng: np.random.Generator, n_keys: int, alpha: float, n_req: int, phase: int, step: int
) -> np.ndarray:
    """Zipf whose ranking slides by ``step`` keys every ``phase`` requests: each key loses
    ``step`` ranks per phase (fades), and ``step`` keys jump from the tail to the top."""
    ranks = _zipf_ranks(rng, n_keys, alpha, n_req).astype(np.int64)
    shift = (np.arange(n_req, dtype=np.int64) // phase) * step
    return ((ranks - shift) % n_keys).astype(np.uint64) + 1


def zipf_scan(
    rng: np.random.Generator, n_keys: int, alpha: float, n_req: int, hot: int, scan: int
) -> np.ndarray:
    """``hot`` Zipf requests, then a scan of ``scan`` keys never seen before or after,
    repeated: a hot set polluted by long one-time scans."""
    keys = rng.permutation(n_keys).astype(np.uint64) + 1
    parts: list[np.ndarray] = []
    fresh = 10**9
    while sum(len(p) for p in parts) < n_req:
        parts.append(keys[_zipf_ranks(rng, n_keys, alpha, hot)])
        parts.append(np.arange(fresh, fresh + scan, dtype=np.uint64))
        fresh += scan
    return np.concatenate(parts)[:n_req]


def loop_hot(
    rng: np.random.Generator, loop: int, n_hot: int, alpha: float, n_req: int, p_loop: float
) -> np.ndarray:
    """Each request is, with probability ``p_loop``, the next key of a cyclic loop over
    ``loop`` keys (larger than the cache), else a Zipf draw from a hot set of ``n_hot``."""
    is_loop = rng.random(n_req) < p_loop
    out = np.empty(n_req, dtype=np.uint64)
    n_loop = int(is_loop.sum())
    out[is_loop] = np.arange(n_loop, dtype=np.uint64) % loop + 1
    hot = rng.permutation(n_hot).astype(np.uint64) + loop + 1
    out[~is_loop] = hot[_zipf_ranks(rng, n_hot, alpha, n_req - n_loop)]
    return out


def stack_model(
    rng: np.random.Generator,
    n_req: int,
    p_new: float,
    mu: float,
    sigma: float,
    depth: str = "lognormal",
) -> np.ndarray:
    """LRU stack-distance model: with probability ``p_new`` a new key, else the key at LRU
    stack depth d (a new key when the stack is not that deep), which then moves to the top.
    d is floor(lognormal(mu, sigma)) by default, or with ``depth="pareto"`` floor(mu *
    (Pareto(sigma) + 1) - mu) (a Lomax tail of index sigma and scale mu). Recency-biased, with
    a heavy tail of long distances."""
    if depth == "lognormal":
        raw = rng.lognormal(mu, sigma, n_req)
    elif depth == "pareto":
        raw = mu * rng.pareto(sigma, n_req)
    else:
        raise ValueError(f"unknown stack depth distribution {depth!r}")
    depths = np.floor(np.minimum(raw, 1e12)).astype(np.int64).tolist()
    new = (rng.random(n_req) < p_new).tolist()
    stack: list[int] = []  # the top of the stack is the end of the list
    out = [0] * n_req
    next_key = 1
    for i in range(n_req):
        depth = depths[i]
        if new[i] or depth >= len(stack):
            key = next_key
            next_key += 1
        else:
            key = stack.pop(-1 - depth)
        stack.append(key)
        out[i] = key
    return np.asarray(out, dtype=np.uint64)


def bursty(
    rng: np.random.Generator, n_req: int, span: float, tau: float, zipf_a: float, cap: int
) -> np.ndarray:
    """Items are born uniformly over ``span`` time units; item i is requested n_i times
    (n_i ~ Zipf(``zipf_a``) capped at ``cap``; many one-hit wonders), first at its birth and
    then at birth + Exp(tau_i), tau_i = ``tau`` * lognormal(0, 1): new items get popular at
    once, then fade. Requests are ordered by time."""
    counts = np.minimum(rng.zipf(zipf_a, n_req), cap)
    n_items = int(np.searchsorted(np.cumsum(counts), n_req)) + 1
    counts = counts[:n_items]
    births = rng.uniform(0.0, span, n_items)
    taus = tau * rng.lognormal(0.0, 1.0, n_items)
    owner = np.repeat(np.arange(n_items), counts)
    offsets = rng.exponential(1.0, len(owner)) * taus[owner]
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    offsets[first] = 0.0
    order = np.argsort(births[owner] + offsets, kind="stable")
    ids = rng.permutation(n_items).astype(np.uint64) + 1
    return ids[owner[order]][:n_req]


@dataclass(frozen=True)
class Workload:
    name: str
    family: str
    seed: int
    description: str
    make: Callable[[np.random.Generator], np.ndarray]


WORKLOADS = [
    Workload(
        "zipf-0.7",
        "zipf",
        101,
        "Zipf alpha 0.7 over 1,000,000 keys, 1M requests",
        lambda rng: zipf(rng, 1_000_000, 0.7, 1_000_000),
    ),
    Workload(
        "zipf-0.9",
        "zipf",
        102,
        "Zipf alpha 0.9 over 300,000 keys, 1M requests",
        lambda rng: zipf(rng, 300_000, 0.9, 1_000_000),
    ),
    Workload(
        "zipf-1.1",
        "zipf",
        103,
        "Zipf alpha 1.1 over 100,000 keys, 1M requests",
        lambda rng: zipf(rng, 100_000, 1.1, 1_000_000),
    ),
    Workload(
        "zipf-shift",
        "phase",
        104,
        "Zipf alpha 0.9 over 200,000 keys; the rank -> key mapping is redrawn at random every "
        "100,000 requests (10 phases), 1M requests",
        lambda rng: zipf_shift(rng, 200_000, 0.9, 1_000_000, 100_000),
    ),
    Workload(
        "zipf-drift",
        "phase",
        105,
        "Zipf alpha 0.9 over 200,000 keys; every 20,000 requests each key drops 1,000 ranks "
        "and 1,000 tail keys jump to the top, 1M requests",
        lambda rng: zipf_drift(rng, 200_000, 0.9, 1_000_000, 20_000, 1_000),
    ),
    Workload(
        "zipf-scan",
        "scan",
        106,
        "70,000 Zipf (alpha 0.9, 100,000 keys) requests, then a one-time scan of 30,000 new "
        "keys, repeated; 1M requests, 30% of them scans",
        lambda rng: zipf_scan(rng, 100_000, 0.9, 1_000_000, 70_000, 30_000),
    ),
    Workload(
        "loop-hot",
        "loop",
        107,
        "half the requests walk a cyclic loop of 50,000 keys, half are Zipf (alpha 1.0) over "
        "a hot set of 5,000 keys, interleaved at random; 1M requests",
        lambda rng: loop_hot(rng, 50_000, 5_000, 1.0, 1_000_000, 0.5),
    ),
    Workload(
        "stack-lognormal",
        "recency",
        108,
        "LRU stack-distance model: 5% new keys, else stack depth floor(lognormal(5, 2)) "
        "(median 148); 800,000 requests",
        lambda rng: stack_model(rng, 800_000, 0.05, 5.0, 2.0),
    ),
    Workload(
        "bursty",
        "bursty",
        109,
        "items born uniformly over 1M time units, each requested Zipf(1.7)-many times (cap "
        "10,000): at birth, then after Exp(20,000 x lognormal(0,1)); ~1M requests",
        lambda rng: bursty(rng, 1_000_000, 1_000_000.0, 20_000.0, 1.7, 10_000),
    ),
]


# The validation set: the same families with other seeds *and* other parameters (skews, key
# counts, shift periods, drift speeds, scan shares, loop lengths, stack-distance laws, burst
# lifetimes). It was fixed before any change to the default policy was tried against the
# held-out set above, and kept out of every decision: run it with ``--variant validation``.
VALIDATION = [
    Workload(
        "v-zipf-0.6",
        "zipf",
        201,
        "Zipf alpha 0.6 over 800,000 keys, 1M requests",
        lambda rng: zipf(rng, 800_000, 0.6, 1_000_000),
    ),
    Workload(
        "v-zipf-1.0",
        "zipf",
        202,
        "Zipf alpha 1.0 over 150,000 keys, 1M requests",
        lambda rng: zipf(rng, 150_000, 1.0, 1_000_000),
    ),
    Workload(
        "v-zipf-1.2",
        "zipf",
        203,
        "Zipf alpha 1.2 over 60,000 keys, 800,000 requests",
        lambda rng: zipf(rng, 60_000, 1.2, 800_000),
    ),
    Workload(
        "v-zipf-shift-fast",
        "phase",
        204,
        "Zipf alpha 0.8 over 300,000 keys; the rank -> key mapping is redrawn every 50,000 "
        "requests (20 phases), 1M requests",
        lambda rng: zipf_shift(rng, 300_000, 0.8, 1_000_000, 50_000),
    ),
    Workload(
        "v-zipf-shift-slow",
        "phase",
        205,
        "Zipf alpha 1.0 over 100,000 keys; the rank -> key mapping is redrawn every 250,000 "
        "requests (4 phases), 1M requests",
        lambda rng: zipf_shift(rng, 100_000, 1.0, 1_000_000, 250_000),
    ),
    Workload(
        "v-zipf-drift-slow",
        "phase",
        206,
        "Zipf alpha 1.0 over 150,000 keys; every 10,000 requests each key drops 300 ranks "
        "and 300 tail keys jump to the top, 1M requests",
        lambda rng: zipf_drift(rng, 150_000, 1.0, 1_000_000, 10_000, 300),
    ),
    Workload(
        "v-zipf-drift-fast",
        "phase",
        207,
        "Zipf alpha 0.8 over 300,000 keys; every 50,000 requests each key drops 5,000 ranks "
        "and 5,000 tail keys jump to the top, 1M requests",
        lambda rng: zipf_drift(rng, 300_000, 0.8, 1_000_000, 50_000, 5_000),
    ),
    Workload(
        "v-zipf-scan",
        "scan",
        208,
        "40,000 Zipf (alpha 1.0, 200,000 keys) requests, then a one-time scan of 10,000 new "
        "keys, repeated; 1M requests, 20% of them scans",
        lambda rng: zipf_scan(rng, 200_000, 1.0, 1_000_000, 40_000, 10_000),
    ),
    Workload(
        "v-loop-hot-short",
        "loop",
        209,
        "30% of the requests walk a cyclic loop of 20,000 keys, 70% are Zipf (alpha 0.8) over "
        "a hot set of 10,000 keys, interleaved at random; 1M requests",
        lambda rng: loop_hot(rng, 20_000, 10_000, 0.8, 1_000_000, 0.3),
    ),
    Workload(
        "v-loop-hot-long",
        "loop",
        210,
        "70% of the requests walk a cyclic loop of 100,000 keys, 30% are Zipf (alpha 1.2) "
        "over a hot set of 2,000 keys, interleaved at random; 1M requests",
        lambda rng: loop_hot(rng, 100_000, 2_000, 1.2, 1_000_000, 0.7),
    ),
    Workload(
        "v-stack-pareto",
        "recency",
        211,
        "LRU stack-distance model: 2% new keys, else stack depth floor(50 x Lomax(1.2)) "
        "(median 39, a power-law tail); 800,000 requests",
        lambda rng: stack_model(rng, 800_000, 0.02, 50.0, 1.2, depth="pareto"),
    ),
    Workload(
        "v-stack-lognormal",
        "recency",
        212,
        "LRU stack-distance model: 10% new keys, else stack depth floor(lognormal(3.5, 1.5)) "
        "(median 33); 800,000 requests",
        lambda rng: stack_model(rng, 800_000, 0.10, 3.5, 1.5),
    ),
    Workload(
        "v-bursty",
        "bursty",
        213,
        "items born uniformly over 1M time units, each requested Zipf(2.0)-many times (cap "
        "1,000): at birth, then after Exp(5,000 x lognormal(0,1)); ~1M requests",
        lambda rng: bursty(rng, 1_000_000, 1_000_000.0, 5_000.0, 2.0, 1_000),
    ),
]
VARIANTS = {"heldout": WORKLOADS, "validation": VALIDATION}


def parda_keys(data: Path, fetch: bool) -> np.ndarray | None:
    """The PARDA sample address trace from the mimircache 0.0.2.10 sdist, or None."""
    data.mkdir(parents=True, exist_ok=True)
    sdists = sorted(data.glob("mimircache-0.0.2.10.tar.gz"))
    if not sdists and fetch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
        command += [":all:", "-d", str(data), PARDA_SDIST]
        print(f"fetching the real trace: {' '.join(command[2:])}", flush=True)
        subprocess.run(command, check=False, capture_output=True)
        sdists = sorted(data.glob("mimircache-0.0.2.10.tar.gz"))
    if not sdists:
        print(f"no real held-out trace: {PARDA_SDIST} is not in {data} (PyPI unreachable?)")
        return None
    with tarfile.open(sdists[0]) as sdist:
        member = sdist.extractfile(PARDA_MEMBER)
        assert member is not None
        raw = member.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PARDA_SHA256:
        raise SystemExit(f"parda.trace has sha256 {digest}, expected {PARDA_SHA256}")
    return np.array([int(word, 16) for word in raw.split()], dtype=np.uint64)


# -- replay (in worker processes) -----------------------------------------------------


def write_oracle_general(keys: np.ndarray, path: Path) -> None:
    """libCacheSim's oracleGeneral records, size 1, with real next-access times (Belady)."""
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    next_access = np.full(n, -1, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    next_access[order[:-1][same]] = order[1:][same]
    records = np.zeros(n, dtype=[("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")])
    records["time"] = np.arange(n)
    records["key"] = keys
    records["size"] = 1
    records["next"] = next_access
    records.tofile(path)


_KEYS: dict[str, list[int]] = {}


def _keys(folder: str, trace: str) -> list[int]:
    if trace not in _KEYS:
        _KEYS.clear()  # one trace at a time per worker: tasks arrive grouped by trace
        _KEYS[trace] = np.load(Path(folder) / f"{trace}.npy").tolist()
    return _KEYS[trace]


Task = tuple[str, str, str, int, str]  # (kind, folder, trace, size, column)
LCS_TIMEOUT = 10.0  # seconds (--timeout); the longest regular run here takes about 2


def _libcachesim(folder: str, trace: str, size: int, column: str) -> float:
    """libCacheSim's miss ratio, or NaN for a run that did not finish in LCS_TIMEOUT.

    Some algorithms never finish at some tiny sizes (libCacheSim 0.3.5's LFUDA at 65
    entries, for one), and a C loop cannot be interrupted from Python: so each run is a
    forked child, killed when it overruns."""
    import libcachesim as lcs  # imported once per worker, before the fork

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send the result, leave without any Python cleanup
        try:
            name = "Belady" if column == "Belady" else LIBCACHESIM[column]
            path = str(Path(folder) / f"{trace}.oracleGeneral.bin")
            reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
            miss, _byte_miss = getattr(lcs, name)(size).process_trace(reader)
            os.write(write_end, struct.pack("<d", miss))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], LCS_TIMEOUT)
        data = os.read(read_end, 8) if ready else b""
        if not ready:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return struct.unpack("<d", data)[0] if len(data) == 8 else math.nan


def run_task(task: Task) -> tuple[Task, float, float]:
    kind, folder, trace, size, column = task
    started = time.perf_counter()
    if kind == "lcs":
        miss = _libcachesim(folder, trace, size, column)
    else:
        keys = _keys(folder, trace)
        if kind == "opt":
            policy: Any = OPTPolicy(size, keys)
        else:
            name, options = (OURS | {k: v[:2] for k, v in TWINS.items()})[column]
            policy = make_policy(name, size, **dict(options))
        miss = 1.0 - sum(map(policy.access, keys)) / len(keys)
    return task, float(miss), time.perf_counter() - started


# -- driver ---------------------------------------------------------------------------


@dataclass
class Trace:
    name: str
    family: str
    description: str
    requests: int
    unique: int
    sizes: list[tuple[int, str]]  # (capacity, label)


def sizes_for(name: str, unique: int) -> list[tuple[int, str]]:
    out = []
    for percent in PERCENTS:
        size = max(1, math.floor(unique * percent / 100 + 0.5))
        if size >= MIN_SIZE and size not in [s for s, _ in out]:
            out.append((size, f"{name}@{size} ({100 * size / unique:.3g}%)"))
    return out


SECONDS: dict[str, float] = defaultdict(float)  # worker seconds by column, for the record


def run_all(tasks: list[Task], jobs: int) -> dict[tuple[str, int, str], float]:
    results: dict[tuple[str, int, str], float] = {}
    done = 0
    report_every = max(1, len(tasks) // 20)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for (kind, _, trace, size, column), miss, secs in pool.map(run_task, tasks, chunksize=1):
            results[trace, size, column] = miss
            SECONDS[f"{'libCacheSim ' if kind == 'lcs' else 'ours '}{column}"] += secs
            done += 1
            if done % report_every == 0 or done == len(tasks):
                print(f"  {done}/{len(tasks)} runs", file=sys.stderr, flush=True)
    return results


def no_result(value: float, size: int, lru: float | None) -> bool:
    """A run that did not finish, or a libCacheSim 1.0 that is a structure rounded to
    nothing: a dash in ANCHORS.md."""
    if math.isnan(value):
        return True
    return value == 1.0 and (size < 100 or (lru is not None and lru < 1.0))


def _summary(rows: Sequence[Row], ours: dict[str, float]) -> tuple[int, float, str, float, bool]:
    deltas = {r.label: ours[r.label] - r.best[1] for r in rows}
    worst = max(deltas, key=lambda label: deltas[label])
    with contextlib.redirect_stdout(io.StringIO()):
        verdict = score(rows, ours)
    within = sum(1 for d in deltas.values() if d <= 0.01)
    mean = sum(ours[r.label] for r in rows) / len(rows)
    return within, 100 * deltas[worst], worst, mean, verdict


def main(argv: Sequence[str] | None = None) -> int:
    global LCS_TIMEOUT  # set from --timeout; the forked workers inherit it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path.home() / ".cache" / "stratacache-heldout",
        help="where the real trace's sdist is kept (fetched with pip when missing)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=LCS_TIMEOUT,
        help="seconds after which a libCacheSim run counts as not finished",
    )
    parser.add_argument("--no-real", action="store_true", help="synthetic workloads only")
    parser.add_argument("--no-checks", action="store_true", help="skip the harness checks")
    parser.add_argument("--only", action="append", default=[], help="workloads to keep")
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="ANCHORS.md folder")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="heldout",
        help="the workload set: the held-out set, or the validation set kept aside",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="draw workload i from seed SEED + i instead of its own seed (another sample)",
    )
    args = parser.parse_args(argv)
    LCS_TIMEOUT = args.timeout
    import libcachesim

    started = time.perf_counter()
    print(
        f"workloads: {args.variant}; default policy: {DEFAULT_POLICY}; "
        f"libcachesim {libcachesim.__version__}; "
        f"numpy {np.__version__}; {args.jobs} workers"
    )
    with tempfile.TemporaryDirectory(prefix="heldout-") as folder:
        traces: list[Trace] = []

        def add(name: str, family: str, description: str, keys: np.ndarray) -> None:
            np.save(Path(folder) / f"{name}.npy", keys)
            write_oracle_general(keys, Path(folder) / f"{name}.oracleGeneral.bin")
            unique = len(np.unique(keys))
            sizes = sizes_for(name, unique)
            traces.append(Trace(name, family, description, len(keys), unique, sizes))

        for index, w in enumerate(VARIANTS[args.variant]):
            if args.only and not any(text in w.name for text in args.only):
                continue
            seed = w.seed if args.seed is None else args.seed + index
            add(
                w.name,
                w.family,
                f"{w.description}; seed {seed}",
                w.make(np.random.default_rng(seed)),
            )
        if not args.no_real and (not args.only or any("parda" in t for t in args.only)):
            parda = parda_keys(args.data, fetch=True)
            if parda is not None:
                source = f"real: parda.trace from the {PARDA_SDIST} sdist"
                if args.variant == "heldout":
                    add("parda", "real", f"{source}, byte addresses as keys", parda)
                    add(
                        "parda-lines", "real", f"{source}, 64-byte lines (address >> 6)", parda >> 6
                    )
                else:
                    # No other real trace could be had: the same one at another granularity,
                    # which is not independent of the held-out set's two views of it.
                    add(
                        "v-parda-16B",
                        "real",
                        f"{source}, 16-byte blocks (address >> 4)",
                        parda >> 4,
                    )
        print(f"workloads built in {time.perf_counter() - started:.1f}s\n")
        print(f"{'workload':<16} {'family':<8} {'requests':>10} {'unique':>9}  sizes")
        for t in traces:
            sizes = ", ".join(str(s) for s, _ in t.sizes)
            print(f"{t.name:<16} {t.family:<8} {t.requests:>10,} {t.unique:>9,}  {sizes}")
        print()
        for t in traces:
            print(f"{t.name}: {t.description}")

        columns = [("lcs", c) for c in LIBCACHESIM] + [("ours", c) for c in OURS]
        columns.append(("opt", "OPT"))
        if not args.no_checks:
            columns += [("lcs", "Belady")] + [("ours", c) for c in TWINS]
        tasks: list[Task] = [
            (kind, folder, t.name, size, column)
            for t in traces
            for size, _ in t.sizes
            for kind, column in columns
        ]
        print(f"\n{len(tasks)} runs on {args.jobs} workers", flush=True)
        results = run_all(tasks, args.jobs)

        anchor_lines: list[str] = []
        if not args.no_checks:
            anchor_lines = check_anchors(args.traces, folder, args.jobs)

    rows: list[Row] = []
    ours: dict[str, dict[str, float]] = defaultdict(dict)
    dropped: list[str] = []
    family_of: dict[str, str] = {}
    for t in traces:
        for size, label in t.sizes:
            lru = results[t.name, size, "LRU"]
            theirs = {}
            for column in LIBCACHESIM:
                value = results[t.name, size, column]
                if no_result(value, size, lru):
                    why = "did not finish" if math.isnan(value) else "1.0"
                    dropped.append(f"{column} at {label} ({why})")
                else:
                    theirs[column] = value
            rows.append(Row(t.name, size, label, theirs, results[t.name, size, "OPT"]))
            family_of[label] = t.family
            for column in OURS:
                ours[column][label] = results[t.name, size, column]

    print_tables(rows, ours, family_of, dropped)
    print("\n## Scoring: the default policy (hit_ratio.score)\n")
    verdict = score(rows, ours["default"])
    print("\n## The same scoring for each column of ours\n")
    print(f"{'column':<8} {'within 1 pt':>12} {'worst (points)':>15}  {'mean':>7}  verdict")
    for column in OURS:
        within, worst, label, mean, ok = _summary(rows, ours[column])
        print(
            f"{column:<8} {within:>5}/{len(rows):<6} {worst:>+15.2f}  {mean:.4f}  "
            f"{'PASS' if ok else 'FAIL'}  (worst row {label})"
        )
    by_family: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_family[family_of[row.label]].append(row)
    print("\n## By family (delta = ours - row's best libCacheSim, points)\n")
    heads = " | ".join(f"{c}: within 1 / mean delta / worst" for c in OURS)
    print(f"| family | rows | {heads} |")
    print("|---|---:|" + "---:|" * len(OURS))
    for family, family_rows in by_family.items():
        cells = []
        for column in OURS:
            raw = [ours[column][r.label] - r.best[1] for r in family_rows]
            within = sum(1 for d in raw if d <= 0.01)
            deltas = [100 * d for d in raw]
            cells.append(
                f"{within}/{len(deltas)} / {sum(deltas) / len(deltas):+.2f} / {max(deltas):+.2f}"
            )
        print(f"| {family} | {len(family_rows)} | " + " | ".join(cells) + " |")

    if not args.no_checks:
        print("\n## Harness check 1: our twins against libCacheSim on the held-out rows\n")
        twins = dict(TWINS) | {"OPT": ("opt", (), "Belady")}
        for ours_column, (_, _, their_column) in twins.items():
            diffs = [
                results[t.name, size, ours_column] - results[t.name, size, their_column]
                for t in traces
                for size, _ in t.sizes
                if not math.isnan(results[t.name, size, their_column])
            ]
            exact = sum(1 for d in diffs if abs(d) < 5e-5)
            print(
                f"{ours_column:>7} vs {their_column:<8} rows {len(diffs):>3}  equal to 4 decimals "
                f"{exact:>3}  max |diff| {100 * max(map(abs, diffs)):.3f} points  mean diff "
                f"{100 * sum(diffs) / len(diffs):+.3f} points"
            )
        print("\n## Harness check 2: libCacheSim driven as here against ANCHORS.md\n")
        print("\n".join(anchor_lines))
    print("\nworker seconds by column: " + ", ".join(f"{k} {v:.0f}" for k, v in SECONDS.items()))
    print(f"total {time.perf_counter() - started:.0f}s wall")
    return 0 if verdict else 1


def print_tables(
    rows: Sequence[Row],
    ours: dict[str, dict[str, float]],
    family_of: dict[str, str],
    dropped: list[str],
) -> None:
    print("\n## Per row (miss ratios; delta = default - best libCacheSim, points)\n")
    print(
        "| trace@size | ours (default) | climb | fixed | best libCacheSim | OPT | delta | "
        "delta climb | delta fixed |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for row in rows:
        name, best = row.best
        d, c, f = (100 * (ours[col][row.label] - best) for col in ("default", "climb", "fixed"))
        print(
            f"| {row.label} | {ours['default'][row.label]:.4f} | {ours['climb'][row.label]:.4f} | "
            f"{ours['fixed'][row.label]:.4f} | {best:.4f} ({name}) | {row.opt:.4f} | {d:+.2f} | "
            f"{c:+.2f} | {f:+.2f} |"
        )
    print("\n## libCacheSim, every algorithm (a dash: no result)\n")
    print("| trace@size | " + " | ".join(LIBCACHESIM) + " | OPT (ours) |")
    print("|---|" + "---:|" * (len(LIBCACHESIM) + 1))
    for row in rows:
        cells = [f"{row.theirs[c]:.4f}" if c in row.theirs else "–" for c in LIBCACHESIM]
        print(f"| {row.label} | " + " | ".join(cells) + f" | {row.opt:.4f} |")
    print(f"\nlibCacheSim results left out: {', '.join(dropped) or 'none'}")


def check_anchors(traces: Path, folder: str, jobs: int) -> list[str]:
    """libCacheSim, driven as above, on the ANCHORS.md rows of traces under 200k requests."""
    files, rows = parse_anchors(traces / "ANCHORS.md")
    tasks: list[Task] = []
    keep: list[Row] = []
    for trace in sorted({r.trace for r in rows}):
        keys = np.asarray(read_trace(traces / files[trace]).keys, dtype=np.uint64)
        if len(keys) >= 200_000:
            continue
        write_oracle_general(keys, Path(folder) / f"anchor-{trace}.oracleGeneral.bin")
        for row in rows:
            if row.trace == trace:
                keep.append(row)
                tasks += [("lcs", folder, f"anchor-{trace}", row.size, c) for c in row.theirs]
    results = run_all(tasks, jobs)
    diffs = [
        (column, results[f"anchor-{row.trace}", row.size, column] - value)
        for row in keep
        for column, value in row.theirs.items()
    ]
    lines = [f"{len(keep)} rows of ANCHORS.md (its traces under 200k requests)"]
    for group, names in (
        ("deterministic", [c for c in LIBCACHESIM if c not in RANDOMIZED]),
        ("randomized", list(RANDOMIZED)),
    ):
        pairs = [d for (column, d) in diffs if column in names]
        finished = [d for d in pairs if not math.isnan(d)]
        # ANCHORS.md prints 4 decimals: a difference of one unit in the last place is rounding.
        same = sum(1 for d in finished if abs(d) <= 1.00001e-4)
        worst = max(finished, key=abs)
        lines.append(
            f"  {group} ({', '.join(names)}): {len(pairs)} figures, {same} equal to the printed "
            f"4 decimals (+-1 in the last), {len(pairs) - len(finished)} did not finish, "
            f"largest difference {100 * worst:+.2f} points"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
