"""The asynchronous cache: drives the same flows, awaiting remote tiers and the origin.

L1 is synchronous: an L1 hit is answered without awaiting anything, and in-process tiers
are called inline even on the slow path. Only network tiers, file tiers and the origin
are awaited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..entry import MISSING
from ..errors import OriginError
from ..steps import adrive
from .base import L1_MISS, BaseCache, KeyBuilder, own_error
from .flow import Flow, Loader
from .ops import aperform
from .safety import UNSET
from .safety import given as _given

__all__ = ["AsyncCache", "arun"]

T = TypeVar("T")


async def arun(flow: Flow) -> Any:
    """Perform every operation a flow yields, awaiting the non-local ones."""
    return await adrive(flow, _aperform)


# Every operation's async face: an in-process level's answers at once, inline (its tier's
# async methods are its sync ones), a remote one's is awaited.
_aperform = aperform


class AsyncCache(BaseCache):
    """The async twin of :class:`~stratacache.Cache`: the same constructor and the same
    method names, as coroutines. Loaders and origin functions may be sync or async."""

    def _start_refresh(self, key: str) -> None:
        hierarchy = self._hierarchy
        hierarchy.background.task(arun(hierarchy.refresh([key])))

    async def get(self, key: str, default: Any = MISSING) -> Any:
        probe = self._probe
        if probe is not None:
            value = probe(key, L1_MISS)
            if value is not L1_MISS:
                return value
        local_miss = self._local_miss
        if local_miss is not None and not self._closed:
            return local_miss(key, default)
        values = await arun(self._flow_get(key, l1_checked=True))
        return values.get(key, default)

    async def get_many(
        self,
        keys: Iterable[str],
        *,
        fail_safe_max_age: float | None = UNSET,
        soft_timeout: float | None = UNSET,
        hard_timeout: float | None = UNSET,
    ) -> dict[str, Any]:
        safety = self._safety(fail_safe_max_age, soft_timeout, hard_timeout)
        return await arun(self._flow_get_many(keys, safety))  # type: ignore[no-any-return]

    async def get_or_load(
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
        probe = self._probe
        if probe is not None:
            value = probe(key, L1_MISS)
            if value is not L1_MISS:
                return value
        safety = self._safety(fail_safe_max_age, soft_timeout, hard_timeout)
        values = await arun(self._flow_get(key, loader, ttl, l1_checked=True, safety=safety))
        return values.get(key, default)

    async def set(
        self, key: str, value: Any, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> None:
        writer = self._local_writer
        if writer is not None and not self._closed:
            if tags is None:
                writer(key, value, ttl)
            else:
                writer(key, value, ttl, tags=tags)
            return
        await arun(self._flow_set(key, value, ttl, tags))

    async def set_many(
        self,
        items: Mapping[str, Any],
        ttl: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        await arun(self._flow_set_many(items, ttl, tags))

    async def invalidate_tag(self, tag: str) -> None:
        await arun(self._flow_invalidate_tags([tag]))

    async def invalidate_tags(self, tags: Iterable[str]) -> None:
        await arun(self._flow_invalidate_tags(tags))

    async def delete(self, key: str) -> None:
        await arun(self._flow_delete([key]))

    async def delete_many(self, keys: Iterable[str]) -> None:
        await arun(self._flow_delete(keys))

    async def invalidate(self, key: str) -> None:
        await arun(self._flow_invalidate([key]))

    async def invalidate_many(self, keys: Iterable[str]) -> None:
        await arun(self._flow_invalidate(keys))

    async def clear(self) -> None:
        await arun(self._flow_clear())

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
    ) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
        """Cache an async function's results: ``@cache.cached(ttl=60)``; see
        :meth:`Cache.cached` for the key rules, methods (``key_self=``, ``skip_self=True``
        or ``__cache_key__``) and ``.cache_key``. ``.invalidate(...)`` is a coroutine."""

        self._safety(fail_safe_max_age, soft_timeout, hard_timeout)  # checked once, here
        safety = _given(fail_safe_max_age, soft_timeout, hard_timeout)

        def wrap(fn: Callable[..., Awaitable[T]], build: KeyBuilder) -> Callable[..., Awaitable[T]]:
            async def wrapper(*args: Any, **kwargs: Any) -> T:
                cache_key = build(args, kwargs)

                async def load(keys: list[str]) -> dict[str, Any]:
                    return {cache_key: await fn(*args, **kwargs)}

                try:
                    return await self.get_or_load(cache_key, load, ttl, **safety)  # type: ignore[no-any-return]
                except OriginError as exc:
                    raise own_error(exc) from None

            return wrapper

        return self._decorator(
            wrap, key, prefix, is_async=True, key_self=key_self, skip_self=skip_self
        )

    async def close(self) -> None:
        """Release every level and the origin. Idempotent."""
        if self._mark_closed():
            self._local_writer = None
            self._local_miss = None
            await arun(self._hierarchy.close())

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
