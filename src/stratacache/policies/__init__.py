"""Eviction and admission policies, one module per algorithm, and a registry by name.

``make_policy("wtinylfu", capacity)`` builds a policy from its name; ``POLICIES`` lists the
names the L1 tier and the simulator accept. Belady's OPT (``opt.OPTPolicy``) needs the whole
trace, so the simulator builds it directly and it is not in the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def make_policy(name: str, capacity: int, **options: Any) -> Policy:
    """Build the policy called ``name`` bounded at ``capacity`` weight units."""
    try:
        factory = POLICIES[name.lower()]
    except KeyError:
        accepted = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; accepted: {accepted}") from None
    return factory(capacity, **options)
