"""The ``cached`` decorator on sync and async functions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, ConfigurationError, InvalidKeyError, MemoryTier


def test_sync_results_are_cached_per_arguments() -> None:
    cache = Cache([MemoryTier(100)])
    calls: list[tuple[Any, ...]] = []

    @cache.cached(ttl=60, prefix="area")
    def area(width: int, height: int = 1) -> int:
        calls.append((width, height))
        return width * height

    assert area(2, 3) == 6
    assert area(2, 3) == 6
    assert area(2, height=3) == 6  # other spelling, other key: computed once more
    assert area(4) == 4
    assert calls == [(2, 3), (2, 3), (4, 1)]
    assert area.__name__ == "area"


def test_none_results_are_cached_and_exceptions_are_not() -> None:
    cache = Cache([MemoryTier(100)])
    calls = 0

    @cache.cached(prefix="lookup")
    def lookup(x: int) -> Any:
        nonlocal calls
        calls += 1
        if x < 0:
            raise ValueError("negative")
        return None

    assert lookup(1) is None
    assert lookup(1) is None
    assert calls == 1
    with pytest.raises(ValueError, match="negative"):  # the function's own exception
        lookup(-1)
    with pytest.raises(ValueError):
        lookup(-1)
    assert calls == 3


def module_level_function(a: Any, b: Any = None) -> int:
    return 1


def test_keys_are_stable_text_with_module_and_qualname() -> None:
    cache = Cache([MemoryTier(100)])
    f = cache.cached()(module_level_function)
    key = f.cache_key(1, "x", b={"z": 1, "a": [1.5, None]})
    assert key == f"{__name__}.module_level_function:(1,'x'){{'b':{{'a':[1.5,None],'z':1}}}}"
    assert f.cache_key({"b": 1, "a": 2}) == f.cache_key({"a": 2, "b": 1})
    with pytest.raises(InvalidKeyError, match="key="):
        f(object())
    with pytest.raises(TypeError):  # InvalidKeyError is also a TypeError
        f(object())


def test_functions_without_a_unique_name_need_a_prefix() -> None:
    cache = Cache([MemoryTier(100)])

    def make(n: int) -> Any:
        def add(x: int) -> int:
            return x + n

        return add

    with pytest.raises(ConfigurationError, match="prefix="):
        cache.cached()(make(1))
    with pytest.raises(ConfigurationError, match="lambda"):
        cache.cached()(lambda x: x)
    add_one = cache.cached(prefix="add-one")(make(1))
    add_two = cache.cached(prefix="add-two")(make(2))
    assert (add_one(10), add_two(10)) == (11, 12)


def test_key_is_the_same_in_another_process() -> None:
    code = (
        "from stratacache import Cache, MemoryTier\n"
        "c = Cache([MemoryTier(10)])\n"
        "@c.cached(prefix='users.get')\n"
        "def g(*a, **k): return 0\n"
        "print(g.cache_key(42, 'ü', frozenset({3, 1}), flag=True))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {"users.get:(42,'ü',{1,3}){'flag':True}"}


def test_custom_key_function_and_invalidate() -> None:
    cache = Cache([MemoryTier(100)])
    version = 1

    @cache.cached(key=lambda user_id, **_: user_id, prefix="user")
    def profile(user_id: int, verbose: bool = False) -> dict[str, int]:
        return {"id": user_id, "v": version}

    assert profile(5) == {"id": 5, "v": 1}
    version = 2
    assert profile(5, verbose=True) == {"id": 5, "v": 1}  # same key by design
    profile.invalidate(5)
    assert profile(5) == {"id": 5, "v": 2}
    assert profile.cache_key(5) == "user:5"


def test_async_functions_with_async_cache() -> None:
    cache = AsyncCache([MemoryTier(100)])
    calls = 0

    @cache.cached(ttl=5, prefix="fetch")
    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return x * 10

    async def scenario() -> None:
        assert await fetch(3) == 30
        assert await fetch(3) == 30
        assert calls == 1
        await fetch.invalidate(3)
        assert await fetch(3) == 30
        assert calls == 2

    asyncio.run(scenario())


def test_mismatched_function_kind_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="AsyncCache"):

        @Cache([MemoryTier(10)]).cached()
        async def a() -> int:
            return 1

    with pytest.raises(ConfigurationError, match="sync Cache"):

        @AsyncCache([MemoryTier(10)]).cached()
        def b() -> int:
            return 1
