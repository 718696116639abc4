"""Bad configuration gets a clear error that names what is wrong and what would be right."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stratacache import Cache, ConfigurationError, MemoryTier, SQLiteTier, SQLOrigin
from stratacache.config import redact, tier_from_url
from stratacache.serde import Codec


def test_unknown_url_option_names_it_and_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        tier_from_url(f"sqlite:///{tmp_path}/x.db?ttl=5&colour=blue")
    assert "'colour'" in str(info.value) and "max_entries" in str(info.value)


def test_unknown_scheme() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown tier scheme 'ftp'.*memory"):
        tier_from_url("ftp://host/x")


def test_bad_option_value() -> None:
    with pytest.raises(ConfigurationError, match=r"max_entries='lots'.*int"):
        tier_from_url("memory://?max_entries=lots")


def test_urls_build_tiers(tmp_path: Path) -> None:
    memory = tier_from_url("memory://?max_entries=50&ttl=5&policy=lru")
    assert isinstance(memory, MemoryTier) and memory.capacity == 50 and memory.ttl == 5
    sqlite = tier_from_url(f"sqlite:///{tmp_path}/c.db?namespace=app&ttl=60")
    assert isinstance(sqlite, SQLiteTier) and sqlite.namespace == "app"
    cache = Cache(["memory://?max_entries=10&ttl=5", f"sqlite:///{tmp_path}/d.db?ttl=60"])
    cache.set("k", 1)
    assert cache.get("k") == 1
    cache.close()


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:hunter2@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis+cluster://u:hunter2@h1:1,h2:2?x=1", "redis+cluster://u:***@h1:1,h2:2?x=1"),
        ("redis://:hunter2@h", "redis://:***@h"),
        ("redis://u:hun/ter#2@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u:hun?ter2@h/0", "redis://u:***@h/0"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        ("redis:/u:hunter2@h", "redis:***@h"),
        ("memcached://h1:1,h2:2", "memcached://h1:1,h2:2"),
        ("redis://user@h?q=a@b", "redis://user@h?q=a@b"),
    ],
)
def test_passwords_are_redacted(url: str, redacted: str) -> None:
    assert redact(url) == redacted
    assert "hunter2" not in redact(url)


@pytest.mark.parametrize(
    "url",
    [
        "memory://user:hunter2@host?x=1",
        "redis:/user:hunter2@host",
        "nosuch://user:hunter2@host",
        "sqlite:///x.db?password=hunter2",
    ],
)
def test_errors_about_urls_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        tier_from_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: MemoryTier(0), "positive"),
        (lambda: MemoryTier(max_bytes=100, max_entries=5), "not both"),
        (lambda: MemoryTier(10, ttl=-1), "ttl must be > 0"),
        (lambda: MemoryTier(10, policy="nope"), "unknown policy 'nope'"),
        (lambda: SQLiteTier(":memory:"), "would not be shared"),
        (lambda: SQLiteTier("/tmp/x.db", namespace="has space"), "namespace"),
        (lambda: Codec("pickle"), "signing key"),
        (lambda: Codec("yaml"), "unknown serializer 'yaml'; accepted: msgpack, json, pickle"),
        (lambda: Codec(signer=b"short"), "at least 16"),
        (lambda: Cache([]), "at least one level"),
        (lambda: Cache(MemoryTier(10)), "list of tiers"),
        (lambda: Cache([MemoryTier(10)], write="sideways"), "unknown write policy 'sideways'"),
        (lambda: Cache([MemoryTier(10)], ttl_jitter=2), "ttl_jitter"),
        (lambda: Cache([MemoryTier(10)], negative_ttl=0), "negative_ttl"),
        (lambda: Cache([MemoryTier(10)], origin=42), "origin must be"),
    ],
)
def test_bad_options_are_refused_clearly(build, pattern) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=pattern):
        build()


def test_same_tier_twice_is_refused() -> None:
    tier = MemoryTier(10)
    with pytest.raises(ConfigurationError, match="twice"):
        Cache([tier, tier])


def test_set_with_bad_ttl() -> None:
    cache = Cache([MemoryTier(10)])
    with pytest.raises(ConfigurationError, match="ttl"):
        cache.set("k", 1, ttl=0)


def test_a_private_level_below_a_shared_one_is_refused(tmp_path: Path) -> None:
    shared = SQLiteTier(tmp_path / "l1.db")
    with pytest.raises(ConfigurationError, match="private to this process but sits below"):
        Cache([shared, MemoryTier(10)])
    with pytest.raises(ConfigurationError, match="private_below_shared=True"):
        Cache([f"sqlite:///{tmp_path / 'l2.db'}", "memory://?max_entries=10"])
    allowed = Cache([shared, MemoryTier(10)], private_below_shared=True)
    allowed.set("k", 1)
    assert allowed.get("k") == 1
    allowed.close()


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("postgres://user:secret@db.example/app", "postgresql+psycopg://"),
        ("mysql+nodriver://db.example/app", "no database dialect or driver"),
        ("not a url", "is not a database URL"),
    ],
)
def test_database_url_mistakes_get_a_hint(url: str, hint: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(hint)) as caught:
        SQLOrigin(url, "users")
    assert "secret" not in str(caught.value)


def test_a_missing_table_leaves_no_file_behind(tmp_path: Path) -> None:
    path = tmp_path / "never-made.db"
    with pytest.raises(ConfigurationError, match="does not exist"):
        SQLOrigin(f"sqlite:///{path}", "users")
    assert not path.exists()
