"""What ``Cache`` and ``AsyncCache`` share: construction, argument checks, the L1 fast
paths they bind (:mod:`.front`), and the flow each public method runs. The two public
classes only add how a flow is driven."""

from __future__ import annotations

import functools
import inspect
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MethodType
from typing import Any

from ..config import tier_from_url
from ..entry import Entry
from ..errors import CacheClosedError, ConfigurationError, OriginError
from ..events import Listener
from ..hotkeys import HotKey, HotKeys
from ..keys import validate_items, validate_key, validate_keys
from ..metrics import CacheStats
from ..origin import CallableOrigin, Origin
from ..tiers.base import Tier
from ..tiers.memory import MemoryTier
from .calls import CallKeys
from .flow import Flow, Hierarchy, Loader
from .front import Front, Reader, Slow, Writer
from .hot import HotKeyGuard, make_hot_keys
from .refresh import Refresh, refreshing_reader
from .rules import check_tags, check_ttl
from .safety import UNSET, Safety
from .wiring import AUTO, make_bus, make_write_behind
from .write import WritePolicy

__all__ = ["L1_MISS", "BaseCache", "KeyBuilder", "key_builder", "own_error"]

L1_MISS = object()  # private: "the fast path did not answer", never returned to callers


class BaseCache:
    """The half that :class:`~stratacache.Cache` and :class:`~stratacache.AsyncCache`
    share: state, fast paths and flows. Use one of those two."""

    def __init__(
        self,
        levels: Sequence[Tier | str],
        origin: Origin | Callable[[list[str]], Any] | None = None,
        *,
        write: str | WritePolicy = "through",
        negative_ttl: float | None = None,
        ttl_jitter: float = 0.0,
        measure_l1_latency: bool = False,
        private_below_shared: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        fail_safe_max_age: float | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        refresh_ahead: float | None = None,
        xfetch_beta: float | None = None,
        bus: Any = AUTO,
        leases: bool = True,
        lease_ttl: float = 3.0,
        lock_ttl: float = 2.0,
        bus_silence_ttl: float = 0.5,
        journal: str | os.PathLike[str] | None = None,
        journal_fsync: str = "always",
        max_pending_writes: int = 100_000,
        hot_keys: bool | HotKeys = True,
        hot_key_threshold: float | None = None,
        hot_key_ttl: float = 1.0,
    ) -> None:
        safety = Safety(fail_safe_max_age, soft_timeout, hard_timeout)
        refresh = Refresh.checked(refresh_ahead, xfetch_beta)
        if isinstance(levels, Tier | str):
            raise ConfigurationError(
                "levels is a list of tiers (top first), e.g. [MemoryTier(...), SQLiteTier(...)]"
            )
        built: list[Tier] = []
        for level in levels:
            if isinstance(level, str):
                level = tier_from_url(level, clock=clock, wall_clock=wall_clock)
            if not isinstance(level, Tier):
                raise ConfigurationError(
                    f"a level must be a Tier or a tier URL, got {type(level).__qualname__}"
                )
            built.append(level)
        if not private_below_shared:
            _check_private_levels_on_top(built)
        if origin is not None and not isinstance(origin, Origin):
            if not callable(origin):
                raise ConfigurationError(
                    f"origin must be an Origin or a load function, got {type(origin).__qualname__}"
                )
            origin = CallableOrigin(origin)
        self._hierarchy = Hierarchy(
            built,
            origin,
            write=write,
            negative_ttl=negative_ttl,
            ttl_jitter=ttl_jitter,
            wall_clock=wall_clock,
            rng=rng,
            safety=safety,
            leases=leases,
            lease_ttl=lease_ttl,
            lock_ttl=lock_ttl,
            bus_silence_ttl=bus_silence_ttl,
        )
        hierarchy = self._hierarchy
        if hierarchy.write_policy.defers_origin:
            hierarchy.behind = make_write_behind(
                hierarchy.origin,
                journal,
                fsync=journal_fsync,
                max_pending=max_pending_writes,
                name="cache",
                order=hierarchy.flush_in_order,
            )
        elif journal is not None:
            raise ConfigurationError(
                f"journal= is the write-behind queue's directory; it needs write='behind' "
                f"(this cache writes {hierarchy.write_policy.name!r})"
            )
        try:
            hierarchy.announce = make_bus(bus, hierarchy)
        except BaseException:
            if hierarchy.behind is not None:
                hierarchy.behind.close()
            raise
        if hierarchy.behind is not None:
            # Only now: its first flush may be a replay, whose keys the bus announces.
            hierarchy.behind.start()
        self._refresh = refresh
        self._closed = False
        top = built[0]
        self._wire_hot_keys(top, hot_keys, hot_key_threshold, hot_key_ttl, clock)
        self._front: Front | None = (
            Front(top, hierarchy.rules[0], hierarchy.rng, timed=measure_l1_latency)
            if isinstance(top, MemoryTier)
            else None
        )
        if refresh.active:
            if not isinstance(top, MemoryTier):
                raise ConfigurationError(
                    "refresh_ahead and xfetch_beta watch the hits of an in-process first "
                    "level; put a MemoryTier first"
                )
            top.refresh_fraction = refresh.ahead
        self._bind_local_paths()
        for level in built:
            level.events = hierarchy.events
        hierarchy.events.on_change = self._listeners_changed

    def on(self, kind: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event of ``kind``: ``hit``, ``miss``,
        ``load``, ``eviction``, ``expiry``, ``stale`` or ``breaker`` (see
        :mod:`stratacache.events` for each one's fields). Returns a function that removes
        the listener. Listeners run in the thread that caused the event; keep them quick."""
        return self._hierarchy.events.add(kind, listener)

    def off(self, kind: str, listener: Listener) -> None:
        """Remove a listener added with :meth:`on`."""
        self._hierarchy.events.remove(kind, listener)

    def _listeners_changed(self, kind: str) -> None:
        # The L1 fast paths report hits, misses and evictions only when someone listens:
        # rebind them whenever that changes.
        if kind in ("hit", "miss", "eviction"):
            self._bind_local_paths()

    def _wire_hot_keys(
        self,
        top: Tier,
        track: bool | HotKeys,
        threshold: float | None,
        ttl: float,
        clock: Callable[[], float],
    ) -> None:
        hierarchy = self._hierarchy
        hot = make_hot_keys(track, clock)
        if hot is None:
            if threshold is not None:
                raise ConfigurationError(
                    "hot_key_threshold protects the keys the cache counts as hot; it needs "
                    "hot_keys=True"
                )
            return
        hierarchy.hot = hot
        if isinstance(top, MemoryTier):
            top.hot = hot  # hits reach the counter from its read buffer
        else:
            hierarchy.hot_counts_reads = True
        if threshold is not None:
            if not isinstance(top, MemoryTier):
                raise ConfigurationError(
                    "hot_key_threshold keeps hot keys in an in-process first level; put a "
                    "MemoryTier first"
                )
            hierarchy.hot_guard = HotKeyGuard(top, hot, threshold, ttl, hierarchy.fence)

    def hot_keys(self, n: int = 10) -> list[HotKey]:
        """The ``n`` keys asked for most over the last few seconds, hottest first, each with
        its estimated rate in requests/second (see :mod:`stratacache.hotkeys`). Empty when
        the cache was made with ``hot_keys=False``."""
        hot = self._hierarchy.hot
        return [] if hot is None else hot.top(n)

    def _l1_reader(self, slow: Callable[[str, Any], Any], *, local_misses: bool = False) -> Reader:
        """The L1 hit path over ``slow``: the front's, or with early refresh on, one that
        also starts reloads (see :mod:`.refresh`)."""
        front = self._front
        assert front is not None
        reader = self._plain_l1_reader(front, slow, local_misses)
        events = self._hierarchy.events
        if events.wants("hit") or events.wants("miss"):
            return front.reporting(reader, events, local_misses=local_misses)
        return reader

    def _plain_l1_reader(self, front: Front, slow: Slow, local_misses: bool) -> Reader:
        refresh = self._refresh
        if not refresh.active:
            return front.reader(slow, local_misses=local_misses)
        hierarchy = self._hierarchy
        latency = hierarchy.origin_stats.latency
        loading = hierarchy.single_flight.loading

        def start(key: str) -> None:
            if not loading(key) and not self._closed:
                self._start_refresh(key)

        return refreshing_reader(
            front.store,
            refresh,
            slow,
            start,
            lambda: (latency.mean_us() or 0.0) / 1e6,
            hierarchy.rng,
        )

    def _start_refresh(self, key: str) -> None:
        """Run ``hierarchy.refresh([key])`` in the background (each class its own way)."""
        raise NotImplementedError

    def _bind_local_paths(self) -> None:
        """(Re)decide which operations complete in L1 alone; again when a loader is
        registered. Sets take the bound writer only when misses stay local too: once a
        miss can load, every write must go through the fence that stops an in-flight
        load from filling over it (see hierarchy/fence.py)."""
        hierarchy = self._hierarchy
        front = self._front
        # Answers L1 hits for the paths that decide themselves what a miss means (async
        # get, get_or_load): it reports a miss with a private sentinel.
        self._probe: Reader | None = (
            self._l1_reader(lambda key, default: L1_MISS) if front is not None else None
        )
        self._local_miss: Callable[[str, Any], Any] | None = None
        self._local_writer: Writer | None = None
        if front is not None and hierarchy.misses_stay_local():
            self._local_miss = front.local_miss
            if hierarchy.sets_stay_local():
                index = hierarchy.tags
                self._local_writer = front.writer(
                    lambda key, tags: index.index_local({key: Entry(None, tags=tags)}),
                    compiled=not hierarchy.events.wants("eviction"),
                )
        self._bind_get()

    def _bind_get(self) -> None:
        """Hook for the public classes to rebind their fast ``get`` and ``set``."""

    # ------------------------------------------------------------------ introspection

    @property
    def levels(self) -> list[Tier]:
        return list(self._hierarchy.levels)

    @property
    def origin(self) -> Origin | None:
        return self._hierarchy.origin

    def stats(self) -> CacheStats:
        """Counters and latencies per level and for the origin, with the average response
        time (``.amat_us``) computed from them."""
        return self._hierarchy.stats()

    def reset_stats(self) -> None:
        self._hierarchy.reset_stats()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        chain = " -> ".join(f"{t.name}:{t.kind}" for t in self._hierarchy.levels)
        if self._hierarchy.origin is not None:
            chain += " -> origin"
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {chain}{state}>"

    # ------------------------------------------------------------------ loaders

    def register_loader(self, prefix: str, loader: Loader) -> None:
        """Read-through for keys starting with ``prefix``: ``loader(keys) -> {key: value}``
        (keys left out are "not found"). The longest matching prefix wins; a loader passed
        to a call beats a registered one, which beats the origin."""
        self._check_open()
        if not isinstance(prefix, str):
            raise ConfigurationError(f"loader prefix must be a str, got {prefix!r}")
        self._hierarchy.register_loader(prefix, loader)
        self._bind_local_paths()

    def loader(self, prefix: str) -> Callable[[Loader], Loader]:
        """Decorator form of :meth:`register_loader`."""

        def decorate(fn: Loader) -> Loader:
            self.register_loader(prefix, fn)
            return fn

        return decorate

    # ------------------------------------------------------------------ flows

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"{type(self).__name__} is closed; create a new one")

    def _flow_get(
        self,
        key: str,
        loader: Loader | None = None,
        ttl: float | None = None,
        *,
        l1_checked: bool = False,
        safety: Safety | None = None,
    ) -> Flow:
        """The read of one key. ``l1_checked``: the caller's fast path just missed in L1,
        so when L1 holds nothing at all for the key the read starts below it."""
        self._check_open()
        key = validate_key(key)
        front = self._front
        skip = l1_checked and front is not None and front.absent(key)
        return self._hierarchy.read([key], loader, ttl=ttl, top_missed=skip, safety=safety)

    def _safety(
        self, fail_safe_max_age: Any, soft_timeout: Any, hard_timeout: Any
    ) -> Safety | None:
        """The cache's fail-safe settings with a call's overrides (None: no override)."""
        if fail_safe_max_age is UNSET and soft_timeout is UNSET and hard_timeout is UNSET:
            return None
        return self._hierarchy.safety.for_call(
            fail_safe_max_age=fail_safe_max_age,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
        )

    # Every flow checks its keys before anything else looks at them (a dict built from an
    # unhashable key would raise a bare TypeError): a bad key is an InvalidKeyError from
    # every public method, and only here, off the L1 fast paths.

    def _flow_get_many(self, keys: Iterable[str], safety: Safety | None = None) -> Flow:
        self._check_open()
        return self._hierarchy.read(validate_keys(keys, "get_many"), safety=safety)

    def _flow_set(self, key: str, value: Any, ttl: float | None, tags: Any = None) -> Flow:
        self._check_open()
        check_ttl(ttl)
        return self._hierarchy.write({validate_key(key): value}, ttl, check_tags(tags))

    def _flow_set_many(self, items: Mapping[str, Any], ttl: float | None, tags: Any = None) -> Flow:
        self._check_open()
        check_ttl(ttl)
        return self._hierarchy.write(validate_items(items, "set_many"), ttl, check_tags(tags))

    def _flow_invalidate_tags(self, tags: Iterable[str]) -> Flow:
        self._check_open()
        checked = check_tags(list(tags))
        return self._hierarchy.invalidate_tags(checked)

    def _flow_delete(self, keys: Iterable[str], method: str = "delete_many") -> Flow:
        self._check_open()
        return self._hierarchy.delete(validate_keys(keys, method))

    def _flow_invalidate(self, keys: Iterable[str], method: str = "invalidate_many") -> Flow:
        self._check_open()
        return self._hierarchy.invalidate(validate_keys(keys, method))

    def _flow_clear(self) -> Flow:
        self._check_open()
        return self._hierarchy.clear()

    def _decorator(
        self,
        wrap: Callable[[Callable[..., Any], KeyBuilder], Callable[..., Any]],
        key: Callable[..., Any] | None,
        prefix: str | None,
        *,
        is_async: bool,
        key_self: Callable[[Any], Any] | None = None,
        skip_self: bool = False,
    ) -> Callable[[Callable[..., Any]], Any]:
        """What ``cached`` does for either class: refuse a function of the other kind,
        name its calls (:func:`key_builder`), and give the wrapper ``wrap`` makes its
        ``cache_key`` and ``invalidate`` helpers. Both take the function's own arguments
        in any spelling (a method's ``self`` included: ``Class.method.invalidate(obj, 1)``).
        A method's wrapper binds like a method, helpers included: ``obj.method.invalidate(1)``
        (see :class:`CachedMethod`)."""

        def decorate(fn: Callable[..., Any]) -> Any:
            if inspect.iscoroutinefunction(fn) != is_async:
                name = getattr(fn, "__qualname__", fn)
                raise ConfigurationError(
                    f"{name} is async: decorate it with an AsyncCache's cached()"
                    if not is_async
                    else f"{name} is not async: decorate it with a sync Cache's cached()"
                )
            build = key_builder(fn, key, prefix, key_self=key_self, skip_self=skip_self)
            wrapper: Any = functools.wraps(fn)(wrap(fn, build))
            wrapper.cache_key = lambda *a, **kw: build(a, kw)
            wrapper.invalidate = lambda *a, **kw: self.invalidate(build(a, kw))  # type: ignore[attr-defined]
            if _is_method(fn, key_self is not None or skip_self):
                return CachedMethod(wrapper)
            # Anything else gets the bare function: a call pays for no descriptor.
            return wrapper

        return decorate

    def _mark_closed(self) -> bool:
        """True the first time: the caller then releases resources."""
        if self._closed:
            return False
        self._closed = True
        return True


def _is_method(fn: Callable[..., Any], declared: bool) -> bool:
    """Whether ``fn`` will be looked up through instances: written in a class body, or
    declared a method by ``key_self=``/``skip_self=`` (a function assigned to a class
    later). A staticmethod or classmethod object underneath keeps the bare wrapper, as it
    always had: binding an instance to it would add an argument it does not take."""
    if isinstance(fn, staticmethod | classmethod):
        return False
    if declared:
        return True
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return False
    scope, dot, _ = qualname.rpartition(".")
    # "Outer.<locals>.f" is a function nested in a function, "Outer.f" one in a class.
    return bool(dot) and not scope.endswith("<locals>")


class CachedMethod:
    """What ``cached`` returns for a method: a descriptor over the cached function.

    Through the class it gives that function itself, so ``Class.method(obj, 1)`` and
    ``Class.method.invalidate(obj, 1)`` take the instance first as before. Through an
    instance it gives a :class:`BoundCachedMethod`, whose ``cache_key``/``invalidate`` get
    the instance bound the way the call does: a bound method of a plain function would
    hand them the function's own, unbound ones, so ``obj.method.invalidate(7)`` would key
    ``7`` as ``self`` and drop some other entry, or none, without a word.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        functools.update_wrapper(self, function, updated=())
        # After update_wrapper, which points __wrapped__ at the cached function: the
        # function's own dict sets it back to the user's, as on the function itself, and
        # brings the helpers and whatever else it carries (__isabstractmethod__).
        self.__dict__.update(function.__dict__)

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., Any]:
        if instance is None:
            return self._function
        if instance is owner:
            # A classmethod on top (Python < 3.13 chains descriptors and passes the class
            # twice): the bound method it always got, helpers taking the class first, as
            # on 3.13+ where classmethod binds this object without asking.
            return MethodType(self._function, instance)
        return BoundCachedMethod(self._function, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Only when something holds this object rather than looking it up on a class:
        # a staticmethod or property on top, or a call in the class body.
        return self._function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<cached method {getattr(self._function, '__qualname__', '?')}>"


class BoundCachedMethod(functools.partial[Any]):
    """A cached method bound to an instance: calls, ``cache_key`` and ``invalidate`` all
    take the arguments after ``self``. Built on ``functools.partial``, whose call runs in
    C, so a cached method call pays for no Python frame beyond the lookup; anything else
    is read from the cached function, as a bound method does."""

    __slots__ = ()

    @property
    def __self__(self) -> Any:
        return self.args[0]

    @property
    def __func__(self) -> Callable[..., Any]:
        return self.func

    @property
    def __signature__(self) -> inspect.Signature:
        # Without it inspect would follow __wrapped__ to the function and show ``self``.
        return inspect.signature(MethodType(self.func, self.args[0]))

    def __getattribute__(self, name: str) -> Any:
        # These two are class attributes of partial (and of this class), so __getattr__
        # never hears of them; properties would replace the class's own. The call itself
        # does not come through here.
        if name == "__doc__" or name == "__module__":
            return getattr(object.__getattribute__(self, "func"), name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.func, name)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        function: Any = self.func
        return function.cache_key(self.args[0], *args, **kwargs)  # type: ignore[no-any-return]

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        # What the function's own helper returns: None, or an AsyncCache's coroutine.
        function: Any = self.func
        return function.invalidate(self.args[0], *args, **kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundCachedMethod):
            return NotImplemented
        return self.func is other.func and self.args[0] is other.args[0]

    def __hash__(self) -> int:
        return hash((self.func, id(self.args[0])))

    def __repr__(self) -> str:
        return f"<bound cached method {self.func.__qualname__} of {self.args[0]!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as a bound method is: looked up again on the unpickled instance.
        return getattr, (self.args[0], self.func.__name__)


def _check_private_levels_on_top(levels: Sequence[Tier]) -> None:
    """An in-process level below a shared one is almost always a mistake: every process
    would fill its private copy from the shared level and serve it after another process
    changed the shared one, and the shared level's copies would be read first anyway."""
    for index, level in enumerate(levels):
        if level.local and index > 0 and not levels[index - 1].local:
            above = levels[index - 1]
            raise ConfigurationError(
                f"level {index + 1} ({level.kind}) is private to this process but sits below "
                f"level {index} ({above.kind}), which processes share; put in-process levels "
                "first (levels are listed top first), or pass private_below_shared=True if "
                "this order is what you mean"
            )


KeyBuilder = Callable[[tuple[Any, ...], dict[str, Any]], str]


def own_error(exc: OriginError) -> BaseException:
    """What a decorated function raised, out of the OriginError the load wrapped it in."""
    return exc.__cause__ if exc.__cause__ is not None else exc


def key_builder(
    fn: Callable[..., Any],
    key: Callable[..., Any] | None,
    prefix: str | None,
    *,
    key_self: Callable[[Any], Any] | None = None,
    skip_self: bool = False,
) -> KeyBuilder:
    """How ``cached`` names a call: ``prefix`` (default ``module.qualname``), ``":"``, then
    either the user's ``key(*args, **kwargs)`` or the arguments bound to the signature
    with defaults applied, as typed text every process computes alike (never ``hash()``
    or a default repr): see :mod:`.calls`. ``key_self``/``skip_self`` say how a method's
    instance is keyed; they do not combine with ``key``, which names the whole call."""
    if prefix is None:
        qualname = getattr(fn, "__qualname__", "")
        if "<locals>" in qualname or "<lambda>" in qualname or not qualname:
            # Every function made by one factory (or every lambda) shares that name, so
            # they would share keys and return each other's results.
            raise ConfigurationError(
                f"cannot name the keys of {qualname or fn!r} uniquely: it is a lambda or is "
                "defined inside another function, and each such function would share one "
                "key space; pass prefix='a-unique-name' to cached()"
            )
        base = f"{fn.__module__}.{qualname}"
    else:
        base = prefix
    if key is not None:
        if key_self is not None or skip_self:
            raise ConfigurationError(
                "key= names the whole call, self included; drop key_self=/skip_self= (or "
                "drop key= and let cached() key the other arguments)"
            )
        user_key = key

        def build_user(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return f"{base}:{user_key(*args, **kwargs)}"

        return build_user

    return CallKeys(fn, base, key_self=key_self, skip_self=skip_self)
