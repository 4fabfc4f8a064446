"""The sentinel that tells a miss from a stored ``None``."""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["MISSING", "Missing"]


class Missing(enum.Enum):
    """Type of :data:`MISSING`; an enum so type checkers can narrow on ``is MISSING``."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> Literal[False]:
        return False


MISSING: Final = Missing.MISSING
"""Returned by ``get(key, MISSING)`` when the key is absent, so a stored ``None`` is a hit."""
