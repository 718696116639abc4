"""The half of the hierarchy's flow that keeps processes agreeing: what it believes of a
shared level (versions seen, tags), leases around loads, versions and locks around
writes, and what it does when the bus reports another process's writes.

A mixin of :class:`~.flow.Hierarchy` (the attributes it uses are declared below and set
up there). The shared level's side is :mod:`.claims`; the bus is
:mod:`stratacache.coherence`; tags are :mod:`.tags`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from ..behind import DELETED
from ..entry import NEVER, Entry
from ..errors import TransientError
from ..stampede import Flight, SingleFlight
from ..steps import drive
from ..tiers.base import Prepared, Tier
from ..tiers.shared import LEASE
from .claims import Coordinator, Lease
from .fence import SeenVersions, WriteFence
from .ops import Blocking, LevelDelete, LevelGet, LevelWrite, Op, Pause, perform
from .plan import _Load
from .tags import TagIndex, tag_key

if TYPE_CHECKING:
    from collections.abc import Generator

    Flow = Generator[Op, Any, Any]
else:
    Flow = Any

__all__ = ["FLUSH_MARK_TTL", "Agreement", "Announcer", "flush_mark"]

#: How long a shared level remembers the newest write-behind version stored in the origin
#: per key: the longest two processes' writes of a key can be stored out of order and
#: still be put in order (an origin outage longer than this may let an older write be
#: stored after a newer one; the levels are then reloaded from the origin all the same)
FLUSH_MARK_TTL = 600.0

_FLUSH_MARK = "__stratacache_flushed__:"

#: what a flusher concludes of a key it stored (see Agreement._flushed_verdict)
AGREES, DOUBTFUL, NEWER, STALE = "agrees", "doubtful", "newer", "stale"
RESTATE = "restate"

#: how long a flusher waits for the announcement of a newer write it found in the shared
#: level before it takes that value for a stale load (see Agreement._flushed_verdicts):
#: the bus delivers in a few milliseconds on one host, tens under heavy load
ANNOUNCEMENT_GRACE = 0.2
ANNOUNCEMENT_POLL = 0.005


def flush_mark(key: str) -> str:
    """The shared level's key of ``key``'s write-behind mark (see store_in_order)."""
    return _FLUSH_MARK + key


class Announcer(Protocol):
    """Where the flow tells other processes what changed (see :mod:`stratacache.coherence`):
    non-blocking, never raises."""

    def publish_keys(self, keys: Sequence[str], versions: Sequence[int] | None = None) -> None: ...

    def publish_clear(self) -> None: ...

    def publish_tags(self, tags: Sequence[str], at: float) -> None: ...

    def close(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    @property
    def healthy(self) -> bool: ...


class Agreement:
    bus_silence_ttl: float
    _served_stale: Callable[[Iterable[str]], None]
    levels: list[Tier]
    fence: WriteFence
    seen: SeenVersions
    tags: TagIndex
    coordinator: Coordinator | None
    announce: Announcer | None
    single_flight: SingleFlight
    wall_clock: Callable[[], float]
    _promote: Callable[[int, Mapping[str, Entry], int], Flow]
    _write_levels: Callable[..., Flow]
    prepare_levels: Callable[[list[dict[str, Entry]]], list[Prepared]]
    _level_failed: Callable[[Tier, str, BaseException], None]
    _stale: Callable[[list[str], float], Flow]
    stale_served: int
    invalidate: Callable[[Sequence[str]], Flow]
    #: per key, the version of this process's write-behind set on its way to the levels
    landing: dict[str, int]
    #: per key, the version of this process's queued write-behind set made without a
    #: ttl or tags: what a flusher may write back into the shared level (see _restate)
    restatable: dict[str, int]
    entries_for: Callable[..., list[dict[str, Entry]]]
    _owe: Callable[[int, Iterable[str] | None], Flow]

    def _believed(self, level: Tier, entries: Mapping[str, Entry]) -> Flow:
        """What a shared level answered, less entries older than a write this process
        saw (see :class:`.fence.SeenVersions`) and entries one of whose tags was
        invalidated after they were written (see :mod:`.tags`)."""
        seen = self.seen
        outdated: list[str] = []
        tagged = False
        for key, entry in entries.items():
            if seen.older(key, entry.version):
                outdated.append(key)
            if entry.tags:
                tagged = True
        if tagged:
            self.tags.used = True  # from now on reads check tags and L1 indexes them
        if outdated:
            level.stats.outdated += len(outdated)
            level.warnings.warning(
                "outdated",
                "level %s (%s) answered %d key(s) (first %.200r) with a version older than "
                "one this process saw written (read while that write landed, a write that "
                "missed the level, or an envelope copied back): read as misses",
                level.name,
                level.kind,
                len(outdated),
                outdated[0],
            )
            entries = {k: e for k, e in entries.items() if k not in outdated}
        if self.tags.used and entries:
            entries = yield from self._without_tag_stale(entries)
        return entries

    def _without_tag_stale(self, entries: Mapping[str, Entry]) -> Flow:
        """``entries`` less those written before one of their tags was invalidated
        (see :mod:`.tags`); reads the invalidation times this process does not know."""
        tagged = [entry for entry in entries.values() if entry.tags]
        if not tagged:
            return entries
        tags = self.tags
        unknown = tags.unknown({tag for entry in tagged for tag in entry.tags})
        if unknown:
            yield from self._read_tag_times(unknown)
        return {key: e for key, e in entries.items() if not (e.tags and tags.stale(e))}

    def _read_tag_times(self, unknown: list[str]) -> Flow:
        times = dict.fromkeys(unknown, 0.0)  # never invalidated, unless a level says so
        by_key = {tag_key(tag): tag for tag in unknown}
        for level in reversed(self.levels):
            if level.local:
                continue
            try:
                found: Mapping[str, Entry] = yield LevelGet(level, list(by_key))
            except TransientError as exc:
                self._level_failed(level, "tag read", exc)
                continue
            for key, entry in found.items():
                if isinstance(entry.value, int | float):
                    tag = by_key[key]
                    times[tag] = max(times[tag], float(entry.value))
        self.tags.learn(times)

    def invalidate_tags(self, tags: Sequence[str]) -> Flow:
        """Every entry carrying one of ``tags`` and written before now reads as a miss,
        in every level and every process (see :mod:`.tags`)."""
        tags = list(dict.fromkeys(tags))
        at = self.wall_clock()
        self.tags.used = True
        self.tags.invalidated(tags, at)
        stamps = {tag_key(tag): at for tag in tags}
        versions, _ = yield from self._versions(list(stamps), lock=False)
        per_level: list[dict[str, Entry]] = [
            {}
            if level.local
            else {k: Entry(v, NEVER, False, versions.get(k, 0)) for k, v in stamps.items()}
            for level in self.levels
        ]
        yield from self._write_levels(
            self.prepare_levels(per_level), range(len(self.levels) - 1, -1, -1)
        )
        dropped = self.tags.local_keys(tags)
        if dropped:
            self.fence.mark(dropped)
            yield from self._drop_local(dropped)
        if self.announce is not None:
            self.announce.publish_tags(tags, at)

    def _leased(self, led: list[Flight], how: _Load, values: dict[str, Any]) -> Flow:
        """Take leases on the shared level for the keys about to be loaded (see
        :mod:`.claims`): keys another process was loading are taken from its fill
        (promoted, and their flights settled) instead of loaded again. Returns the
        flights still to load."""
        coordinator = self.coordinator
        assert coordinator is not None
        safety = how.safety
        patient = safety.fail_safe_max_age is not None and safety.soft_timeout is not None
        lease = yield from coordinator.lease(
            [f.key for f in led], safety.soft_timeout if patient else None
        )
        how.leases.append(lease)
        if lease.waiting and patient:
            led = yield from self._stale_while_leased(led, lease, how, values)
        if not lease.filled:
            return led
        flights = self.single_flight
        answered = [f for f in led if f.key in lease.filled]
        found = {k: e.value for k, e in lease.filled.items() if not e.negative}
        values.update(found)
        coordinator.level.stats.hits += len(lease.filled)
        if coordinator.index > 0:
            yield from self._promote(coordinator.index, lease.filled, how.epoch)
        flights.complete(answered, found)
        flights.coalesced += len(answered)
        return [f for f in led if f.key not in lease.filled]

    def _stale_while_leased(
        self, led: list[Flight], lease: Lease, how: _Load, values: dict[str, Any]
    ) -> Flow:
        """Another process's load of these keys outlived the soft timeout: serve their
        stale values (the fail-safe) and leave the load to it; keys with nothing stale
        enough wait on for its fill. Returns the flights still to settle."""
        max_age = how.safety.fail_safe_max_age
        assert max_age is not None and self.coordinator is not None
        waiting = [f.key for f in led if f.key in lease.waiting]
        stale = yield from self._stale(waiting, max_age)
        if stale:
            values.update(stale)
            how.stale.update(stale)
            self._served_stale(stale)
            served = [f for f in led if f.key in stale]
            self.single_flight.complete(served, stale, stale)
            led = [f for f in led if f.key not in stale]
        rest = [key for key in waiting if key not in stale]
        if rest:  # nothing to serve: wait on for the other process's fill
            more = yield from self.coordinator.lease(rest)
            lease.filled.update(more.filled)
            lease.granted.update(more.granted)
            lease.version = max(lease.version, more.version)
            if more.granted:
                yield from self.coordinator.release(sorted(more.granted), more.token, LEASE)
                lease.granted.difference_update(more.granted)  # loaded without a lease
        return led

    def _release_leases(self, how: _Load, keys: Collection[str] | None = None) -> Flow:
        """Give back the leases of ``keys`` (None: all) that no fill settled, so other
        processes stop waiting for a fill that will not come (the load failed, or found
        nothing to fill). Keys whose load still runs in the background keep theirs: it
        fills under them when it lands."""
        coordinator = self.coordinator
        if coordinator is None:
            return
        for lease in how.leases:
            mine = lease.granted if keys is None else lease.granted.intersection(keys)
            if mine:
                yield from coordinator.release(sorted(mine), lease.token, LEASE)
                lease.granted.difference_update(mine)

    def _versions(self, keys: list[str], *, lock: bool) -> Flow:
        """Versions for a write of ``keys`` from the shared level (with their write lock
        when the write goes to the origin; see :mod:`.claims`): ``(versions, token)``;
        nothing when there is no shared level to agree through."""
        if self.coordinator is None:
            return {}, None
        return (yield from self.coordinator.versions(keys, lock=lock))

    def _settle_write(self, keys: list[str], epoch: int, versions: Mapping[str, int]) -> Flow:
        """After a write reached the levels: tell the other processes (their in-process
        levels drop the keys), and drop from this process's own in-process levels the
        keys written again since ``epoch`` (another thread's write, or another process's
        announced by the bus, may have landed in between: the level below has the newer
        value, which the next read finds)."""
        numbers = [versions.get(key, 0) for key in keys]
        if versions:
            self.seen.saw(keys, numbers)
        announce = self.announce
        if announce is not None:
            announce.publish_keys(keys, numbers)
        raced = self.fence.changed_since(keys, epoch)
        if versions:
            # A newer write seen meanwhile (another thread's, whose in-process write may
            # have landed before this one; or another process's, announced before this
            # value reached L1): the in-process copy of this older one must go too.
            latest = self.seen.latest
            raced.update(key for key, mine in zip(keys, numbers, strict=True) if latest(key) > mine)
        if raced:
            yield from self._drop_local(sorted(raced))

    def _drop_local(self, keys: Sequence[str]) -> Flow:
        for level in self.levels:
            if level.local:
                yield LevelDelete(level, keys)

    def flush_in_order(
        self,
        batch: dict[str, tuple[int | None, Any]],
        send: Callable[[Collection[str]], list[str]],
    ) -> Collection[str]:
        """The write-behind queue's ``order`` hook: :meth:`store_in_order`, run in the
        flusher's thread (in-process levels are thread-safe, and remote ones have a
        synchronous face in every cache)."""
        superseded: Collection[str] = drive(self.store_in_order(batch, send), perform)
        return superseded

    def store_in_order(
        self,
        batch: Mapping[str, tuple[int | None, Any]],
        send: Callable[[Collection[str]], list[str]],
    ) -> Flow:
        """Store a write-behind batch in the origin in the order of its writes' versions,
        across processes, and leave the levels agreeing with what the origin then holds.

        ``batch`` maps each key to the ``(version, value)`` of this process's write
        (version None: the cache gave it none, as a write journaled by an older release;
        value :data:`~stratacache.behind.DELETED`: a delete); ``send(keys)`` stores the
        keys given and returns those the origin took. Returns the keys left out.

        Each process's flusher stores its own writes when it gets to them, so without
        this the origin would keep whichever process's write of a key was stored last,
        while the levels keep the newest version. So, holding the keys' write locks (a
        write of them in progress lands first, and no other flusher stores them
        meanwhile), the flusher reads a *mark* per key from the shared level: the
        version of the newest write stored in the origin (kept :data:`FLUSH_MARK_TTL`
        seconds). A write older than its mark is left out; the others are stored and
        raise their marks. Then what the shared level holds is compared with what was
        stored (see :meth:`_after_flush`)."""
        keys = list(batch)
        coordinator = self.coordinator
        if coordinator is None:  # nothing to order through
            taken = yield Blocking(partial(send, keys))
            yield from self._after_flush(batch, taken, None)
            return ()
        level = coordinator.level
        locked_at = time.monotonic()  # the lock's lifetime starts at most here
        _, token = yield from coordinator.versions(keys, lock=True)
        found: Mapping[str, Entry] | None = None
        left_out: list[str] = []
        try:
            try:  # without the lock too (a stalled holder's ran out): marks only go up
                found = yield LevelGet(level, [*keys, *map(flush_mark, keys)])
            except TransientError as exc:
                self._level_failed(level, "write-behind order", exc)
            if found is not None:
                for key, (version, _) in batch.items():
                    mark = found.get(flush_mark(key))
                    if version is not None and mark is not None and mark.version > version:
                        left_out.append(key)
            stored: list[str] = []
            todo = [key for key in keys if key not in left_out]
            if todo:
                stored = yield Blocking(partial(send, todo))  # less what the origin failed
            if found is not None:
                yield from self._raise_marks(level, batch, stored)
                if token is not None and time.monotonic() - locked_at < coordinator.lock_ttl:
                    # Still holding the keys: no fill of what the origin held before this
                    # store can land in between (a fill of a locked key is refused).
                    restate = [
                        key
                        for key in stored
                        if self._flushed_verdict(key, *batch[key], found) is RESTATE
                    ]
                    if restate:
                        yield from self._restate(batch, restate)
        except BaseException:
            yield from coordinator.release(keys, token)
            raise
        yield from coordinator.release(keys, token)
        if token is None or time.monotonic() - locked_at >= coordinator.lock_ttl:
            # Unlocked, or the store outlived the lock (a slow origin, a stalled
            # process): another flusher may have stored the same keys meanwhile, in
            # either order. Nothing the level holds can be trusted to match the origin.
            found = None
        self._settled(batch, left_out)
        yield from self._after_flush(batch, stored, found)
        return left_out

    def _settled(self, batch: Mapping[str, tuple[int | None, Any]], keys: list[str]) -> None:
        """``keys`` of ``batch`` are done with: stored, or left out as superseded."""
        restatable = self.restatable
        for key in keys:
            version = batch[key][0]
            # a write made while the shared level was down has no version (None), and
            # neither has a key that is not restatable
            if version is not None and restatable.get(key) == version:
                del restatable[key]

    def _raise_marks(
        self, level: Tier, batch: Mapping[str, tuple[int | None, Any]], stored: list[str]
    ) -> Flow:
        expires = self.wall_clock() + FLUSH_MARK_TTL
        marks = {
            flush_mark(key): Entry(version, expires, False, version)
            for key in stored
            if (version := batch[key][0]) is not None
        }
        if not marks:
            return
        try:
            # A level keeps the newer of two versions: a mark never goes down.
            yield LevelWrite(level, level.prepare(marks))
        except TransientError as exc:
            self._level_failed(level, "write-behind mark", exc)

    def _after_flush(
        self,
        batch: Mapping[str, tuple[int | None, Any]],
        stored: list[str],
        found: Mapping[str, Entry] | None,
    ) -> Flow:
        """The origin now holds ``stored`` as ``batch`` says; ``found`` is what the shared
        level held meanwhile (None: nothing to compare with). A key it holds at the
        version and value stored agrees. A key it holds at a newer version that this
        process saw written is another process's write, stored after this one by the
        ordering above. A key it holds at an older version, or not at all, while this
        process's own set of it is still on its way to the level (STALE) is left to that
        set. Any other key is invalidated in every level of every process, and the next
        read loads what the origin holds: a value the level holds at a newer version
        that no write announced (loaded from the origin before this store, through a
        lease), a key the level lost, a write replayed without a version, a level that
        cannot be read. Invalidating a key whose set was on its way could drop another
        process's newer write that landed meanwhile, still queued there: every read
        would load the older origin row until that write was stored."""
        verdicts = yield from self._flushed_verdicts(batch, stored, found)
        self._settled(batch, stored)
        # RESTATE keys were written back while the flusher held their locks; without a
        # comparison (found None) nothing was, and every verdict is DOUBTFUL
        doubtful = [key for key in stored if verdicts[key] is DOUBTFUL]
        if doubtful:
            yield from self.invalidate(doubtful)
        announce = self.announce
        agreeing = [key for key in stored if verdicts[key] is AGREES]
        if agreeing and announce is not None and found is None:
            # Nothing was compared (no level coordinates): another process may hold a
            # copy it loaded from the origin before this store; the bus drops it. With a
            # shared level such a load went through a lease and shows there.
            announce.publish_keys(agreeing, [batch[key][0] or 0 for key in agreeing])

    def _flushed_verdicts(
        self,
        batch: Mapping[str, tuple[int | None, Any]],
        stored: list[str],
        found: Mapping[str, Entry] | None,
    ) -> Flow:
        """The verdict on each stored key (see :meth:`_flushed_verdict`). A newer version
        no write announced yet is given a moment: another process's write reaches the
        level a little before its announcement reaches this one, and invalidating it
        would drop a write its process has not stored in the origin yet (every read
        would load the older value until that process's flusher stores it)."""
        waited_until = time.monotonic() + ANNOUNCEMENT_GRACE
        while True:
            verdicts = {key: self._flushed_verdict(key, *batch[key], found) for key in stored}
            unannounced = DOUBTFUL in verdicts.values() and any(
                self._newer_unannounced(key, batch[key][0], found) for key in stored
            )
            bus = self.announce
            if not unannounced or bus is None or not bus.healthy:
                return verdicts
            if time.monotonic() >= waited_until:
                return verdicts
            yield Pause(ANNOUNCEMENT_POLL)

    def _newer_unannounced(
        self, key: str, version: int | None, found: Mapping[str, Entry] | None
    ) -> bool:
        entry = None if found is None else found.get(key)
        return (
            entry is not None
            and version is not None
            and entry.version > version
            and self.seen.latest(key) < entry.version
        )

    def _flushed_verdict(
        self, key: str, version: int | None, value: Any, found: Mapping[str, Entry] | None
    ) -> str:
        """AGREES, NEWER (another process's newer write, which its flusher stores after
        this one), STALE (this process's set of the key is still on its way to the
        level) or DOUBTFUL for a key just stored (see :meth:`_after_flush`)."""
        if self.coordinator is None:
            return AGREES  # nothing to compare with: announced on the bus
        if version is None or found is None:
            return DOUBTFUL
        entry = found.get(key)
        if entry is not None and entry.version == version:
            same = entry.negative if value is DELETED else _same(entry.value, value)
            return AGREES if same else DOUBTFUL  # AGREES: a delete's tombstone too
        if entry is not None and entry.version > version:
            return NEWER if self.seen.latest(key) >= entry.version else DOUBTFUL
        # Older or absent: when this process's own set of that version has not reached
        # the level yet (the journal comes first), it is on its way and the level's
        # compare-and-set takes it. Otherwise the level lost the value (an invalidation,
        # an eviction), or a load may be filling what the origin held before this store.
        if self.landing.get(key) == version:
            return STALE
        if self.restatable.get(key) == version and not self.tags.used:
            return RESTATE
        return DOUBTFUL

    def _restate(self, batch: Mapping[str, tuple[int | None, Any]], keys: list[str]) -> Flow:
        """Put what the origin now holds for ``keys`` into the shared level that orders
        writes, at the versions stored. The level's compare-and-set keeps a newer write
        that lands first, and the write drops a lease, so a load of what the origin held
        before this store cannot fill over it. Unlike an invalidation it never removes a
        newer write another process has not stored in the origin yet. Every other level
        of every process drops the keys (the fence keeps reads in flight from filling
        them back)."""
        coordinator = self.coordinator
        assert coordinator is not None
        index = coordinator.index
        versions = {key: batch[key][0] or 0 for key in keys}
        values = {key: None if batch[key][1] is DELETED else batch[key][1] for key in keys}
        entries = {
            key: entry._replace(negative=True) if batch[key][1] is DELETED else entry
            for key, entry in self.entries_for(values, None, versions=versions)[index].items()
        }
        self.fence.mark(keys)
        level = coordinator.level
        prepared = level.prepare(entries)
        if prepared.rejected:  # too large for the level: it must not keep an older one
            yield from self.invalidate(list(prepared.rejected))
        try:
            yield LevelWrite(level, prepared)
        except TransientError as exc:
            self._level_failed(level, "write-behind restate", exc)
            yield from self._owe(index, list(prepared.items))
        for other in range(len(self.levels) - 1, -1, -1):
            if other != index:
                try:
                    yield LevelDelete(self.levels[other], keys)
                except TransientError as exc:
                    self._level_failed(self.levels[other], "invalidate", exc)
                    yield from self._owe(other, keys)
        if self.announce is not None:
            self.announce.publish_keys(keys, [versions[key] for key in keys])

    def dropped_elsewhere(self, keys: Sequence[str], versions: Sequence[int] = ()) -> None:
        """Another process wrote, deleted or invalidated ``keys`` (the bus said so, with
        the versions written): the in-process levels drop them, and fills in flight here
        do not put them back. Called on the bus's thread; in-process levels are
        thread-safe."""
        self.fence.mark(keys)
        if any(versions):
            self.seen.saw(keys, versions)
        unnumbered = [key for key, version in zip(keys, versions, strict=False) if not version]
        if unnumbered or not versions:  # invalidated or deleted there
            self.seen.forget(unnumbered if versions else keys)
        for level in self.levels:
            if level.local:
                level.delete_many(keys)

    def tags_elsewhere(self, tags: Sequence[str], at: float) -> None:
        """Another process invalidated ``tags`` at wall-clock time ``at``."""
        self.tags.invalidated(tags, at)
        for level in self.levels:
            if level.local:
                level.delete_many(self.tags.local_keys(tags))

    def reset_local(self) -> None:
        """Messages may have been missed (a gap, a reconnect, a receiver that fell
        behind): the in-process levels drop everything rather than serve stale data."""
        self.fence.mark_all()
        self.tags.reset()
        self.seen.clear()
        for level in self.levels:
            if level.local:
                level.clear()

    def _briefly(self, item: Prepared) -> Prepared:
        """An in-process level's write while the bus is silent (its connection dropped
        or stopped answering: other processes' writes may not reach this one): the
        copies live at most ``bus_silence_ttl`` seconds, so a value another process
        overwrites meanwhile is served that long at most, and the origin is still
        shielded (one load per key per ``bus_silence_ttl`` per process). 0: nothing is
        kept in process until the bus is back. The items are ``(Entry, weight)``, as an
        in-process tier prepares them."""
        if not self.bus_silence_ttl:
            return Prepared({}, dict(item.rejected), item.versions, item.mode, item.token)
        until = self.wall_clock() + self.bus_silence_ttl
        items = {
            key: (entry._replace(expires_at=min(entry.expires_at, until)), weight)
            for key, (entry, weight) in item.items.items()
        }
        return Prepared(items, dict(item.rejected), item.versions, item.mode, item.token)


def _same(held: Any, stored: Any) -> bool:
    """Whether a level's value is the one the origin was given (a value whose ``==``
    raises or is not a plain bool counts as different: the key is then reloaded)."""
    try:
        return bool(held == stored) and type(held) is type(stored)
    except Exception:
        return False
