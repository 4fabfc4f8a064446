"""Shared fixtures: a manual clock, and global switches reset around every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from buttress.clock import ManualClock
from buttress.resilience import set_testing


@pytest.fixture(autouse=True)
def _reset_testing_mode() -> Iterator[None]:
    """Every test starts and ends with the retry testing mode off."""
    set_testing(False)
    yield
    set_testing(False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
