"""The origin the multi-process tests share: a SQLite file with a table ``items (key,
value)``, read directly to know what the origin holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: the end of an origin URL whose table numbers its rows (a ``version`` column)
VERSIONED = "#versioned"


def make_origin_db(path: Path, keys: int = 0, *, versioned: bool = False) -> str:
    """The table, with rows ``k0..k{keys-1}`` = ``"v0"``; returns its SQLAlchemy URL
    (ending in :data:`VERSIONED` when the table has a version column)."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE items (key TEXT PRIMARY KEY, value TEXT, version INTEGER NOT NULL DEFAULT 0)"
    )
    conn.executemany(
        "INSERT INTO items (key, value) VALUES (?, ?)", [(f"k{i}", "v0") for i in range(keys)]
    )
    conn.commit()
    conn.close()
    return f"sqlite:///{path}" + (VERSIONED if versioned else "")


def origin_rows(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    rows = dict(conn.execute("SELECT key, value FROM items"))
    conn.close()
    return rows
