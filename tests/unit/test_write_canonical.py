"""Write-through keeps what the origin says it stored (issue 9, point 3), whichever kind
of origin answers: the levels never keep the caller's value when the origin's differs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stratacache import (
    AsyncCache,
    Cache,
    CallableOrigin,
    MemoryTier,
    SerializationError,
    SQLiteTier,
)


class Table:
    """An origin that normalises what it stores (like a database with column types) and
    can be told to leave keys out of its answer or answer with a value L2 cannot hold."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.loads = 0
        self.omit: set[str] = set()
        self.odd: set[str] = set()

    def load(self, keys: list[str]) -> dict[str, Any]:
        self.loads += 1
        return {key: self.rows[key] for key in keys if key in self.rows}

    def store(self, items: dict[str, Any]) -> dict[str, Any]:
        answer = {}
        for key, value in items.items():
            self.rows[key] = {"name": str(value["name"]).strip(), "score": int(value["score"])}
            if key in self.odd:
                answer[key] = object()  # no shared serializer can encode it
            elif key not in self.omit:
                answer[key] = self.rows[key]
        return answer


def levels(tmp_path: Path) -> list[Any]:
    return [MemoryTier(100), SQLiteTier(tmp_path / "l2.db")]


def l2_value(cache: Any, key: str) -> Any:
    found = cache.levels[1].get_many([key])
    return found[key].value if key in found else None


def test_levels_hold_the_origins_answer_not_the_callers_value(tmp_path: Path) -> None:
    table = Table()
    cache = Cache(levels(tmp_path), CallableOrigin(table.load, table.store))
    cache.set("u:1", {"name": "  ada ", "score": "10"})
    canonical = {"name": "ada", "score": 10}
    assert cache.get("u:1") == canonical
    assert l2_value(cache, "u:1") == canonical
    assert table.loads == 0
    cache.close()


def test_a_key_left_out_of_the_answer_is_dropped_from_every_level(tmp_path: Path) -> None:
    table = Table()
    cache = Cache(levels(tmp_path), CallableOrigin(table.load, table.store))
    cache.set("u:2", {"name": "bob", "score": 1})
    assert l2_value(cache, "u:2") == {"name": "bob", "score": 1}
    table.omit.add("u:2")
    cache.set("u:2", {"name": "bob", "score": 2})
    assert l2_value(cache, "u:2") is None  # the old value is gone, the new one not assumed
    assert cache.levels[1].stats.too_large == 0
    assert cache.get("u:2") == {"name": "bob", "score": 2}  # loaded from the origin
    assert table.loads == 1
    cache.close()


def test_an_answer_l2_cannot_encode_drops_the_key_there_and_raises_nothing(
    tmp_path: Path,
) -> None:
    table = Table()
    cache = Cache(levels(tmp_path), CallableOrigin(table.load, table.store))
    cache.set("u:3", {"name": "cy", "score": 1})
    table.odd.add("u:3")
    cache.set("u:3", {"name": "cy", "score": 2})  # the origin has it: no error now
    assert l2_value(cache, "u:3") is None
    assert cache.levels[1].stats.unencodable == 1
    cache.close()


def test_async_write_keeps_the_origins_answer(tmp_path: Path) -> None:
    table = Table()

    async def store(items: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return table.store(items)

    async def scenario() -> None:
        cache = AsyncCache(levels(tmp_path), CallableOrigin(table.load, store))
        await cache.set("u:4", {"name": " dee", "score": 4.0})
        assert await cache.get("u:4") == {"name": "dee", "score": 4}
        assert type((await cache.get("u:4"))["score"]) is int
        assert l2_value(cache, "u:4") == {"name": "dee", "score": 4}
        await cache.close()

    asyncio.run(scenario())


def test_a_str_subclass_dict_key_is_refused_not_turned_into_str(tmp_path: Path) -> None:
    class Column(str):
        pass

    cache = Cache(levels(tmp_path))
    with pytest.raises(SerializationError, match="Column"):
        cache.set("k", {Column("id"): 1})
    cache.close()
