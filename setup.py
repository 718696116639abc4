"""Only the optional C extensions live here; everything else is in pyproject.toml.

``optional=True``: when an extension cannot be compiled (no C compiler, no Python
headers) the install still succeeds and stratacache runs its pure-Python code paths.

* ``_speedups``: the L1 store's hit and write paths (tiers/memory.py).
* ``_cpolicies``: W-TinyLFU and LRU (policies/), decision for decision the same as the
  Python classes. ``-ffp-contract=off`` keeps the compiler from fusing a multiply and an
  add into one instruction where Python rounds twice: the window adaptation's float
  arithmetic must round exactly as Python's does.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup


def source_sha(path: str) -> tuple[str, str]:
    """A macro carrying the source's hash: the built module reports it as ``__source_sha__``
    and a test compares it with the file, so a stale build cannot go unnoticed."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return ("STRATACACHE_SOURCE_SHA", f'"{digest}"')


setup(
    ext_modules=[
        Extension(
            "stratacache._speedups",
            ["src/stratacache/_speedups.c"],
            define_macros=[source_sha("src/stratacache/_speedups.c")],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "stratacache._cpolicies",
            ["src/stratacache/_cpolicies.c"],
            define_macros=[source_sha("src/stratacache/_cpolicies.c")],
            optional=True,
            extra_compile_args=["-O2", "-ffp-contract=off", "-Wall", "-Wextra"],
        ),
    ]
)
