"""What the ops API tests share: API keys and helpers (``from webkit import ADMIN,
auth``). Their fixtures are in webfixtures.py."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI

from buttress.web import Service

ADMIN = "admin-key-000000000000"
ALICE = "alice-key-000000000000"
BOB = "bob-key-00000000000000"
KEYS = {
    ADMIN: {"owner": "ops", "role": "admin"},
    ALICE: {"owner": "alice", "role": "user"},
    BOB: {"owner": "bob", "role": "user"},
}

MakeService = Callable[..., Service]
"""The type of the ``make_service`` fixture: ``make_service(**overrides) -> Service``."""


def auth(key: str) -> dict[str, str]:
    """The header that authenticates as ``key``."""
    return {"authorization": f"Bearer {key}"}


def client_for(app: FastAPI, root_path: str = "") -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process."""
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://buttress")
