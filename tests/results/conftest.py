"""Fixtures for the results tests; the hand-written run lives in raw_run.py."""

from __future__ import annotations

import pytest
from raw_run import META, write_small_run

from caio_operators.layout import RunLayout


@pytest.fixture
def small_run(bucket) -> RunLayout:
    return write_small_run(bucket)


@pytest.fixture
def meta() -> dict:
    return dict(META)


@pytest.fixture
def warehouse_uri(tmp_path) -> str:
    return "duckdb://" + str(tmp_path / "warehouse.duckdb")
