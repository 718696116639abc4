"""CI must exercise the C speedups, not silently fall back to pure Python."""

from __future__ import annotations

import os

import pytest

from stratacache import _accel


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI insists on the C build")
def test_the_c_speedups_are_built_in_ci() -> None:
    assert _accel.speedups is not None, (
        "stratacache._speedups did not build: install a C compiler and the Python headers"
    )
