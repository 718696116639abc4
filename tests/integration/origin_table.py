"""The origin the multi-process tests share: a SQLite file with a table ``items (key,
value)``, read directly to know what the origin holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def make_origin_db(path: Path, keys: int = 0) -> str:
    """The table, with rows ``k0..k{keys-1}`` = ``"v0"``; returns its SQLAlchemy URL."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (key TEXT PRIMARY KEY, value TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(f"k{i}", "v0") for i in range(keys)])
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def origin_rows(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    rows = dict(conn.execute("SELECT key, value FROM items"))
    conn.close()
    return rows
