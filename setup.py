"""Only the optional C extension lives here; everything else is in pyproject.toml.

``optional=True``: when the extension cannot be compiled (no C compiler, no Python
headers) the install still succeeds and stratacache runs its pure-Python code paths.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stratacache._speedups",
            ["src/stratacache/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
