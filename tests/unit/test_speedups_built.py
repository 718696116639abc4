"""The compiled modules must be built (in CI) and built from the sources in this tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import ModuleType

import pytest

import stratacache
from stratacache import _accel

SOURCES = Path(stratacache.__file__).parent


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI insists on the C build")
def test_the_c_speedups_are_built_in_ci() -> None:
    for name in ("speedups", "cpolicies"):
        assert getattr(_accel, name) is not None, (
            f"stratacache._{name} did not build: install a C compiler and the Python headers"
        )


@pytest.mark.parametrize("name", ["speedups", "cpolicies"])
def test_built_modules_match_their_sources(name: str) -> None:
    module: ModuleType | None = getattr(_accel, name)
    source = SOURCES / f"_{name}.c"
    if module is None or not source.exists():
        pytest.skip(f"stratacache._{name} is not built here, or its source is not shipped")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    assert module.__source_sha__ == digest, (
        f"stratacache._{name} was built from another version of {source.name}: "
        "rebuild it with pip install -e ."
    )
