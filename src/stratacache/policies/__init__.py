"""Eviction and admission policies, one module per algorithm, and a registry by name.

``make_policy("wtinylfu", capacity)`` builds a policy from its name; ``POLICIES`` lists the
names the L1 tier and the simulator accept. Belady's OPT (``opt.OPTPolicy``) needs the whole
trace, so the simulator builds it directly and it is not in the registry.

W-TinyLFU and LRU also exist compiled (``stratacache._cpolicies``, optional, see setup.py):
the same decisions, victims and window walk as the Python classes, at a fraction of the
cost. ``make_policy`` builds the compiled class when it is available and not disabled by
``STRATACACHE_PURE_PYTHON=1``; ``POLICIES`` keeps naming the Python classes, which remain
the reference (and what runs when there is no compiler).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _accel
from .arc import ARCPolicy
from .base import Key, Policy, PolicyBase
from .gdsf import GDSFPolicy
from .lfu import LFUPolicy
from .lru import LRUPolicy
from .opt import OPTPolicy
from .s3fifo import S3FIFOPolicy
from .sieve import SievePolicy
from .sketch import FrequencySketch
from .wtinylfu import WTinyLFUPolicy

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "ARCPolicy",
    "FrequencySketch",
    "GDSFPolicy",
    "Key",
    "LFUPolicy",
    "LRUPolicy",
    "OPTPolicy",
    "Policy",
    "PolicyBase",
    "S3FIFOPolicy",
    "SievePolicy",
    "WTinyLFUPolicy",
    "compiled_policy",
    "entry_bytes",
    "make_policy",
]

# The name each online policy answers to.
POLICIES: dict[str, Callable[..., Policy]] = {
    "arc": ARCPolicy,
    "gdsf": GDSFPolicy,
    "lfu": LFUPolicy,
    "lru": LRUPolicy,
    "s3fifo": S3FIFOPolicy,
    "sieve": SievePolicy,
    "wtinylfu": WTinyLFUPolicy,
}

DEFAULT_POLICY = "wtinylfu"

# What each policy's own bookkeeping holds per resident key, in bytes (CPython 3.11,
# x86-64, measured with tracemalloc over 300k keys: python benchmarks/policy_memory.py).
# A cache bounded in bytes charges it to every entry, so that the bound covers what the
# process really holds. W-TinyLFU's includes its two frequency sketches, which grow with
# the resident count (two slots per resident key, of 16 counter bytes and 20 doorkeeper
# bytes, rounded up to a power of two): 240-410 bytes a key as measured, 360 charged.
_ENTRY_BYTES = {
    "arc": 120,
    "gdsf": 330,
    "lfu": 170,
    "lru": 110,
    "s3fifo": 250,
    "sieve": 130,
    "wtinylfu": 360,
}
# A policy the registry does not know (a user's class) is charged this much.
_UNKNOWN_ENTRY_BYTES = 150
# A byte-bounded W-TinyLFU's sketch starts sized for one entry per this many bytes of the
# bound (it grows with the resident count; each entry is charged its share of it).
_BYTES_PER_SKETCH_ENTRY = 1024


# The registry names whose classes also exist compiled, by their class name there.
_COMPILED = {"lru": "LRUPolicy", "wtinylfu": "WTinyLFUPolicy"}

if _accel.cpolicies is not None:
    # The compiled classes implement the whole protocol; let isinstance() say so.
    for _class_name in _COMPILED.values():
        PolicyBase.register(getattr(_accel.cpolicies, _class_name))


def compiled_policy(name: str) -> Callable[..., Policy] | None:
    """The compiled class for the policy called ``name``, or None (no compiled version,
    extension not built, or ``STRATACACHE_PURE_PYTHON=1``)."""
    module = _accel.cpolicies
    class_name = _COMPILED.get(name.lower())
    if module is None or class_name is None:
        return None
    factory: Callable[..., Policy] = getattr(module, class_name)
    return factory


def entry_bytes(name: str) -> int:
    """The bytes the policy called ``name`` keeps per resident key (its nodes, and for
    W-TinyLFU its share of the sketches); an estimate a byte-bounded cache charges."""
    return _ENTRY_BYTES.get(name.lower(), _UNKNOWN_ENTRY_BYTES)


def make_policy(name: str, capacity: int, *, weighted: bool = False, **options: Any) -> Policy:
    """Build the policy called ``name`` bounded at ``capacity`` weight units: the compiled
    class when there is one (see :func:`compiled_policy`), else the Python class.
    ``weighted``: the capacity is in bytes, not entries (structures sized by a number of
    entries start from an estimate instead)."""
    try:
        factory = POLICIES[name.lower()]
    except KeyError:
        accepted = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; accepted: {accepted}") from None
    if weighted and factory is WTinyLFUPolicy and "sketch_entries" not in options:
        options["sketch_entries"] = max(16, min(1 << 16, capacity // _BYTES_PER_SKETCH_ENTRY))
    compiled = compiled_policy(name)
    if compiled is not None:
        try:
            return compiled(capacity, **options)
        except OverflowError:
            pass  # beyond the compiled class's 64-bit arithmetic (capacity > 2**61)
    return factory(capacity, **options)
