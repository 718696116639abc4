"""Only the optional C extensions live here; everything else is in pyproject.toml.

``optional=True``: when an extension cannot be compiled (no C compiler, no Python
headers) the install still succeeds and stratacache runs its pure-Python code paths.

* ``_speedups``: the L1 store's hit and write paths (tiers/memory.py).
* ``_cpolicies``: W-TinyLFU and LRU (policies/), decision for decision the same as the
  Python classes. ``-ffp-contract=off`` keeps the compiler from fusing a multiply and an
  add into one instruction where Python rounds twice: the window adaptation's float
  arithmetic must round exactly as Python's does.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stratacache._speedups",
            ["src/stratacache/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "stratacache._cpolicies",
            ["src/stratacache/_cpolicies.c"],
            optional=True,
            extra_compile_args=["-O2", "-ffp-contract=off", "-Wall", "-Wextra"],
        ),
    ]
)
