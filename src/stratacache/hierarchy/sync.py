"""The synchronous cache: drives the hierarchy's flows with plain calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..entry import MISSING
from ..errors import OriginError
from ..steps import drive
from .base import L1_MISS, BaseCache, KeyBuilder, own_error
from .flow import Flow, Loader
from .ops import perform
from .safety import UNSET
from .safety import given as _given

__all__ = ["Cache", "run"]

T = TypeVar("T")


def run(flow: Flow) -> Any:
    """Perform every operation a flow yields, in this thread, and return its result."""
    return drive(flow, _perform)


_perform = perform


class Cache(BaseCache):
    """A multi-level cache: ``levels`` (top first: memory, then shared tiers) over an
    optional ``origin``.

    ``get`` answers an L1 hit without a lock or a method call; anything else walks down
    the levels, copies hits up, and loads what is missing everywhere from the loader, a
    registered loader or the origin, filling every level on the way back.

    An L1 hit hands back the stored object itself: do not mutate what you get. Lower
    levels hand back a decoded copy.
    """

    def _bind_get(self) -> None:
        # ``get`` is bound on the instance: an L1 hit costs one closure call, no method
        # lookup. What the closure calls on a miss is decided here too, so a cache with
        # nothing below L1 answers its misses without a second indirection.
        front = self._front
        if front is not None:
            local_miss = self._local_miss
            self.get = self._l1_reader(  # type: ignore[method-assign]
                local_miss or self._slow_get, local_misses=local_miss is not None
            )
        else:
            self.get = self._slow_get  # type: ignore[method-assign]
        writer = self._local_writer
        if writer is not None:
            self.set = writer  # type: ignore[method-assign]
        else:
            self.__dict__.pop("set", None)

    def _start_refresh(self, key: str) -> None:
        hierarchy = self._hierarchy
        hierarchy.background.submit(run, hierarchy.refresh([key]))

    def get(self, key: str, default: Any = MISSING) -> Any:  # replaced per instance
        """The value for ``key``: from the first level that has it, else loaded (a
        registered loader or the origin) and cached. Returns ``default`` (the
        :data:`~stratacache.MISSING` sentinel unless given) when nothing has it."""
        return self._slow_get(key, default)

    def _slow_get(self, key: str, default: Any = MISSING) -> Any:
        local_miss = self._local_miss
        if local_miss is not None and not self._closed:
            return local_miss(key, default)
        values = run(self._flow_get(key, l1_checked=True))
        return values.get(key, default)

    def get_many(
        self,
        keys: Iterable[str],
        *,
        fail_safe_max_age: float | None = UNSET,
        soft_timeout: float | None = UNSET,
        hard_timeout: float | None = UNSET,
    ) -> dict[str, Any]:
        """Values for the keys that have one (cached or loaded); the others are left out.
        Each level is asked once, for the keys still missing. The fail-safe keywords
        override the cache's for this call (see :mod:`stratacache.hierarchy.safety`)."""
        safety = self._safety(fail_safe_max_age, soft_timeout, hard_timeout)
        return run(self._flow_get_many(keys, safety))  # type: ignore[no-any-return]

    def get_or_load(
        self,
        key: str,
        loader: Loader,
        ttl: float | None = None,
        *,
        default: Any = MISSING,
        fail_safe_max_age: float | None = UNSET,
        soft_timeout: float | None = UNSET,
        hard_timeout: float | None = UNSET,
    ) -> Any:
        """Like ``get``, but a miss everywhere asks ``loader`` first. A loader is batch-shaped,
        like every loader here: it gets a list of keys (one, here) and returns a mapping
        ``{key: value}``; a key left out means "not found" and the call returns ``default``.
        What it returns is cached with ``ttl`` (bounded by each level's own)."""
        probe = self._probe
        if probe is not None:
            value = probe(key, L1_MISS)
            if value is not L1_MISS:
                return value
        safety = self._safety(fail_safe_max_age, soft_timeout, hard_timeout)
        flow = self._flow_get(key, loader, ttl, l1_checked=True, safety=safety)
        return run(flow).get(key, default)

    def set(
        self, key: str, value: Any, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> None:
        """Store ``value`` as the write policy says (write-through: the origin if it can
        store, then every level, before returning). ``ttl`` bounds the lifetime at every
        level; ``tags`` name groups that :meth:`invalidate_tag` drops at once."""
        run(self._flow_set(key, value, ttl, tags))

    def set_many(
        self,
        items: Mapping[str, Any],
        ttl: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        run(self._flow_set_many(items, ttl, tags))

    def invalidate_tag(self, tag: str) -> None:
        """Every entry set with ``tag`` before now reads as a miss from now on, at every
        level and in every process (the origin is untouched)."""
        run(self._flow_invalidate_tags([tag]))

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        run(self._flow_invalidate_tags(tags))

    def delete(self, key: str) -> None:
        """Remove ``key`` from the origin and from every level."""
        run(self._flow_delete([key]))

    def delete_many(self, keys: Iterable[str]) -> None:
        run(self._flow_delete(keys))

    def invalidate(self, key: str) -> None:
        """Drop ``key`` from every cache level (the origin is untouched)."""
        run(self._flow_invalidate([key]))

    def invalidate_many(self, keys: Iterable[str]) -> None:
        run(self._flow_invalidate(keys))

    def clear(self) -> None:
        """Remove this cache's entries (its namespace) from every level."""
        run(self._flow_clear())

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: Callable[..., Any] | None = None,
        prefix: str | None = None,
        key_self: Callable[[Any], Any] | None = None,
        skip_self: bool = False,
        fail_safe_max_age: float | None = UNSET,
        soft_timeout: float | None = UNSET,
        hard_timeout: float | None = UNSET,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Cache a function's results: ``@cache.cached(ttl=60)``.

        The key is ``prefix`` (default: the function's module and qualified name), ``":"``
        and the arguments bound to the signature with its defaults applied, so ``f(1)``,
        ``f(1, 3)`` and ``f(a=1, b=3)`` of ``def f(a, b=3)`` are one entry:
        ``"mod.f:a=1,b=3"``. Values are typed (``1``, ``1.0`` and ``True`` are three keys;
        so are a set and a frozenset, a tuple and a list) and written as text every
        process computes alike, never ``hash()`` or ``id()``. Accepted: None, bool, int,
        float, complex, str, bytes, date, datetime, time, timedelta, Decimal, UUID, enums,
        dataclasses, namedtuples, classes, objects with a ``__cache_key__()`` method, and
        tuples, lists, dicts, sets and frozensets of those; anything else raises
        InvalidKeyError naming the argument (see :mod:`stratacache.hierarchy.calls`).
        ``key=lambda *args, **kwargs: ...`` replaces all that with the text it returns.

        Methods: the instance (the first parameter) must be keyed too. Either its class
        has a ``__cache_key__(self)`` method returning a stable value (an id), or pass
        ``key_self=lambda self: self.id``, or ``skip_self=True`` when the result does not
        depend on the instance. An instance with none of these raises ConfigurationError
        at call time (its id or repr would differ in every process).

        The wrapper has ``.cache_key(*args, **kwargs)`` and ``.invalidate(*args, **kwargs)``,
        which take the function's arguments in any spelling; for a method pass the
        instance first: ``Repo.load.invalidate(repo, 42)``.
        """

        self._safety(fail_safe_max_age, soft_timeout, hard_timeout)  # checked once, here
        safety = _given(fail_safe_max_age, soft_timeout, hard_timeout)

        def wrap(fn: Callable[..., T], build: KeyBuilder) -> Callable[..., T]:
            def wrapper(*args: Any, **kwargs: Any) -> T:
                cache_key = build(args, kwargs)
                try:
                    return self.get_or_load(  # type: ignore[no-any-return]
                        cache_key, lambda keys: {cache_key: fn(*args, **kwargs)}, ttl, **safety
                    )
                except OriginError as exc:  # the function's own exception, unwrapped
                    raise own_error(exc) from None

            return wrapper

        return self._decorator(
            wrap, key, prefix, is_async=False, key_self=key_self, skip_self=skip_self
        )

    def close(self) -> None:
        """Release every level and the origin. Idempotent; any other call afterwards
        raises CacheClosedError."""
        if self._mark_closed():
            # Drop the bound fast paths: from now on every call meets the closed check.
            self._local_writer = None
            self._local_miss = None
            self._bind_get()
            run(self._hierarchy.close())

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
