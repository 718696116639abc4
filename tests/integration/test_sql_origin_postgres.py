"""SQLOrigin on a real PostgreSQL server started by the test suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from ..unit.sql_origin_cases import CASES, create_tables


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_sql_origin_on_postgres(postgres_server, case: Callable[[str, str], None]) -> None:  # type: ignore[no-untyped-def]
    table = f"users_{uuid.uuid4().hex[:8]}"
    create_tables(postgres_server.url, table)
    case(postgres_server.url, table)
