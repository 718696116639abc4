"""SQLOrigin on SQLite (the default database)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .sql_origin_cases import CASES, create_tables


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_sql_origin_on_sqlite(tmp_path: Path, case: Callable[[str, str], None]) -> None:
    url = f"sqlite:///{tmp_path / 'origin.db'}"
    create_tables(url, "users")
    case(url, "users")
