"""Task functions for the process executor: importable by module and name, as it needs."""

from __future__ import annotations

import os
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def refuse(reason: str) -> None:
    raise PermissionError(reason)


def record_pid_then_hang(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)
