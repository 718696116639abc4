"""Two OS processes share one SQLite tier: what one writes, the other reads, while both
write concurrently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stratacache import Cache, MemoryTier, SQLiteTier

WRITER = """
import sys, logging
logging.basicConfig(level=logging.WARNING)
from stratacache import Cache, MemoryTier, SQLiteTier
path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = Cache([MemoryTier(10), SQLiteTier(path, namespace="shared")])
for i in range(count):
    cache.set(f"{prefix}{i}", {"from": prefix, "i": i})
print(len(cache.get_many([f"{prefix}{i}" for i in range(count)])))
cache.close()
"""


def test_two_processes_write_and_read_the_same_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, path, prefix, "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in ("a", "b")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "300", err
        assert "skipped" not in err, err  # no write fell back to "level unavailable"
    # A third party (this process) sees both processes' writes.
    cache = Cache([MemoryTier(10), SQLiteTier(path, namespace="shared")])
    got = cache.get_many([f"a{i}" for i in range(300)] + [f"b{i}" for i in range(300)])
    assert len(got) == 600
    assert got["b299"] == {"from": "b", "i": 299}
    # and what this process writes, a child reads
    cache.set("parent", [1, 2, 3])
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from stratacache import Cache, MemoryTier, SQLiteTier;"
            "c = Cache([MemoryTier(10), SQLiteTier(sys.argv[1], namespace='shared')]);"
            "print(c.get('parent'))",
            path,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[1, 2, 3]"
    cache.close()
