"""The optional C extensions, or None.

``stratacache._speedups`` (the L1 store's hit and write paths) and
``stratacache._cpolicies`` (W-TinyLFU and LRU, decision for decision the same as the
classes in ``policies/``) are compiled at install time when a C compiler is available (see
setup.py). Setting ``STRATACACHE_PURE_PYTHON=1`` ignores both, which is how the test suite
checks that both implementations behave alike.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

speedups: ModuleType | None
cpolicies: ModuleType | None
if os.environ.get("STRATACACHE_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
    speedups = None
    cpolicies = None
else:
    try:
        speedups = importlib.import_module("stratacache._speedups")
    except ImportError:  # built without a compiler: the pure-Python paths serve
        speedups = None
    try:
        cpolicies = importlib.import_module("stratacache._cpolicies")
    except ImportError:
        cpolicies = None

__all__ = ["cpolicies", "speedups"]
