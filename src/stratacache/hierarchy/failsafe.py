"""The fail-safe half of the hierarchy's flow: stale values when a load fails or runs
late, and the background landing of a load a read stopped waiting for.

A mixin of :class:`~.flow.Hierarchy` (the attributes it uses are declared below and set
up there); see :mod:`.safety` for the settings and the README for the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..entry import Entry
from ..errors import LoadTimeoutError, OriginError, TransientError
from ..events import Listeners
from ..metrics import OriginStats
from ..stampede import Flight, SingleFlight
from ..tiers.base import Tier
from .background import Background
from .ops import AwaitLoad, Detach, LevelGetStale, LoadPending, Op, WaitFlights
from .plan import _Load, _Stale

if TYPE_CHECKING:
    from collections.abc import Generator

    Flow = Generator[Op, Any, Any]
else:
    Flow = Any

__all__ = ["FailSafe"]


class FailSafe:
    levels: list[Tier]
    single_flight: SingleFlight
    origin_stats: OriginStats
    background: Background
    wall_clock: Callable[[], float]
    stale_served: int
    load_timeouts: int
    _fill: Callable[[Mapping[str, Any], Sequence[str], _Load], Flow]
    _load_error: Callable[[BaseException, list[str]], OriginError]
    _accepted: Callable[[Any, list[str]], Mapping[str, Any]]
    _note_versions: Callable[[Mapping[str, Any], _Load], None]
    _level_failed: Callable[[Tier, str, BaseException], None]
    events: Listeners

    def _served_stale(self, keys: Iterable[str]) -> None:
        """Count the stale values served for ``keys`` (and tell the listeners)."""
        keys = list(keys)
        self.stale_served += len(keys)
        self.events.emit_keys("stale", keys)

    def _overdue(
        self, pending: Any, group: list[str], how: _Load, flights: Mapping[str, Flight] | None
    ) -> Flow:
        """A load outlived the read's first wait. With a stale value for every key,
        leave it running (it lands in the background) and return None: the caller serves
        the stale values. Otherwise wait on, up to ``hard_timeout``, and return the
        answer; past that, leave it running and raise (or serve stale values)."""
        safety = how.safety
        waited = safety.first_wait or 0.0
        if safety.fail_safe_max_age is not None:
            stale = yield from self._stale(group, safety.fail_safe_max_age)
            if len(stale) == len(group):
                yield from self._detach(pending, group, how, flights)
                self._served_stale(stale)
                how.stale.update(stale)
                return _Stale(stale)
        hard = safety.hard_timeout
        if hard is None or hard > waited:
            try:
                return (yield AwaitLoad(pending, None if hard is None else hard - waited))
            except LoadPending:
                pass
        yield from self._detach(pending, group, how, flights)
        return _Stale((yield from self._rescue(group, how, None)))

    def _detach(
        self, pending: Any, group: list[str], how: _Load, flights: Mapping[str, Flight] | None
    ) -> Flow:
        mine = [flights[key] for key in group if key in flights] if flights else []
        how.detached.update(flight.key for flight in mine)

        def land(done: Any) -> Flow:
            return self._land(done, group, how, mine)

        yield Detach(pending, land, self.background)

    def _land(self, done: Any, group: list[str], how: _Load, flights: list[Flight]) -> Flow:
        """The background end of a load a read stopped waiting for: fill the levels with
        its answer and settle the flights (waiters and later callers get it)."""
        single_flight = self.single_flight
        try:
            if done.cancelled():
                single_flight.abandon(flights)
                return
            exc = done.exception()
            if exc is not None:
                self.origin_stats.errors += 1
                error = exc if isinstance(exc, OriginError) else self._load_error(exc, group)
                single_flight.fail(flights, error)
                return
            loaded = self._accepted(done.result(), group)
            self._note_versions(loaded, how)
            found = {key: loaded[key] for key in group if key in loaded}
            self.origin_stats.found += len(found)
            yield from self._fill(found, [k for k in group if k not in loaded], how)
        except BaseException as exc:
            single_flight.fail(flights, exc)
            raise
        single_flight.complete(flights, found)

    def _rescue(self, group: list[str], how: _Load, error: OriginError | None) -> Flow:
        """Stale values for ``group`` after its load failed with ``error`` (or was left
        running: None); raises when a key has none to serve."""
        safety = how.safety
        stale: Mapping[str, Any] = {}
        if safety.fail_safe_max_age is not None:
            stale = yield from self._stale(group, safety.fail_safe_max_age)
        lacking = [key for key in group if key not in stale]
        if lacking:
            if error is not None:
                raise error from error.__cause__
            self.load_timeouts += 1
            raise LoadTimeoutError(
                f"loading {len(group)} key(s) (first {group[0]!r}) took longer than "
                f"hard_timeout={safety.hard_timeout}s, and no value of {lacking[0]!r} "
                f"expired less than fail_safe_max_age={safety.fail_safe_max_age}s ago "
                "could be served instead; the load goes on in the background and will "
                "fill the cache"
            )
        self._served_stale(stale)
        how.stale.update(stale)
        return dict(stale)

    def _stale(self, keys: list[str], max_age: float) -> Flow:
        """The last values of ``keys`` that expired at most ``max_age`` seconds ago (or
        are still live), from the first level that kept one; levels that are down are
        skipped."""
        oldest = self.wall_clock() - max_age
        found: dict[str, Any] = {}
        todo = keys
        for level in self.levels:
            if not level.stale_for:
                continue
            try:
                entries: Mapping[str, Entry] = yield LevelGetStale(level, todo)
            except TransientError as exc:
                self._level_failed(level, "stale read", exc)
                continue
            for key, entry in entries.items():
                if entry.expires_at >= oldest and not entry.negative:
                    found[key] = entry.value
            todo = [key for key in todo if key not in found]
            if not todo:
                break
        return found

    def _overdue_flights(self, late: list[Flight], how: _Load, values: dict[str, Any]) -> Flow:
        """Waiters whose leader's load outlived their first wait: serve stale values for
        what has one, wait on for the rest up to ``hard_timeout``, then give up. Returns
        the flights still late (only without a hard timeout: they are taken over)."""
        safety = how.safety
        if safety.fail_safe_max_age is not None:
            stale = yield from self._stale([f.key for f in late], safety.fail_safe_max_age)
            if stale:
                values.update(stale)
                self._served_stale(stale)
                late = [f for f in late if f.key not in stale]
        if not late or safety.hard_timeout is None:
            return late
        waited = safety.first_wait or 0.0
        if safety.hard_timeout > waited:
            late = yield WaitFlights(self.single_flight, late, safety.hard_timeout - waited)
        if late:
            self.load_timeouts += 1
            raise LoadTimeoutError(
                f"the load of {late[0].key!r} that this read waited for took longer than "
                f"hard_timeout={safety.hard_timeout}s and no value expired less than "
                f"fail_safe_max_age={safety.fail_safe_max_age}s ago could be served instead"
            )
        return late

    def _waited_for_failure(self, failed: list[Flight], how: _Load, values: dict[str, Any]) -> Flow:
        """The loads these waiters waited for failed: serve stale values under the
        fail-safe, else raise the failure chained to its root cause (the loader's own
        exception), as the leader's OriginError does."""
        stale: Mapping[str, Any] = {}
        max_age = how.safety.fail_safe_max_age
        if max_age is not None:
            stale = yield from self._stale([f.key for f in failed], max_age)
        for flight in failed:
            if flight.key in stale:
                values[flight.key] = stale[flight.key]
                self._served_stale((flight.key,))
                continue
            cause = flight.error
            if isinstance(cause, OriginError) and cause.__cause__ is not None:
                cause = cause.__cause__
            raise OriginError(
                f"loading {flight.key!r} failed in the concurrent call this one "
                f"waited for: {cause!r}"
            ) from cause
