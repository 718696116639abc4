"""The optional C speedups, or None.

``stratacache._speedups`` is compiled at install time when a C compiler is available (see
setup.py). Setting ``STRATACACHE_PURE_PYTHON=1`` ignores it, which is how the test suite
checks that both implementations behave alike.
"""

from __future__ import annotations

import os
from types import ModuleType

speedups: ModuleType | None
if os.environ.get("STRATACACHE_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
    speedups = None
else:
    try:
        from . import _speedups as speedups  # type: ignore[attr-defined, no-redef]
    except ImportError:  # built without a compiler: the pure-Python paths serve
        speedups = None

__all__ = ["speedups"]
