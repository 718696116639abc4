"""Eviction and admission policies, one module per algorithm, and a registry by name.

``make_policy("wtinylfu", capacity)`` builds a policy from its name; ``POLICIES`` lists the
names the L1 tier and the simulator accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Key, Policy, PolicyBase
from .lru import LRUPolicy

__all__ = ["DEFAULT_POLICY", "POLICIES", "Key", "Policy", "PolicyBase", "make_policy"]

# The name each online policy answers to. OPT needs the whole trace, so it is built by the
# simulator directly and is not in this table.
POLICIES: dict[str, Callable[..., Policy]] = {
    "lru": LRUPolicy,
}

DEFAULT_POLICY = "lru"


def make_policy(name: str, capacity: int, **options: Any) -> Policy:
    """Build the policy called ``name`` bounded at ``capacity`` weight units."""
    try:
        factory = POLICIES[name.lower()]
    except KeyError:
        accepted = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; accepted: {accepted}") from None
    return factory(capacity, **options)
