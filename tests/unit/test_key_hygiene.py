"""Key hygiene: every bad key is an InvalidKeyError from every public method of Cache and
AsyncCache, whatever the levels; and the storage names of shared tiers keep literal keys
and hashed keys in two disjoint spaces (no key can evict another by taking its name)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache import AsyncCache, Cache, MemoryTier, SQLiteTier
from stratacache.errors import CacheError, InvalidKeyError, KeyTooLongError
from stratacache.keys import (
    HASH_MARKER,
    KeyRules,
    storage_key,
    validate_items,
    validate_key,
    validate_keys,
)
from stratacache.origin import CallableOrigin
from stratacache.tiers.memcached import MemcachedTier
from stratacache.tiers.redis import RedisTier
from stratacache.tiers.remote import NameMapper

from ..conftest import Driver, FakeClock

# ---------------------------------------------------------------------------- bad keys

# (key, a word the message must contain to name what was wrong)
BAD_KEYS: list[tuple[Any, str]] = [
    (["a"], "list"),
    ({"a": 1}, "dict"),
    (5, "int"),
    (b"k", "bytes"),
    (None, "NoneType"),
    ("", "empty"),
    (("t",), "tuple"),
]

LEVELS = ["l1", "l1+origin", "l1+sqlite", "sqlite"]


def _make(kind: str, cls: type, tmp_path: Path, clock: FakeClock) -> Any:
    def memory() -> MemoryTier:
        return MemoryTier(100, clock=clock.monotonic, wall_clock=clock.time)

    def sqlite() -> SQLiteTier:
        return SQLiteTier(tmp_path / f"{kind}.db", wall_clock=clock.time)

    levels: list[Any] = {
        "l1": lambda: [memory()],
        "l1+origin": lambda: [memory()],
        "l1+sqlite": lambda: [memory(), sqlite()],
        "sqlite": lambda: [sqlite()],
    }[kind]()
    origin = None
    if kind == "l1+origin":  # a writable origin: every call runs a flow, none stays in L1
        backing: dict[str, Any] = {}
        origin = CallableOrigin(
            lambda keys: {k: backing[k] for k in keys if k in backing},
            backing.update,
            lambda keys: [backing.pop(k, None) for k in keys],
        )
    return cls(levels, origin, clock=clock.monotonic, wall_clock=clock.time)


@pytest.fixture(params=LEVELS)
def cache(
    request: pytest.FixtureRequest,
    driver: Driver,
    tmp_path: Path,
    clock: FakeClock,
    both_implementations: str,
) -> Iterator[Any]:
    made = _make(request.param, AsyncCache if driver.mode == "async" else Cache, tmp_path, clock)
    yield made
    driver(made.close())


def single_key_calls(cache: Any, key: Any) -> dict[str, Callable[[], Any]]:
    return {
        "get": lambda: cache.get(key),
        "get_or_load": lambda: cache.get_or_load(key, lambda keys: {k: 1 for k in keys}),
        "set": lambda: cache.set(key, 1),
        "set_many": lambda: cache.set_many({key: 1}),
        "get_many": lambda: cache.get_many([key]),
        "delete": lambda: cache.delete(key),
        "delete_many": lambda: cache.delete_many([key]),
        "invalidate": lambda: cache.invalidate(key),
        "invalidate_many": lambda: cache.invalidate_many([key]),
    }


def check_every_method_refuses(driver: Driver, cache: Any, key: Any, word: str) -> None:
    """Every public method raises InvalidKeyError naming the problem; nothing else."""
    unhashable = not _hashable(key)
    for method, call in single_key_calls(cache, key).items():
        if method == "set_many" and unhashable:
            continue  # {key: 1} cannot even be built; see the non-mapping test
        with pytest.raises(InvalidKeyError) as info:
            driver(call())
        assert isinstance(info.value, CacheError)
        message = str(info.value)
        assert word in message, f"{method}({key!r}): {message}"
        assert "non-empty str" in message, f"{method}({key!r}): {message}"  # what is right


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize(("key", "word"), BAD_KEYS, ids=[repr(k) for k, _ in BAD_KEYS])
def test_every_method_refuses_a_bad_key(driver: Driver, cache: Any, key: Any, word: str) -> None:
    check_every_method_refuses(driver, cache, key, word)


@pytest.mark.parametrize("key", [["a"], {"a": 1}, {"a"}])
def test_an_unhashable_key_is_an_invalid_key_error_not_a_type_error(
    driver: Driver, cache: Any, key: Any
) -> None:
    """The finding: with a level below L1 (or none), ``set`` built ``{key: value}`` before
    checking the key, so a list raised a bare TypeError."""
    for call in (lambda: cache.set(key, 1), lambda: cache.delete(key)):
        with pytest.raises(InvalidKeyError, match=type(key).__qualname__):
            driver(call())


def test_a_key_too_long_for_a_shared_level_is_an_invalid_key_error(
    driver: Driver, cache: Any, request: pytest.FixtureRequest
) -> None:
    """The finding: a 70,000-character key raised SerializationError from set, though
    keys are what InvalidKeyError is for. A read of that key still works: the level that
    cannot carry it is left out of the fill, and only a private level keeps it."""
    key = "k" * 70_000
    shared = "sqlite" in request.node.callspec.params["cache"]
    for call in (lambda: cache.set(key, 1), lambda: cache.set_many({key: 1, "other": 2})):
        if shared:
            with pytest.raises(InvalidKeyError, match="at most 65535 bytes") as info:
                driver(call())
            assert isinstance(info.value, KeyTooLongError)
        else:
            driver(call())
    assert driver(cache.get_or_load(key, lambda keys: {k: 7 for k in keys})) == (7 if shared else 1)
    kept = driver(cache.get(key, None))
    assert kept == (
        None if request.node.callspec.params["cache"] == "sqlite" else 7 if shared else 1
    )


def test_the_cache_still_works_after_refusals(driver: Driver, cache: Any) -> None:
    driver(cache.set("good", 1))
    for key, word in BAD_KEYS:
        check_every_method_refuses(driver, cache, key, word)
    assert driver(cache.get("good")) == 1
    assert driver(cache.get_many(["good"])) == {"good": 1}


def test_a_bad_key_among_good_ones_changes_nothing(driver: Driver, cache: Any) -> None:
    driver(cache.set("a", 1))
    with pytest.raises(InvalidKeyError):
        driver(cache.set_many({"b": 2, 3: 3}))
    with pytest.raises(InvalidKeyError):
        driver(cache.delete_many(["a", None]))
    with pytest.raises(InvalidKeyError):
        driver(cache.invalidate_many(["a", ["x"]]))
    assert driver(cache.get_many(["a", "b"])) == {"a": 1}


@pytest.mark.parametrize("method", ["get_many", "delete_many", "invalidate_many"])
@pytest.mark.parametrize("single", ["abc", b"abc"])
def test_a_single_str_where_keys_are_expected_is_refused(
    driver: Driver, cache: Any, method: str, single: Any
) -> None:
    for key in ("a", "b", "c", "abc"):
        driver(cache.set(key, key))
    with pytest.raises(InvalidKeyError) as info:
        driver(getattr(cache, method)(single))
    message = str(info.value)
    assert method in message and "iterable of keys" in message and "[key]" in message
    # Nothing was deleted or invalidated character by character.
    assert driver(cache.get_many(["a", "b", "c", "abc"])) == {k: k for k in ("a", "b", "c", "abc")}


@pytest.mark.parametrize("method", ["get_many", "delete_many", "invalidate_many"])
@pytest.mark.parametrize("not_iterable", [5, None])
def test_a_non_iterable_where_keys_are_expected_is_refused(
    driver: Driver, cache: Any, method: str, not_iterable: Any
) -> None:
    with pytest.raises(InvalidKeyError, match="iterable of keys"):
        driver(getattr(cache, method)(not_iterable))


@pytest.mark.parametrize("items", ["abc", b"abc", [("k", 1)], 5, None])
def test_set_many_wants_a_mapping(driver: Driver, cache: Any, items: Any) -> None:
    with pytest.raises(InvalidKeyError, match=r"set_many takes a mapping .*pass a dict"):
        driver(cache.set_many(items))


def test_good_iterables_of_keys_still_work(driver: Driver, cache: Any) -> None:
    driver(cache.set_many({"a": 1, "b": 2, "c": 3}))
    assert driver(cache.get_many(k for k in "ab")) == {"a": 1, "b": 2}
    assert driver(cache.get_many(("a",))) == {"a": 1}
    driver(cache.invalidate_many({"a"}))
    driver(cache.delete_many({"b": None}))  # a mapping iterates its keys
    reloaded = {"a": 1} if cache.origin is not None else {}  # invalidate keeps the origin's
    assert driver(cache.get_many(["a", "b", "c"])) == {**reloaded, "c": 3}


def test_the_l1_hit_path_stays_the_bound_reader(
    both_implementations: str, clock: FakeClock
) -> None:
    """Validation lives on the slow paths: ``get`` is still the reader bound over L1 (the
    compiled one when it is built), with no Python check in front of it."""
    from stratacache import _accel

    cache = Cache([MemoryTier(10, clock=clock.monotonic)], clock=clock.monotonic)
    if _accel.speedups is not None:
        assert isinstance(cache.get, _accel.speedups.Reader)
    cache.set("k", 1)
    assert cache.get("k") == 1
    with pytest.raises(InvalidKeyError):
        cache.get(["k"])


def test_validators_return_what_they_checked() -> None:
    assert validate_key("k") == "k"
    assert validate_keys(iter(["a", "b"]), "get_many") == ["a", "b"]
    assert validate_items({"a": 1}, "set_many") == {"a": 1}
    with pytest.raises(InvalidKeyError, match="got the empty string"):
        validate_key("")


# ---------------------------------------------------------------------------- storage names

REDIS_RULES = RedisTier.key_rules
MEMCACHED_RULES = MemcachedTier.key_rules
RULES = {"redis": REDIS_RULES, "memcached": MEMCACHED_RULES}
PREFIXES = ["ns:", "ns:7:"]  # a tier's namespace; memcached adds its generation


def sha(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def hashed_keys(rules: KeyRules) -> list[str]:
    """Keys that the store with ``rules`` cannot take literally."""
    keys = ["k" * (rules.max_bytes + 1), "line\r\nbreak", "nul\x00", "del\x7f"]
    if not rules.allow_whitespace:
        keys += ["a space", "tab\tkey", "ключ " * 60]
    return keys


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("store", sorted(RULES))
def test_a_literal_key_never_takes_a_hashed_keys_name(store: str, prefix: str) -> None:
    rules = RULES[store]
    mapper = NameMapper(prefix, rules)
    for key in hashed_keys(rules):
        hashed = mapper.name(key)
        assert hashed == f"{prefix}#{sha(key)}"  # the hashed format is unchanged
        impostor = HASH_MARKER + sha(key)
        assert rules.accepts(prefix + impostor)  # a store could take it literally...
        assert mapper.name(impostor) != hashed  # ...but it gets a name of its own
        assert mapper.name(impostor) == f"{prefix}#{sha(impostor)}"
        assert storage_key(prefix, impostor, rules) == mapper.name(impostor)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("store", sorted(RULES))
def test_ordinary_names_are_unchanged(store: str, prefix: str) -> None:
    mapper = NameMapper(prefix, RULES[store])
    for key in ["user:42", "a", "x#y", "tail#", "ключ", "a" * 100, "{tag}:k"]:
        assert mapper.name(key) == prefix + key
        assert storage_key(prefix, key, RULES[store]) == prefix + key


@pytest.mark.parametrize("store", sorted(RULES))
def test_keys_starting_with_the_marker_are_hashed_and_valid(store: str) -> None:
    rules = RULES[store]
    mapper = NameMapper("ns:", rules)
    for key in ["#", "#x", "##", "#" + "0" * 64, "# spaced", "#\r\n"]:
        name = mapper.name(key)
        assert name == f"ns:#{sha(key)}" and rules.accepts(name)


key_text = st.text(
    alphabet="#aZ0: \t\r\n\x7féк\ud800",
    max_size=12,
) | st.builds(lambda n: "k" * n, st.integers(0, 1100))


@pytest.mark.parametrize("store", sorted(RULES))
@given(a=key_text, b=key_text)
def test_names_are_disjoint_and_agree_with_storage_key(store: str, a: str, b: str) -> None:
    rules = RULES[store]
    mapper = NameMapper("ns:", rules)
    for key in (a, b):
        name = mapper.name(key)
        assert name == storage_key("ns:", key, rules)  # the fast path agrees with the rules
        assert rules.accepts(name)
        assert name in ("ns:" + key, f"ns:#{sha(key)}")
        if name == "ns:" + key:  # a literal name never looks like a hashed one
            assert not key.startswith(HASH_MARKER)
    for key in (a, b):
        impostor = HASH_MARKER + sha(key)
        if impostor != key:
            assert mapper.name(impostor) != mapper.name(key)
    if a != b:
        assert mapper.name(a) != mapper.name(b)
