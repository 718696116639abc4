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


def make_policy(name: str, capacity: int, **options: Any) -> Policy:
    """Build the policy called ``name`` bounded at ``capacity`` weight units: the compiled
    class when there is one (see :func:`compiled_policy`), else the Python class."""
    try:
        factory = POLICIES[name.lower()]
    except KeyError:
        accepted = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; accepted: {accepted}") from None
    compiled = compiled_policy(name)
    if compiled is not None:
        try:
            return compiled(capacity, **options)
        except OverflowError:
            pass  # beyond the compiled class's 64-bit arithmetic (capacity > 2**61)
    return factory(capacity, **options)
