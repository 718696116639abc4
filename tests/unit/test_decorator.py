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
    assert area(2, height=3) == 6  # another spelling of the same call: the same entry
    assert area(height=3, width=2) == 6
    assert area(4) == 4
    assert area(4, 1) == 4  # the default, spelled out
    assert calls == [(2, 3), (4, 1)]
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
    key = f.cache_key(1, b={"z": 1, "a": [1.5, None]})
    assert key == f"{__name__}.module_level_function:a=1,b={{'a':[1.5,None],'z':1}}"
    assert f.cache_key({"b": 1, "a": 2}) == f.cache_key({"a": 2, "b": 1})
    assert f.cache_key("x") == f"{__name__}.module_level_function:a='x',b=None"
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
    assert outputs == {"users.get:a=(42,'ü',frozenset({1,3})),k={'flag':True}"}


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


def test_every_spelling_is_one_entry_and_invalidate_takes_any_spelling() -> None:
    cache = Cache([MemoryTier(100)])
    calls: list[tuple[int, int]] = []
    version = 1

    @cache.cached(prefix="f")
    def f(a: int, b: int = 3) -> tuple[int, int]:
        calls.append((a, b))
        return (a + b, version)

    assert f(1) == f(1, 3) == f(a=1, b=3) == f(b=3, a=1) == (4, 1)
    assert calls == [(1, 3)]
    keys = {f.cache_key(1), f.cache_key(1, 3), f.cache_key(a=1, b=3), f.cache_key(1, b=3)}
    assert keys == {"f:a=1,b=3"}
    for spelling in ((1,), (1, 3)), ((), {"a": 1, "b": 3}), ((1,), {"b": 3}):
        version += 1
        args, kwargs = spelling if isinstance(spelling[1], dict) else (spelling[0], {})
        f.invalidate(*args, **kwargs)  # type: ignore[arg-type]
        assert f(1) == (4, version)  # no stale entry under another spelling
        assert f(a=1, b=3) == (4, version)
        assert f(1, 3) == (4, version)
    assert calls == [(1, 3)] * 4
    with pytest.raises(TypeError, match="f"):  # not a call of f: refused like f would
        f.cache_key(1, c=2)


def test_star_args_and_kwargs_are_keyed_deterministically() -> None:
    cache = Cache([MemoryTier(100)])

    @cache.cached(prefix="v")
    def v(a: int, *rest: int, flag: bool = False, **extra: Any) -> int:
        return a

    assert v.cache_key(1) == "v:a=1,flag=False"
    assert v.cache_key(1, 2, 3, x=1, b=2) == "v:a=1,rest=(2,3),flag=False,extra={'b':2,'x':1}"
    assert v.cache_key(1, 2, 3, b=2, x=1) == v.cache_key(1, 2, 3, x=1, b=2)
    assert v.cache_key(1, 2, 3, flag=False) == v.cache_key(1, 2, 3)
    assert v.cache_key(1, (2, 3)) != v.cache_key(1, 2, 3)


class Repo:
    """A class whose instances say nothing about their identity."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def __repr__(self) -> str:
        return f"Repo({self.name!r})"


_module_cache = Cache([MemoryTier(100)])


class Account:
    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.calls = 0

    def __cache_key__(self) -> int:
        return self.account_id

    @_module_cache.cached(prefix="acct")
    def balance(self, currency: str = "EUR") -> int:
        self.calls += 1
        return self.account_id * 100


def test_methods_keyed_by_key_self_by_cache_key_or_skipping_self() -> None:
    cache = Cache([MemoryTier(100)])

    class Service(Repo):
        @cache.cached(prefix="svc.by-name", key_self=lambda self: self.name)
        def load(self, item: int, scale: int = 1) -> str:
            self.calls += 1
            return f"{self.name}:{item * scale}"

        @cache.cached(prefix="svc.shared", skip_self=True)
        def shared(self, item: int) -> int:
            self.calls += 1
            return item * 2

    a, a_again, b = Service("a"), Service("a"), Service("b")
    assert a.load(1) == "a:1"
    assert a_again.load(1, scale=1) == "a:1"  # same name: same entry, any spelling
    assert b.load(1) == "b:1"
    assert (a.calls, a_again.calls, b.calls) == (1, 0, 1)
    assert Service.load.cache_key(a, 1) == "svc.by-name:self='a',item=1,scale=1"
    Service.load.invalidate(a_again, item=1)  # the instance first, then any spelling
    assert a.load(1) == "a:1" and a.calls == 2

    assert a.shared(5) == 10 and b.shared(5) == 10
    assert a.calls + b.calls == 4  # b's call was a hit: self is not in the key
    assert Service.shared.cache_key(None, 5) == "svc.shared:item=5"

    x, x_again = Account(7), Account(7)
    assert x.balance() == 700 and x_again.balance("EUR") == 700
    assert x.calls + x_again.calls == 1
    assert Account.balance.cache_key(x) == f"acct:self={__name__}:Account[7],currency='EUR'"


def test_a_plain_function_with_an_object_argument_keyed_by_its_cache_key() -> None:
    cache = Cache([MemoryTier(100)])
    calls = 0

    @cache.cached(prefix="owner")
    def owner(account: Account, currency: str = "EUR") -> int:
        nonlocal calls
        calls += 1
        return account.account_id

    assert owner(Account(7)) == 7 and owner(Account(7), currency="EUR") == 7
    assert calls == 1
    assert owner.cache_key(Account(7)) == f"owner:account={__name__}:Account[7],currency='EUR'"


def test_a_cache_key_method_on_a_class_defined_in_a_function_is_refused_with_the_reason() -> None:
    cache = Cache([MemoryTier(100)])

    class Local(Account):
        @cache.cached(prefix="local")
        def get(self) -> int:
            return 1

        @cache.cached(prefix="local.by-id", key_self=lambda self: self.account_id)
        def get_by_id(self) -> int:
            return 2

    with pytest.raises(InvalidKeyError, match="inside a function"):
        Local(1).get()
    assert Local(1).get_by_id() == 2  # key_self= is the way out
    assert Local.get_by_id.cache_key(Local(1)) == "local.by-id:self=1"


def test_a_method_without_an_instance_key_is_refused_with_both_ways_out() -> None:
    cache = Cache([MemoryTier(100)])

    class Plain(Repo):
        @cache.cached(prefix="plain")
        def load(self, item: int) -> int:
            return item

    with pytest.raises(ConfigurationError) as info:
        Plain("a").load(1)
    message = str(info.value)
    assert "key_self=" in message and "skip_self=True" in message
    assert "__cache_key__" in message and "Plain" in message
    with pytest.raises(ConfigurationError):
        Plain.load.cache_key(Plain("a"), 1)


def test_method_options_are_checked_when_decorating() -> None:
    cache = Cache([MemoryTier(100)])
    with pytest.raises(ConfigurationError, match="not both"):
        cache.cached(prefix="x", key_self=lambda s: 1, skip_self=True)(module_level_function)
    with pytest.raises(ConfigurationError, match="key="):
        cache.cached(prefix="x", key=lambda *a: "k", skip_self=True)(module_level_function)

    def no_params() -> int:
        return 1

    with pytest.raises(ConfigurationError, match="first parameter"):
        cache.cached(prefix="x", skip_self=True)(no_params)


def test_async_methods_with_both_options() -> None:
    cache = AsyncCache([MemoryTier(100)])

    class Client(Repo):
        @cache.cached(prefix="client.get", key_self=lambda self: self.name)
        async def get(self, item: int) -> str:
            self.calls += 1
            await asyncio.sleep(0)
            return f"{self.name}/{item}"

        @cache.cached(prefix="client.version", skip_self=True)
        async def version(self, major: int = 1) -> str:
            self.calls += 1
            return f"v{major}"

        @cache.cached(prefix="client.bad")
        async def bad(self) -> int:
            return 1

    async def scenario() -> None:
        a, a_again = Client("a"), Client("a")
        assert await a.get(1) == "a/1"
        assert await a_again.get(item=1) == "a/1"
        assert await a.version() == "v1" and await a_again.version(1) == "v1"
        assert (a.calls, a_again.calls) == (2, 0)
        await Client.get.invalidate(a_again, 1)
        assert await a.get(1) == "a/1" and a.calls == 3
        assert Client.version.cache_key(a, major=1) == "client.version:major=1"
        with pytest.raises(ConfigurationError, match="skip_self=True"):
            await a.bad()

    asyncio.run(scenario())
