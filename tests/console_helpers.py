"""Shared by the console tests: a server with the admin API on, and accounts made through it."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.conftest import ServerProcess

ADMIN_TOKEN = "console-admin-token-for-tests"

CONSOLE_ENV = {
    "REELGATE_ADMIN_TOKEN": ADMIN_TOKEN,
    # Small renders keep the browser tests quick; the player does not care.
    "REELGATE_SANDBOX_MAX_HEIGHT": "360",
    # Bill the sandbox, so prices, holds and balances are real in the pages.
    "REELGATE_FREE_BACKENDS": "",
    "REELGATE_POLICY_BLOCKLIST": "forbidden thing",
}


def admin(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base_url}/admin/v1",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


def new_user(server: ServerProcess, name: str, credit: str | None = None,
             max_concurrent: int | None = None) -> tuple[str, str]:
    """An account with one key; returns (account id, key)."""
    with admin(server) as a:
        body: dict[str, object] = {"name": name}
        if max_concurrent is not None:
            body["max_concurrent"] = max_concurrent
        account = a.post("/accounts", json=body)
        assert account.status_code == 200, account.text
        account_id = account.json()["id"]
        key = a.post(f"/accounts/{account_id}/keys", json={"name": f"{name}-key"})
        assert key.status_code == 200, key.text
        if credit:
            r = a.post(f"/accounts/{account_id}/credits", json={"amount": credit})
            assert r.status_code == 200, r.text
    return account_id, key.json()["key"]


def screenshots_dir(fallback: Path) -> Path:
    path = Path(os.environ.get("REELGATE_SCREENSHOTS") or fallback)
    path.mkdir(parents=True, exist_ok=True)
    return path
