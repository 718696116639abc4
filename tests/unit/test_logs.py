"""Throttled log lines: one per subject per interval, with a count of those held back."""

from __future__ import annotations

import logging

import pytest

from stratacache.logs import Throttle

from ..conftest import FakeClock


def test_one_line_per_subject_per_interval_with_a_count(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    throttle = Throttle(logging.getLogger("stratacache.test"), 10.0, clock.monotonic)
    with caplog.at_level(logging.WARNING, logger="stratacache.test"):
        written = [throttle.warning("L2", "level %s down", "L2") for _ in range(100)]
        written.append(throttle.warning("L3", "level %s down", "L3"))
        clock.advance(10.5)
        written.append(throttle.warning("L2", "level %s down", "L2"))
    assert written.count(True) == 3
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "level L2 down",
        "level L3 down",
        "level L2 down (99 more like it in the last 10s)",
    ]
