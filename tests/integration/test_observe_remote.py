"""What the cache tells the outside about its remote levels: OpenTelemetry spans around
origin loads and Redis calls (through the SDK's in-memory exporter), and the breaker's
transitions as events when Redis dies and comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stratacache import Cache, MemoryTier, tracing
from stratacache.config import tier_from_url
from stratacache.events import CacheEvent

from ..servers import RedisServer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def redis_level(server: RedisServer, namespace: str, **query: Any) -> Any:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return tier_from_url(f"{server.url}?{params}" if params else server.url, namespace=namespace)


def test_spans_cover_redis_calls_and_origin_loads(
    redis_server: RedisServer, spans: InMemorySpanExporter
) -> None:
    def origin(keys: list[str]) -> dict[str, str]:
        if "broken" in keys:
            raise RuntimeError("the database said no")
        return {k: k.upper() for k in keys}

    cache = Cache([MemoryTier(10), redis_level(redis_server, "spans")], origin, bus=None)
    with tracing_parent() as parent:
        assert cache.get("a") == "A"
    names = [s.name for s in spans.get_finished_spans()]
    assert "stratacache.level.get" in names
    assert "stratacache.origin.load" in names
    assert "stratacache.level.write" in names
    by_name = {s.name: s for s in spans.get_finished_spans()}
    get = by_name["stratacache.level.get"]
    assert get.attributes is not None
    assert get.attributes["stratacache.level"] == "L2"
    assert get.attributes["stratacache.level.kind"] == "redis"
    assert get.attributes["stratacache.keys"] == 1
    # Children of the application's span: a trace shows where the request's time went.
    assert get.parent is not None and get.parent.span_id == parent.get_span_context().span_id
    spans.clear()
    assert cache.get("a") == "A"  # an L1 hit: nothing leaves the process, no span
    assert spans.get_finished_spans() == ()
    with pytest.raises(Exception, match="the database said no"):
        cache.get("broken")
    failed = [s for s in spans.get_finished_spans() if s.name == "stratacache.origin.load"]
    assert failed and failed[0].status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed[0].events)
    cache.close()


class tracing_parent:
    """An application span around the cache call."""

    def __enter__(self) -> Any:
        provider = tracing._provider
        self._cm = provider.get_tracer("app").start_as_current_span("request")
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def test_without_a_provider_nothing_is_recorded(redis_server: RedisServer) -> None:
    assert tracing.span_for("stratacache.origin.load", {}) is None
    cache = Cache([MemoryTier(10), redis_level(redis_server, "nospans")], lambda ks: {}, bus=None)
    assert cache.get("a", None) is None
    cache.close()


def test_breaker_transitions_are_events(fresh_redis_server: RedisServer) -> None:
    level = redis_level(
        fresh_redis_server,
        "breaker-events",
        socket_timeout=0.3,
        connect_timeout=0.3,
        breaker_reset=0.3,
    )
    cache = Cache([MemoryTier(10), level], lambda keys: {k: k for k in keys}, bus=None)
    seen: list[CacheEvent] = []
    cache.on("breaker", seen.append)
    fresh_redis_server.kill()
    deadline = time.monotonic() + 10
    i = 0
    while not any(e.state == "open" for e in seen) and time.monotonic() < deadline:
        cache.get(f"k{i}")  # answered by the origin while L2 fails
        i += 1
    opened = next(e for e in seen if e.state == "open")
    assert opened.level == "L2" and opened.previous == "closed" and opened.reason
    fresh_redis_server.start()
    deadline = time.monotonic() + 15
    while not any(e.state == "closed" for e in seen) and time.monotonic() < deadline:
        cache.get(f"k{i}")
        i += 1
        time.sleep(0.02)
    states = [e.state for e in seen]
    assert "closed" in states, states
    assert states.index("open") < len(states) - 1 - states[::-1].index("closed")
    cache.close()
