"""The hierarchy's logic, written once and free of I/O.

Each public operation of a cache (read, write, delete, invalidate, clear) is a generator
here. It decides what to do and yields an operation from :mod:`.ops` whenever it needs a
tier or the origin; a driver performs that operation, synchronously (:mod:`.sync`) or with
``await`` (:mod:`.aio`), and sends the result back (or throws the exception in). The same
code therefore serves ``Cache`` and ``AsyncCache``, the way httpx drives one auth flow from
both clients.

Reads go down the levels with only the keys still missing, copy every hit up into the
levels above it (with no more than its remaining lifetime), and send what is missing
everywhere to one source: the loader passed to the call, else a registered loader (longest
key prefix wins), else the origin. What the source returns fills every level on the way
back; what it leaves out can be remembered as "not found" for ``negative_ttl`` seconds.

A level that raises :class:`~stratacache.errors.TransientError` is skipped (a miss on
reads, a skipped write on writes), counted in its ``errors`` and logged; the operation
goes on with the other levels.

Concurrent misses of one key cost one read per shared level and one load, in threads and
tasks alike (see :mod:`stratacache.stampede`):

* a read of a shared (non-local) level claims its keys first; a key another caller is
  reading right now is not asked again: the flow yields :class:`~.ops.WaitReads` and takes
  that read's answer (after its own read of the other keys; a wait that times out, or
  whose reader went away, reads the key itself);
* a caller that claims a key to load it reads the levels again for it first when a load
  of the key landed since its read began (for the top level that the L1 fast path looked
  at before the flow began: when one ever landed): that load has filled them.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from typing import Any

from ..behind import DELETED
from ..entry import Entry
from ..errors import (
    ConfigurationError,
    LoadTimeoutError,
    OriginError,
    SerializationError,
    TransientError,
    ValueTooLargeError,
)
from ..events import CacheEvent, Listeners
from ..hotkeys import HotKeys
from ..metrics import CacheStats, LevelSnapshot, OriginStats
from ..origin import Origin, Versioned
from ..stampede import Flight, Read, ReadFlights, SingleFlight
from ..tiers.base import DOWN, DROPPED, FILL, Prepared, Tier
from ..tiers.memory import MemoryTier
from ..tiers.shared import SharedTier
from . import rules as level_rules
from .agreement import Agreement, Announcer
from .background import Background
from .claims import Coordinator
from .failsafe import FailSafe
from .fence import SeenVersions, WriteFence
from .hot import HotKeyGuard
from .ops import (
    Blocking,
    JournalWrite,
    LevelClear,
    LevelClose,
    LevelDelete,
    LevelGet,
    LevelWrite,
    LoadCall,
    LoadPending,
    Op,
    OriginClose,
    OriginDelete,
    OriginStore,
    WaitFlights,
    WaitReads,
)
from .plan import Loader, _Load, _Stale
from .recovery import PendingRepairs, Recovery
from .rules import LevelRule
from .safety import Safety
from .tags import TagIndex
from .write import WritePolicy, make_write_policy

__all__ = ["Flow", "Hierarchy", "Loader"]

logger = logging.getLogger("stratacache")

Flow = Generator[Op, Any, Any]

#: a level written by :meth:`Hierarchy._write_levels`: its index, what was sent, and the
#: keys it refused (None or empty: none)
Written = tuple[int, Prepared, Collection[str] | None]


class Hierarchy(FailSafe, Agreement, Recovery):
    """Levels (top first), an optional origin, and the rules between them."""

    def __init__(
        self,
        levels: Sequence[Tier],
        origin: Origin | None = None,
        *,
        write: str | WritePolicy = "through",
        negative_ttl: float | None = None,
        ttl_jitter: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        safety: Safety | None = None,
        leases: bool = True,
        lease_ttl: float = 3.0,
        lock_ttl: float = 2.0,
        bus_silence_ttl: float = 0.5,
    ) -> None:
        if not levels:
            raise ConfigurationError("a cache needs at least one level")
        if len({id(level) for level in levels}) != len(levels):
            names = [getattr(level, "name", "?") for level in levels]
            raise ConfigurationError(
                f"the same tier object appears twice in levels {names}: each level needs "
                "its own tier"
            )
        if not 0.0 <= ttl_jitter < 1.0:
            raise ConfigurationError(f"ttl_jitter is a fraction in [0, 1), got {ttl_jitter}")
        if negative_ttl is not None and not negative_ttl > 0:
            raise ConfigurationError(
                f"negative_ttl must be > 0 seconds or None, got {negative_ttl}"
            )
        self.levels = list(levels)
        for index, level in enumerate(self.levels):
            if level.name == level.kind:  # not named by the user: L1, L2, ...
                level.rename(f"L{index + 1}")
        names = [level.name for level in self.levels]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"level names must be unique, got {names}")
        self.rules = [
            LevelRule(level.name, level.ttl, ttl_jitter, level.sizing) for level in self.levels
        ]
        level_rules.check_ttls(self.rules)
        self.origin = origin
        self.write_policy = make_write_policy(write, origin)
        self.negative_ttl = negative_ttl
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.origin_stats = OriginStats()
        self.single_flight = SingleFlight()
        #: per level, the reads in flight (None for an in-process level: not coalesced)
        self.read_flights: list[ReadFlights | None] = [
            None if level.local else ReadFlights() for level in self.levels
        ]
        self.repairs = [PendingRepairs() for _ in self.levels]
        self.landing: dict[str, int] = {}
        self.restatable: dict[str, int] = {}
        self.fence = WriteFence()
        self._loaders: list[tuple[str, Loader]] = []
        self.safety = safety or Safety()
        if self.safety.fail_safe_max_age is not None:
            for level in self.levels:  # every level keeps expired values that long
                level.stale_for = self.safety.fail_safe_max_age
        self.background = Background()
        #: the hot-key counter and protection (set by the cache, see .hot)
        self.hot: HotKeys | None = None
        self.hot_counts_reads = False
        self.hot_guard: HotKeyGuard | None = None
        self.events = Listeners()
        self.stale_served = 0  # values the fail-safe served (per caller and key)
        self.load_timeouts = 0  # reads that gave up at hard_timeout with nothing stale
        self.early_refreshes = 0  # background reloads started by refresh-ahead or XFetch
        #: the first shared level that can coordinate processes (see :mod:`.claims`)
        self.coordinator: Coordinator | None = None
        for index, level in enumerate(self.levels):
            if isinstance(level, SharedTier) and level.coordinates:
                self.coordinator = Coordinator(
                    level,
                    index,
                    lease_ttl=lease_ttl,
                    lock_ttl=lock_ttl,
                    failed=self._level_failed,
                    believed=self._believed,
                )
                break
        self.leases = leases
        if not bus_silence_ttl >= 0:
            raise ConfigurationError(
                f"bus_silence_ttl must be >= 0 seconds, got {bus_silence_ttl!r}"
            )
        #: how long an in-process copy lives while the bus is silent (see _briefly)
        self.bus_silence_ttl = bus_silence_ttl
        #: tells other processes what this one wrote (the invalidation bus; None: nobody)
        self.announce: Announcer | None = None
        #: the durable queue of write="behind" (see stratacache.behind)
        self.behind: Any = None
        self.tags = TagIndex()
        self.seen = SeenVersions()

    def misses_stay_local(self) -> bool:
        """True when a miss can be answered by the only level alone: no origin and no
        registered loader to ask."""
        return (
            len(self.levels) == 1
            and self.levels[0].local
            and (self.origin is None and not self._loaders)
        )

    def sets_stay_local(self) -> bool:
        """True when ``set`` touches nothing but the only level, itself in-process."""
        if len(self.levels) != 1 or not self.levels[0].local:
            return False
        if self.behind is not None or self.announce is not None:
            return False
        origin_written = self.origin is not None and self.origin.writable
        return not (self.write_policy.writes_origin and origin_written)

    # ------------------------------------------------------------------ loaders

    def register_loader(self, prefix: str, loader: Loader) -> None:
        if not callable(loader):
            raise ConfigurationError(f"loader for prefix {prefix!r} must be callable")
        self._loaders = [(p, f) for p, f in self._loaders if p != prefix]
        self._loaders.append((prefix, loader))
        self._loaders.sort(key=lambda item: len(item[0]), reverse=True)

    def _sources(self, keys: list[str], loader: Loader | None) -> list[tuple[LoadCall, list[str]]]:
        """Group missing keys by the source that answers them."""
        if loader is not None:
            return [(LoadCall(loader, keys), keys)]
        groups: dict[int, tuple[Loader | None, list[str]]] = {}
        for key in keys:
            chosen: Loader | None = None
            for prefix, candidate in self._loaders:
                if key.startswith(prefix):
                    chosen = candidate
                    break
            groups.setdefault(id(chosen), (chosen, []))[1].append(key)
        calls = []
        for chosen, group in groups.values():
            if chosen is not None:
                calls.append((LoadCall(chosen, group), group))
            elif self.origin is not None:
                origin = self.origin
                load = LoadCall(
                    origin.load_many,
                    group,
                    aloader=origin.aload_many,
                    blocking=getattr(origin, "blocking_aload", False),
                )
                calls.append((load, group))
        return calls

    # ------------------------------------------------------------------ reads

    def read(
        self,
        keys: Sequence[str],
        loader: Loader | None = None,
        *,
        load: bool = True,
        ttl: float | None = None,
        top_missed: bool = False,
        safety: Safety | None = None,
    ) -> Flow:
        """Values for the keys found (or loaded); keys found nowhere are left out.

        ``top_missed``: the caller's L1 fast path already found nothing at all there for
        these keys (see :meth:`.front.Front.absent`), so the read starts one level down,
        counting the L1 miss."""
        missing = list(keys) if len(keys) == 1 else list(dict.fromkeys(keys))
        values: dict[str, Any] = {}
        promote: list[tuple[int, Mapping[str, Entry]]] = []
        epoch = self.fence.epoch
        since = self.single_flight.settled
        first = 0
        hot = self.hot
        # Whether the reads that got past L1 are counted yet (a cache with no L1 to feed
        # the counter from its hits counts every read here).
        counted = hot is None or self.hot_counts_reads
        past_l1 = top_missed
        if counted and hot is not None:
            hot.observe(missing)
        events = self.events
        if top_missed:
            self.levels[0].stats.misses += len(missing)
            events.emit_keys("miss", missing, self.levels[0].name)
            first = 1
        for index in range(first, len(self.levels)):
            if not missing:
                break
            if index > 0:
                past_l1 = True
                if not counted:
                    counted = True
                    hot.observe(missing)  # type: ignore[union-attr]
            level = self.levels[index]
            if self.repairs[index].owed and not (yield from self._repair(index)):
                continue
            reads = self.read_flights[index]
            asked = len(missing)
            if reads is None:
                try:
                    entries: Mapping[str, Entry] = yield LevelGet(level, missing)
                except TransientError as exc:
                    self._level_failed(level, "read", exc)
                    continue
            else:
                mine, waits = reads.claim(missing, since, epoch)
                if waits or mine is None:  # others are reading some of these keys
                    entries, asked, since, epoch = yield from self._read_shared(
                        index, reads, mine, waits, since, epoch
                    )
                else:
                    try:
                        entries = yield LevelGet(level, missing)
                    except TransientError as exc:
                        reads.fail(mine, exc)
                        self._level_failed(level, "read", exc)
                        continue
                    except BaseException:
                        reads.abandon(mine)
                        raise
                    reads.complete(mine, entries)
            if entries and not level.local:
                entries = yield from self._believed(level, entries)
            stats = level.stats
            stats.hits += len(entries)
            stats.misses += asked - len(entries)
            if events.wants("hit") or events.wants("miss"):
                events.emit_keys("hit", entries, level.name)
                events.emit_keys("miss", [k for k in missing if k not in entries], level.name)
            if not entries:
                continue
            for key, entry in entries.items():
                if not entry.negative:
                    values[key] = entry.value
            if index > 0:
                promote.append((index, entries))
            if len(entries) == len(missing):
                missing = []
                break
            missing = [key for key in missing if key not in entries]

        for index, entries in promote:
            yield from self._promote(index, entries, epoch)

        if not counted and missing:
            hot.observe(missing)  # type: ignore[union-attr]  # a cache of one level
        if missing and load:
            past_l1 = True
            how = _Load(loader, ttl, epoch, since, top_missed, safety or self.safety)
            yield from self._load(missing, how, values)
        if past_l1 and values and self.hot_guard is not None:
            self.hot_guard.keep(values, epoch)
        return values

    def _loaded_event(self, keys: list[str], started: float, error: BaseException | None) -> None:
        if self.events.wants("load"):
            self.events.emit(
                CacheEvent(
                    "load",
                    keys=tuple(keys),
                    duration=time.perf_counter() - started,
                    error=error,
                )
            )

    def _read_shared(
        self,
        index: int,
        reads: ReadFlights,
        mine: Read | None,
        waits: list[tuple[str, Read]],
        since: int,
        epoch: int,
    ) -> Flow:
        """Read shared level ``index`` when other callers are reading some of the keys:
        read ``mine`` (the keys nobody is reading), then wait for the others' reads and
        take their answers. Returns ``(entries, answered, since, epoch)``: ``answered``
        counts the keys the level answered (not the ones whose read failed); an answer
        taken from an older read makes this read count as begun when that one did."""
        level = self.levels[index]
        entries: dict[str, Entry] = {}
        answered = len(waits)
        if mine is not None:
            answered += len(mine.keys)
            got = yield from self._read_led(level, reads, mine)
            if got is None:
                answered -= len(mine.keys)
            else:
                entries.update(got)
        pending = list({id(read): read for _, read in waits}.values())
        late = yield WaitReads(level, reads, pending, [key for key, _ in waits])
        retry: list[str] = []
        for key, read in waits:
            if read.abandoned or read in late:
                retry.append(key)
                continue
            since = min(since, read.since)
            epoch = min(epoch, read.epoch)
            if read.error is not None:  # the level failed that reader: skip it here too
                answered -= 1
                continue
            assert read.entries is not None
            entry = read.entries.get(key)
            if entry is not None:
                entries[key] = entry
        if retry:  # the reader is stuck or gone: read the keys ourselves
            got = yield from self._read_led(level, reads, reads.take_over(retry, since, epoch))
            if got is None:
                answered -= len(retry)
            else:
                entries.update(got)
        return entries, answered, since, epoch

    def _read_led(self, level: Tier, reads: ReadFlights, mine: Read) -> Flow:
        """Read the keys of ``mine`` from ``level`` and settle it; returns the entries,
        or None when the level is down (counted, logged)."""
        try:
            entries: Mapping[str, Entry] = yield LevelGet(level, mine.keys)
        except TransientError as exc:
            reads.fail(mine, exc)
            self._level_failed(level, "read", exc)
            return None
        except BaseException:
            reads.abandon(mine)
            raise
        reads.complete(mine, entries)
        return entries

    def _recheck(self, keys: list[str], how: _Load) -> Flow:
        """Read the levels again for keys just claimed for loading: another caller's load
        may have landed (and filled them) between this caller's miss and its claim. A
        level is read again for the keys whose load landed with a value since the read
        began (``how.since``; for the top level the caller's L1 fast path looked at before
        that, since ever): any other key is known to be missing still, without I/O.
        Counts nothing but failures (the caller's misses are counted already); promotes
        what a lower level has. Returns the entries found."""
        single_flight = self.single_flight
        landed = single_flight.settled_since(keys, how.since)
        landed_ever = single_flight.settled_since(keys, 0) if how.top_missed else landed
        if not landed_ever:
            return {}
        since, epoch = how.since, how.epoch
        found: dict[str, Entry] = {}
        todo = keys
        promote: list[tuple[int, Mapping[str, Entry]]] = []
        for index, level in enumerate(self.levels):
            suspects = landed_ever if index == 0 else landed
            ask = [key for key in todo if key in suspects]
            if not ask:
                continue
            if self.repairs[index].owed:
                continue  # not read before it is repaired; the read proper tried already
            reads = self.read_flights[index]
            entries: Mapping[str, Entry] | None
            if reads is None:
                try:
                    entries = yield LevelGet(level, ask)
                except TransientError as exc:
                    self._level_failed(level, "read", exc)
                    continue
            else:
                mine, waits = reads.claim(ask, since, epoch)
                if waits or mine is None:
                    entries, _, since, epoch = yield from self._read_shared(
                        index, reads, mine, waits, since, epoch
                    )
                else:
                    entries = yield from self._read_led(level, reads, mine)
            if entries and not level.local:
                entries = yield from self._believed(level, entries)
            if not entries:
                continue
            found.update(entries)
            if index > 0:
                promote.append((index, entries))
            todo = [key for key in todo if key not in entries]
            if not todo:
                break
        for index, entries in promote:
            yield from self._promote(index, entries, epoch)
        return found

    def refresh(self, keys: Sequence[str]) -> Flow:
        """Reload ``keys`` ahead of their expiry (refresh-ahead, XFetch), in the
        background: keys already loading are left to that load, the others are claimed
        so that readers missing them meanwhile wait for this load instead of starting
        their own. Returns what was loaded."""
        single_flight = self.single_flight
        lead, waits = single_flight.claim(keys)
        single_flight.joined -= len(waits)  # nobody waits: those keys are simply skipped
        if not lead:
            return {}
        self.early_refreshes += len(lead)
        how = _Load(None, None, self.fence.epoch, single_flight.settled)
        try:
            values = yield from self._load_now([f.key for f in lead], how)
        except Exception as exc:
            single_flight.fail(lead, exc)
            raise
        except BaseException:
            single_flight.abandon(lead)
            raise
        single_flight.complete(lead, values)
        return values

    def _promote(self, index: int, entries: Mapping[str, Entry], epoch: int) -> Flow:
        """Copy hits found at level ``index`` into every level above it, each copy living no
        longer than what remains of the entry (nor than the upper level's own TTL)."""
        now = self.wall_clock()
        upper = self.rules[:index]
        per_level: list[dict[str, Entry]] = [{} for _ in upper]
        written = self.fence.changed_since(entries, epoch)
        for key, entry in entries.items():
            if key in written:  # a write since we read it: our copy may be the old value
                continue
            expiries = level_rules.expiries(upper, now, cap=entry.expires_at, rng=self.rng)
            for level_index, expiry in enumerate(expiries):
                per_level[level_index][key] = entry._replace(expires_at=expiry)
        if self.tags.used:
            self.tags.index_local({k: e for k, e in entries.items() if e.tags})
        prepared = self._prepare_some(per_level + [{}] * (len(self.levels) - index))
        for item in prepared:
            item.mode = FILL  # a copy: never over a newer value a shared level has
        landed: list[Written] = []
        yield from self._write_levels(prepared, range(index - 1, -1, -1), owed=False, landed=landed)
        yield from self._unfill_raced(landed, epoch)

    def _load(self, missing: list[str], how: _Load, values: dict[str, Any]) -> Flow:
        """Load what every level lacks, once: keys another caller is already loading are
        awaited rather than loaded again (see :mod:`stratacache.stampede`)."""
        flights = self.single_flight
        lead, waits = flights.claim(missing)
        if lead:
            values.update((yield from self._lead(lead, how)))
        if not waits:
            return
        safety = how.safety
        late = yield WaitFlights(flights, waits, safety.first_wait)
        if late and safety.active:
            late = yield from self._overdue_flights(late, how, values)
        retry: list[Flight] = []
        failed: list[Flight] = []
        for flight in waits:
            if flight.key in values and flight in late:
                continue  # answered by the fail-safe above
            if flight in late or flight.abandoned:
                retry.append(flight)
            elif flight.error is not None:
                failed.append(flight)
            elif flight.found:
                values[flight.key] = flight.value
                if flight.stale:
                    self._served_stale((flight.key,))
        if failed:
            yield from self._waited_for_failure(failed, how, values)
        flights.coalesced += len(waits) - len(retry)
        if retry:  # the leader is stuck or gone: load the keys ourselves
            values.update((yield from self._lead(flights.take_over(retry), how)))

    def _lead(self, led: list[Flight], how: _Load) -> Flow:
        """Load the keys of flights this caller leads (returning what was found), and
        settle every one of them, even when the caller is cancelled or interrupted. The
        levels are read again for them first (see :meth:`_recheck`): what they hold now
        is not loaded again."""
        flights = self.single_flight
        values: dict[str, Any] = {}
        try:
            found = yield from self._recheck([f.key for f in led], how)
            if found:
                answered = [f for f in led if f.key in found]
                led = [f for f in led if f.key not in found]
                for key, entry in found.items():
                    if not entry.negative:
                        values[key] = entry.value
                flights.complete(answered, values)
                flights.coalesced += len(answered)
            if led and self.leases and self.coordinator is not None:
                led = yield from self._leased(led, how, values)
            if led:
                by_key = {f.key: f for f in led}
                values.update((yield from self._load_now(list(by_key), how, by_key)))
        except Exception as exc:
            yield from self._release_leases(how)
            flights.fail(self._attached(led, how), exc)
            raise
        except BaseException:
            # Cancelled, interrupted, or the flow closed: no answer to give. The waiters
            # load the keys themselves rather than inherit this caller's fate.
            flights.abandon(self._attached(led, how))
            raise
        if led:
            flights.complete(self._attached(led, how), values, how.stale)
        return values

    @staticmethod
    def _attached(led: list[Flight], how: _Load) -> list[Flight]:
        """The flights this caller still settles: not those whose load it left running in
        the background (that load settles them when it lands)."""
        if not how.detached:
            return led
        return [f for f in led if f.key not in how.detached]

    def _load_now(
        self, missing: list[str], how: _Load, flights: Mapping[str, Flight] | None = None
    ) -> Flow:
        """Ask the sources for ``missing`` and fill the levels; returns what they found.

        Under a fail-safe or timeouts (``how.safety``), a source that fails or overruns
        its wait answers with stale values where the levels kept them (see
        :meth:`_rescue`); a load left running lands in the background with the
        ``flights`` of its keys."""
        stats = self.origin_stats
        safety = how.safety
        loaded_entries: dict[str, Any] = {}
        not_found: list[str] = []
        served: dict[str, Any] = {}
        for call, group in self._sources(missing, how.loader):
            call.histogram = stats.latency
            stats.calls += 1
            stats.loads += len(group)
            wait = safety.first_wait
            if wait is not None:
                call.timeout = wait
                call.background = self.background
            started = time.perf_counter()
            try:
                try:
                    loaded = yield call
                except LoadPending as pending:
                    loaded = yield from self._overdue(pending.pending, group, how, flights)
                    if isinstance(loaded, _Stale):  # left running; stale values meanwhile
                        served.update(loaded.values)
                        continue
                loaded = self._accepted(loaded, group)
                self._loaded_event(group, started, None)
                self._note_versions(loaded, how)
                if self.behind is not None:
                    loaded = self._with_pending(loaded, group)
            except LoadTimeoutError:
                raise
            except ConfigurationError:
                stats.errors += 1
                raise
            except Exception as exc:
                stats.errors += 1
                self._loaded_event(group, started, exc)
                if safety.fail_safe_max_age is None:
                    if isinstance(exc, OriginError):
                        raise
                    raise self._load_error(exc, group) from exc
                error = exc if isinstance(exc, OriginError) else self._load_error(exc, group)
                served.update((yield from self._rescue(group, how, error)))
                continue
            for key in group:
                if key in loaded:
                    loaded_entries[key] = loaded[key]
                else:
                    not_found.append(key)
        stats.found += len(loaded_entries)
        yield from self._fill(loaded_entries, not_found, how)
        if served:
            return {**loaded_entries, **served}
        return loaded_entries

    def _note_versions(self, loaded: Mapping[str, Any], how: _Load) -> None:
        """Keep the versions an origin with row versions gave (see origin.Versioned): the
        fill is stamped with them. Not under write-behind, whose writes reach the origin
        later and are numbered by the shared level's counter meanwhile."""
        if isinstance(loaded, Versioned) and self.behind is None:
            how.origin_versions.update(loaded.versions)

    def _with_pending(self, loaded: Mapping[str, Any], group: list[str]) -> Mapping[str, Any]:
        """Under write-behind the origin may not have this process's last writes yet:
        what the queue still holds for a key wins over what the origin answered."""
        pending = self.behind.pending(group)
        if not pending:
            return loaded
        merged = dict(loaded)
        for key, value in pending.items():
            if value is DELETED:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def _load_error(self, exc: BaseException, group: list[str]) -> OriginError:
        hint = ""
        if isinstance(exc, TypeError):
            hint = (
                " (a loader is called with a list of keys and returns a mapping "
                "{key: value}; a per-key function fits as "
                "lambda keys: {k: fn(k) for k in keys})"
            )
        error = OriginError(
            f"loading {len(group)} key(s) (first {group[0]!r}) failed: {exc!r}{hint}"
        )
        error.__cause__ = exc
        return error

    def _accepted(self, loaded: Any, group: list[str]) -> Mapping[str, Any]:
        """A source's answer, checked: a mapping (None: nothing found)."""
        if loaded is None:
            return {}
        if not isinstance(loaded, Mapping):
            raise OriginError(
                f"a loader must return a mapping of key -> value (keys left out mean "
                f"'not found'); got {type(loaded).__qualname__}"
            )
        return loaded

    def _fill(self, found: Mapping[str, Any], not_found: Sequence[str], how: _Load) -> Flow:
        """Store freshly loaded values (and remembered misses) in every level, except for
        keys written since the read began (see :mod:`.fence`). Shared levels take them as
        fills (see :class:`~stratacache.tiers.base.Prepared`): keys under this read's
        lease carry it, the rest go in only where nothing newer is."""
        epoch = how.epoch
        answered = [*found, *not_found]  # the keys whose load ends here
        written = self.fence.changed_since(answered, epoch)
        if written:
            found = {k: v for k, v in found.items() if k not in written}
            not_found = [k for k in not_found if k not in written]
        if not found and not (not_found and self.negative_ttl):
            yield from self._release_leases(how, answered)
            return
        lease = how.leases[-1] if how.leases else None
        version = lease.version if lease is not None else 0
        per_level = self.entries_for(
            found, how.ttl, version=version, versions=how.origin_versions or None
        )
        if not_found and self.negative_ttl:
            now = self.wall_clock()
            for key in not_found:
                expiries = level_rules.expiries(self.rules, now, ttl=self.negative_ttl)
                for level_index, expiry in enumerate(expiries):
                    stamp = how.origin_versions.get(key, version)
                    per_level[level_index][key] = Entry(None, expiry, True, stamp)
        landed: list[Written] = []
        if lease is not None and lease.granted:
            leased = [
                {k: e for k, e in entries.items() if k in lease.granted} for entries in per_level
            ]
            rest = [
                {k: e for k, e in entries.items() if k not in lease.granted}
                for entries in per_level
            ]
            settled = yield from self._write_fill(leased, lease.token, landed)
            lease.granted.difference_update(settled)
            per_level = rest
        if self.coordinator is not None:
            per_level = self._unleased(per_level, how)
        yield from self._write_fill(per_level, None, landed)
        yield from self._release_leases(how, answered)  # keys left without a fill
        yield from self._unfill_raced(landed, epoch)

    def _unleased(self, per_level: list[dict[str, Entry]], how: _Load) -> list[dict[str, Entry]]:
        """A fill without a lease (the wait for another process's fill ran out, or the
        shared level did not answer the claim) stays in this process: nothing tells a
        shared level that a write committed between this load's read of the origin and
        now, so it could put back the value from before that write for everyone. The
        in-process copy is safe: the fence and the bus drop it when such a write is
        announced. Keys whose version the origin gave are exact and fill everywhere."""
        exact = how.origin_versions
        return [
            entries if level.local else {k: e for k, e in entries.items() if k in exact}
            for level, entries in zip(self.levels, per_level, strict=True)
        ]

    def _write_fill(
        self, per_level: list[dict[str, Entry]], token: str | None, landed: list[Written]
    ) -> Flow:
        """Write a fill (``landed`` gets what each level stored); returns the keys
        whose lease (``token``) the fill settled on the shared level (stored there). Any
        other key of the lease (refused because a write holds the key or the lease was
        lost, too large for that level, not encodable, the level down) may still hold
        it and is released by the caller, so nobody waits for a fill that never comes
        (releasing a lease already lost does nothing)."""
        if not any(per_level):
            return set()
        prepared = self._prepare_some(per_level)
        for item in prepared:
            item.mode = FILL
        coordinator = self.coordinator
        if token is not None and coordinator is not None:
            prepared[coordinator.index].token = token
        errors = coordinator.level.stats.errors if coordinator is not None else 0
        refused = yield from self._write_levels(
            prepared, range(len(self.levels) - 1, -1, -1), owed=False, landed=landed
        )
        if coordinator is None or coordinator.level.stats.errors != errors:
            return set()
        return set(prepared[coordinator.index].items) - refused

    def _unfill_raced(self, landed: list[Written], epoch: int) -> Flow:
        """A write that raced with the fill (or copy) just made may have been overwritten
        by it: drop those keys again where the fill landed (``landed``, per level), so
        the next read finds what the write left. Where a level refused the fill (a newer
        version, a write's lock, a lost lease) the level holds the write's doing, not
        ours, and keeps it: dropping it there would throw away another process's newer
        value (under write-behind, one its origin may not have yet)."""
        if not landed or self.fence.epoch == epoch:  # nothing written since the read began
            return
        stored: dict[int, set[str]] = {}
        for index, item, kept in landed:  # a level can be written twice (leased, then not)
            stored.setdefault(index, set()).update(
                key for key in item.items if not kept or key not in kept
            )
        raced = self.fence.changed_since(set().union(*stored.values()), epoch)
        if not raced:
            return
        shared: set[str] = set()
        for index in sorted(stored, reverse=True):
            level, keys = self.levels[index], sorted(raced & stored[index])
            if not keys:
                continue
            if not level.local:
                shared.update(keys)
            try:
                yield LevelDelete(level, keys)
            except TransientError as exc:
                self._level_failed(level, "invalidate", exc)
                yield from self._owe(index, keys)
        if shared and self.announce is not None:
            # other processes may have copied the fill from a shared level meanwhile
            ordered = sorted(shared)
            self.announce.publish_keys(ordered, [self.seen.latest(key) for key in ordered])

    # ------------------------------------------------------------------ writes

    def entries_for(
        self,
        items: Mapping[str, Any],
        ttl: float | None,
        *,
        version: int = 0,
        versions: Mapping[str, int] | None = None,
        tags: tuple[str, ...] = (),
    ) -> list[dict[str, Entry]]:
        """Per level, the entries to store for ``items`` with expiries that agree,
        stamped with ``versions[key]`` (else ``version``) and carrying ``tags``."""
        now = self.wall_clock()
        written = now if tags else 0.0
        per_level: list[dict[str, Entry]] = [{} for _ in self.levels]
        for key, value in items.items():
            expiries = level_rules.expiries(self.rules, now, ttl=ttl, rng=self.rng)
            stamp = versions.get(key, version) if versions else version
            for level_index, expiry in enumerate(expiries):
                per_level[level_index][key] = Entry(value, expiry, False, stamp, tags, written)
        return per_level

    def prepare_levels(self, per_level: list[dict[str, Entry]]) -> list[Prepared]:
        """Encode for every level; refuse, before anything is written anywhere, a value that
        no level can hold."""
        prepared = [
            level.prepare(entries) for level, entries in zip(self.levels, per_level, strict=True)
        ]
        if prepared and prepared[0].rejected:
            everywhere = set(prepared[0].rejected)
            for item in prepared[1:]:
                everywhere &= item.rejected.keys()
            if everywhere:
                key = next(iter(everywhere))
                sizes = ", ".join(
                    f"{level.name} ({level.kind}) max {level.size_limit()}" for level in self.levels
                )
                measured = ", ".join(
                    f"{level.name}: {item.rejected[key]} bytes"
                    for level, item in zip(self.levels, prepared, strict=True)
                )
                raise ValueTooLargeError(
                    f"the value for key {key!r} is too large for every level ({measured}; "
                    f"limits: {sizes}); raise a level's maximum or store a smaller value"
                )
        return prepared

    def _prepare_some(self, per_level: list[dict[str, Entry]]) -> list[Prepared]:
        """Encode for the levels that have entries. Fills and promotions never fail the
        read that caused them: a value too large for a level, or one its serializer cannot
        encode, is just not cached there (counted, and logged)."""
        return [
            self._prepare_leniently(level, entries) if entries else Prepared()
            for level, entries in zip(self.levels, per_level, strict=True)
        ]

    def _prepare_leniently(self, level: Tier, entries: dict[str, Entry]) -> Prepared:
        try:
            return level.prepare(entries)
        except SerializationError:
            pass
        # Find the culprits one by one; the other keys are still cached.
        prepared = Prepared()
        for key, entry in entries.items():
            try:
                one = level.prepare({key: entry})
            except SerializationError as exc:
                level.stats.unencodable += 1
                level.warnings.warning(
                    "unencodable",
                    "level %s (%s) cannot store the value of key %.200r: %s",
                    level.name,
                    level.kind,
                    key,
                    exc,
                )
                continue
            prepared.items.update(one.items)
            prepared.rejected.update(one.rejected)
        return prepared

    def _write_levels(
        self,
        prepared: list[Prepared],
        order: range,
        *,
        owed: bool = True,
        landed: list[Written] | None = None,
    ) -> Flow:
        """Write each level in ``order``, skipping (and counting) a level that is down.
        ``landed`` gets ``(index, item, refused)`` for each level written: what it
        stored is ``item``'s keys less those refused (worked out only when needed).

        ``owed``: a level that misses this write owes a delete of its keys (it may hold
        an older value). Not so for fills and promotions (``owed=False``): they copy
        what is already true, and whatever the level kept is a cached value like any
        other. Owing deletes for them made a level that came back after an outage drop
        every key read meanwhile (4,763 of them after a 10 s pause under load)."""
        refused: set[str] = set()
        silent = self.announce is not None and not self.announce.healthy
        for index in order:
            level = self.levels[index]
            item = prepared[index]
            if refused:
                item = self._without(item, refused, delete=owed)
            if silent and level.local and item.items:
                item = self._briefly(item)
            if not item.items and not item.rejected:
                continue
            level.stats.too_large += sum(1 for size in item.rejected.values() if size)
            if self.repairs[index] and not (yield from self._repair(index)):
                if owed:
                    yield from self._owe(index, [*item.items, *item.rejected])
                continue
            try:
                kept = yield LevelWrite(level, item)
            except TransientError as exc:
                self._level_failed(level, "write" if owed else "fill", exc)
                if owed:  # it may still hold an older value for these keys
                    yield from self._owe(index, [*item.items, *item.rejected])
            else:
                level.stats.writes += len(item.items)
                if landed is not None:
                    landed.append((index, item, kept))
                if kept:
                    # A newer version is there, a write holds the key, or the fill's
                    # lease was lost: the levels above must not keep this value either.
                    level.stats.writes -= len(kept)
                    level.stats.refused += len(kept)
                    refused.update(kept)
        return refused

    @staticmethod
    def _without(item: Prepared, refused: set[str], *, delete: bool) -> Prepared:
        """``item`` less the keys a lower level refused; with ``delete``, the level drops
        them instead (it may hold an older value of a key written elsewhere since)."""
        if not refused.intersection(item.items):
            return item
        kept = Prepared(
            {k: v for k, v in item.items.items() if k not in refused},
            dict(item.rejected),
            item.versions,
            item.mode,
            item.token,
        )
        if delete:
            for key in refused.intersection(item.items):
                kept.rejected[key] = DROPPED
        return kept

    def write(
        self, items: Mapping[str, Any], ttl: float | None, tags: tuple[str, ...] = ()
    ) -> Flow:
        """``set``, as the write policy says (see :mod:`.write`). Entries are encoded for
        every level first, so a value no level can hold raises ValueTooLargeError before
        any I/O; the write is marked in the fence, so reads in flight do not fill over
        it; the levels are written bottom-up, so no upper level ever holds what the level
        below lacks. Write-around writes the origin and invalidates the levels instead
        (see :meth:`_write_around`)."""
        if not self.write_policy.writes_levels:
            yield from self._write_around(items)
            return
        self.prepare_levels(self.entries_for(items, ttl, tags=tags))  # refuse what fits nowhere
        origin = self.origin
        to_origin = self.write_policy.writes_origin and origin is not None and origin.writable
        # Write-behind takes versions without the lock: its flushers lock the keys when
        # they store them (see Agreement.store_in_order).
        versions, token = yield from self._versions(list(items), lock=to_origin)
        if to_origin and self.coordinator is not None and not versions:
            # The shared level that orders writes did not answer: this write cannot be
            # ordered against other processes' writes of the same keys, so no level may
            # keep its value (it could land after a later write's). It goes around the
            # cache instead: the origin, then every level drops the keys (a level that
            # is down owes the delete), and the next read loads what the origin holds.
            yield from self._write_around(items)
            return
        epoch = self.fence.mark(items)
        try:
            prepared = self.prepare_levels(
                self.entries_for(items, ttl, versions=versions, tags=tags)
            )
            if self.coordinator is not None and token is not None:
                prepared[self.coordinator.index].token = token  # its write frees the lock
            if to_origin:
                assert origin is not None
                try:
                    stored = yield OriginStore(origin, items)
                except ConfigurationError:
                    raise
                except Exception as exc:
                    self.origin_stats.errors += 1
                    raise OriginError(
                        f"writing {len(items)} key(s) to the origin failed, no level was "
                        f"changed: {exc!r}"
                    ) from exc
                self.origin_stats.stores += len(items)
                if isinstance(stored, Versioned):  # the origin numbers its rows itself
                    versions = {**versions, **stored.versions}
                if stored is not None:
                    prepared = self._prepare_stored(items, stored, ttl, versions, token, tags)
            elif self.behind is not None:
                self.landing.update(versions)  # until the levels have it (see _after_flush)
                if ttl is None and not tags:
                    self.restatable.update(versions)
                yield JournalWrite(self.behind, items, versions=versions)
        except BaseException:
            self._landed(versions)
            if self.coordinator is not None:
                yield from self.coordinator.release(list(items), token)
            raise
        if tags:
            self.tags.used = True
            self.tags.index_local(dict.fromkeys(items, Entry(None, tags=tags)))
        try:
            refused = yield from self._write_levels(prepared, range(len(self.levels) - 1, -1, -1))
            if refused and self.behind is not None and self.coordinator is not None:
                versions = yield from self._number_again(items, refused, ttl, tags, versions)
        finally:
            self._landed(versions)
        if token is not None and self.coordinator is not None:
            unwritten = list(prepared[self.coordinator.index].rejected)
            yield from self.coordinator.release(unwritten, token)  # not settled by a write
        yield from self._settle_write(list(items), epoch, versions)

    def _landed(self, versions: Mapping[str, int]) -> None:
        landing = self.landing
        if landing:
            for key, version in versions.items():
                if landing.get(key) == version:
                    del landing[key]

    def _number_again(
        self,
        items: Mapping[str, Any],
        refused: Collection[str],
        ttl: float | None,
        tags: tuple[str, ...],
        versions: Mapping[str, int],
    ) -> Flow:
        """A write-behind ``set`` whose value the shared level refused as older: takes
        new versions for those keys, journals them again and writes the levels again.
        Returns the versions the write ends with.

        A write-behind set holds no lock, so between its version and its write of the
        level a read elsewhere may miss, take a lease numbered after it, load the
        origin's row from before the set (the set is only queued) and fill it. That fill
        would refuse the set's value and serve the older row to every process, the
        writer's included, until the flush. A key a newer write this process heard of
        refused is left alone: that write is newer indeed. Another concurrent write
        of the key that this one now overtakes was concurrent, so either order is
        right; the queue keeps the higher version (see ``journal.supersedes``)."""
        latest = self.seen.latest
        again = {
            key: value
            for key, value in items.items()
            if key in refused and latest(key) <= versions.get(key, 0)
        }
        if not again:
            return versions
        fresh, _ = yield from self._versions(list(again), lock=False)
        if not fresh:
            return versions
        self.fence.mark(again)
        self.landing.update(fresh)
        if ttl is None and not tags:
            self.restatable.update(fresh)
        yield JournalWrite(self.behind, again, versions=fresh)
        prepared = self.prepare_levels(self.entries_for(again, ttl, versions=fresh, tags=tags))
        yield from self._write_levels(prepared, range(len(self.levels) - 1, -1, -1))
        return {**versions, **fresh}

    def _write_around(self, items: Mapping[str, Any]) -> Flow:
        """Write-around: store in the origin only, then drop the keys from every level
        as :meth:`invalidate` does (a level that is down owes the delete). No level is
        written, so nothing is encoded and any value the origin takes is fine. The fence
        is marked before the origin is touched: a read that loaded the old value
        meanwhile does not fill it back (and :meth:`invalidate` marks it again)."""
        origin = self.origin
        if origin is None or not origin.writable:  # refused when the cache was built
            raise ConfigurationError("write='around' needs an origin that can store")
        self.fence.mark(items)
        try:
            yield OriginStore(origin, items)
        except ConfigurationError:
            raise
        except Exception as exc:
            self.origin_stats.errors += 1
            raise OriginError(
                f"writing {len(items)} key(s) to the origin failed, no level was changed: {exc!r}"
            ) from exc
        self.origin_stats.stores += len(items)
        yield from self.invalidate(list(items))

    def _prepare_stored(
        self,
        items: Mapping[str, Any],
        stored: Mapping[str, Any],
        ttl: float | None,
        versions: Mapping[str, int],
        token: str | None,
        tags: tuple[str, ...] = (),
    ) -> list[Prepared]:
        """The levels keep what the origin says it holds (its defaults, column types and
        triggers applied), not the caller's values. The origin has been written by now, so
        nothing may raise: a stored value a level cannot hold, and a key the origin's
        answer leaves out (it does not hold it), are dropped from that level instead, and
        the next read loads them."""
        held = {key: stored[key] for key in items if key in stored}
        prepared = self._prepare_some(self.entries_for(held, ttl, versions=versions, tags=tags))
        if self.coordinator is not None and token is not None:
            prepared[self.coordinator.index].token = token
        for item in prepared:
            for key in items:
                if key not in item.items and key not in item.rejected:
                    item.rejected[key] = DROPPED
        return prepared

    # ------------------------------------------------------------------ deletes

    def invalidate(self, keys: Sequence[str], versions: Mapping[str, int] | None = None) -> Flow:
        """Drop the keys from every level (never the origin), bottom-up: an upper level
        cannot be refilled from a lower one that still has the old value. ``versions``:
        a write-behind delete's, announced with the keys (see :meth:`_number_again`)."""
        keys = list(dict.fromkeys(keys))
        self.fence.mark(keys)
        numbers = [versions.get(key, 0) for key in keys] if versions else None
        if numbers is not None:
            self.seen.saw(keys, numbers)
        else:
            self.seen.forget(keys)  # a row deleted and made again starts its versions anew
        for index in range(len(self.levels) - 1, -1, -1):
            level = self.levels[index]
            try:
                yield LevelDelete(level, keys)
            except TransientError as exc:
                self._level_failed(level, "invalidate", exc)
                yield from self._owe(index, keys)
        if self.announce is not None:
            self.announce.publish_keys(keys, numbers)

    def delete(self, keys: Sequence[str]) -> Flow:
        """Remove from the origin, then from every level. With a shared level the delete
        holds the keys' write locks, like a write (see :mod:`.claims`): a write of the
        same key in another process lands wholly before or wholly after it."""
        keys = list(dict.fromkeys(keys))
        token = None
        versions: Mapping[str, int] = {}
        if self.origin is not None and self.coordinator is not None:
            # locked unless queued: write-behind's flusher locks the keys it stores
            versions, token = yield from self.coordinator.versions(keys, lock=self.behind is None)
        self.fence.mark(keys)
        try:
            if self.behind is not None:  # queued behind the writes of the same keys
                yield JournalWrite(self.behind, {}, keys, versions=versions)
            elif self.origin is not None:
                try:
                    yield OriginDelete(self.origin, keys)
                except ConfigurationError:
                    raise
                except Exception as exc:
                    self.origin_stats.errors += 1
                    raise OriginError(
                        f"deleting {len(keys)} key(s) from the origin failed: {exc!r}"
                    ) from exc
                self.origin_stats.deletes += len(keys)
            # A write-behind delete's versions are announced: a set that its tombstone
            # refuses elsewhere then knows a newer write refused it, not a stale fill.
            yield from self.invalidate(keys, versions if self.behind is not None else None)
            if self.behind is not None and versions:
                yield from self._bury(keys, versions)
        finally:
            if token is not None and self.coordinator is not None:
                yield from self.coordinator.release(keys, token)

    def _bury(self, keys: list[str], versions: Mapping[str, int]) -> Flow:
        """A write-behind delete leaves a tombstone in the shared level that orders
        writes: a negative entry at the delete's version, expiring as a set's value
        would. A set takes no lock under write-behind, so an older one may still be on
        its way to the level (its process slowed between its version and its write);
        without the tombstone nothing there would refuse it after the delete."""
        coordinator = self.coordinator
        assert coordinator is not None
        level = coordinator.level
        entries = self.entries_for(dict.fromkeys(keys), None, versions=versions)
        tombstones = {
            key: entry._replace(negative=True) for key, entry in entries[coordinator.index].items()
        }
        try:
            yield LevelWrite(level, level.prepare(tombstones))
        except TransientError as exc:
            self._level_failed(level, "delete", exc)
            yield from self._owe(coordinator.index, keys)

    def clear(self) -> Flow:
        self.fence.mark_all()
        for index in range(len(self.levels) - 1, -1, -1):
            level = self.levels[index]
            generation = self.repairs[index].clears
            try:
                yield LevelClear(level)
            except TransientError as exc:
                self._level_failed(level, "clear", exc)
                yield from self._owe(index, None)
            else:
                self.repairs[index].done((), cleared=generation)
        if self.announce is not None:
            self.announce.publish_clear()

    # ------------------------------------------------------------------ misc

    def _level_failed(self, level: Tier, what: str, exc: BaseException) -> None:
        level.stats.errors += 1
        level.warnings.warning(
            DOWN, "level %s (%s) skipped on %s: %s", level.name, level.kind, what, exc
        )

    def stats(self) -> CacheStats:
        origin = self.origin_stats
        return CacheStats(
            levels=[_snapshot(level) for level in self.levels],
            origin_loads=origin.loads,
            origin_calls=origin.calls,
            origin_errors=origin.errors,
            origin_mean_us=origin.latency.mean_us(),
            origin_p99_us=origin.latency.quantile_us(0.99),
            loads_coalesced=self.single_flight.coalesced,
            stale_served=self.stale_served,
            load_timeouts=self.load_timeouts,
            early_refreshes=self.early_refreshes,
            lease_waits=self.coordinator.lease_waits if self.coordinator else 0,
            lease_wait_timeouts=self.coordinator.lease_wait_timeouts if self.coordinator else 0,
            lease_retakes=self.coordinator.lease_retakes if self.coordinator else 0,
            lock_waits=self.coordinator.lock_waits if self.coordinator else 0,
            bus=self.announce.snapshot() if self.announce is not None else {},
            write_behind=self.behind.stats.snapshot() if self.behind is not None else {},
            hot_keys=self.hot.top(HOT_KEYS_IN_STATS) if self.hot is not None else [],
            hot_pins=self.hot_guard.pins if self.hot_guard is not None else 0,
        )

    def reset_stats(self) -> None:
        if self.hot_guard is not None:
            self.hot_guard.pins = 0
        for level in self.levels:
            level.stats.reset()
        self.origin_stats.reset()
        self.single_flight.coalesced = 0
        self.stale_served = self.load_timeouts = self.early_refreshes = 0
        if self.coordinator is not None:
            coordinator = self.coordinator
            coordinator.lease_waits = coordinator.lease_wait_timeouts = 0
            coordinator.lease_retakes = 0
            coordinator.lock_waits = 0

    def close(self) -> Flow:
        """Close every level, then the origin; closing goes on past a failure, and the
        first failure is raised at the end."""
        self.background.close()
        errors: list[BaseException] = []
        closers: list[Op] = []
        if self.behind is not None:  # first: it still needs the origin
            closers.append(Blocking(self.behind.close))
        if self.announce is not None:
            closers.append(Blocking(self.announce.close))
        closers += [LevelClose(level) for level in self.levels]
        if self.origin is not None:
            closers.append(OriginClose(self.origin))
        for op in closers:
            try:
                yield op
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


HOT_KEYS_IN_STATS = 10


def _snapshot(level: Tier) -> LevelSnapshot:
    """The level's counters, with what it holds when that is known without I/O."""
    snapshot = level.stats.snapshot()
    if isinstance(level, MemoryTier):
        bytes_held = level.weight if level.weighted else None
        return dataclasses.replace(snapshot, entries=len(level), bytes=bytes_held)
    return snapshot
