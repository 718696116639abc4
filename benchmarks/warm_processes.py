"""Two processes warm the same 2,000 keys at once over one SQLite L2; a shared ledger counts
origin loads (expect one per key: leases).

    python benchmarks/warm_processes.py
"""

import multiprocessing as mp
import os
import sqlite3
import tempfile
import time


def origin_factory(dbpath):
    def origin(keys):
        time.sleep(0.02)
        con = sqlite3.connect(dbpath, timeout=10)
        with con:
            con.executemany("INSERT INTO loads VALUES (?)", [(k,) for k in keys])
        con.close()
        return {k: {"id": k} for k in keys}

    return origin


def run(d, name, q):
    from stratacache import Cache, MemoryTier, SQLiteTier, Warmer
    from stratacache.warming import keys_from_file

    cache = Cache(
        [MemoryTier(1000), SQLiteTier(os.path.join(d, "l2.db"))],
        origin_factory(os.path.join(d, "ledger.db")),
    )
    w = Warmer(cache, max_concurrency=4, batch_size=50)
    w.add("file", keys_from_file(os.path.join(d, "keys.txt")))
    res = w.run()
    q.put((name, [(r.name, r.items, r.success, r.error) for r in res], cache.stats().lease_waits))
    cache.close()


if __name__ == "__main__":
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "keys.txt"), "w") as f:
        f.write("\n".join(f"user:{i}" for i in range(2000)))
    con = sqlite3.connect(os.path.join(d, "ledger.db"))
    con.execute("CREATE TABLE loads (k TEXT)")
    con.commit()
    con.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=run, args=(d, f"p{i}", q)) for i in range(2)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    out = [q.get(timeout=120) for _ in ps]
    for p in ps:
        p.join()
    con = sqlite3.connect(os.path.join(d, "ledger.db"))
    total, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT k) FROM loads").fetchone()
    print(out)
    print("origin loads", total, "distinct", distinct, f"{time.perf_counter() - t:.1f}s")
