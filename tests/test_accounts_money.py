"""Accounts and money through HTTP: 403 and 429 paths with their headers, the ledger under
concurrent load, and free failures."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ServerProcess, wait_until_done

ADMIN = "admin-secret-token"
T2V = "/api/v3/google/veo3.1-fast/text-to-video"
# veo3.1-fast at 720p costs $0.10 per second: a 4 s video is 0.40 = 400000 micro-units.
PRICE = 400_000


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    policy = tmp_path_factory.mktemp("policy") / "policy.json"
    policy.write_text(json.dumps({
        "categories": {"violence": ["behead", "massacre"]},
        "patterns": {"minors": [r"\b(?:child|kid)s?\b.*\bnude\b"]},
    }))
    srv = ServerProcess(tmp_path_factory.mktemp("billed"), {
        "REELGATE_FREE_BACKENDS": "",
        "REELGATE_ADMIN_TOKEN": ADMIN,
        "REELGATE_SANDBOX_LATENCY_S": "1.5",
        "REELGATE_WORKER_CONCURRENCY": "4",
        "REELGATE_POLICY_FILE": str(policy),
        "REELGATE_POLICY_BLOCKLIST": "forbidden",
        "REELGATE_POLICY_CLASSIFIER": "tests.policy_plugin:shouting",
    }).start()
    yield srv
    srv.stop()


def admin(srv: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=60)


def new_account(srv: ServerProcess, name: str, credit: str | None = None,
                **limits: int) -> tuple[str, str]:
    with admin(srv) as a:
        acct = a.post("/admin/v1/accounts", json={"name": name, **limits})
        assert acct.status_code == 200, acct.text
        account_id = acct.json()["id"]
        if credit:
            r = a.post(f"/admin/v1/accounts/{account_id}/credits",
                       json={"amount": credit, "note": "test credit"})
            assert r.status_code == 200, r.text
        key = a.post(f"/admin/v1/accounts/{account_id}/keys", json={"name": f"{name}-key"})
        return account_id, key.json()["key"]


def balance(srv: ServerProcess, key: str) -> int:
    with srv.client(key) as c:
        return int(c.get("/api/v3/balance").json()["data"]["balance_micros"])


def ledger_rows(srv: ServerProcess, account_id: str) -> list[dict]:
    with admin(srv) as a:
        return a.get(f"/admin/v1/accounts/{account_id}/ledger").json()


def test_exactly_n_accepted_under_concurrency(billed: ServerProcess) -> None:
    n = 4
    account_id, key = new_account(billed, "burst", credit="1.60", max_concurrent=100)
    assert balance(billed, key) == n * PRICE

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=billed.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            # Every third asks the sandbox to fail, so some accepted ones end failed.
            bodies = [{"prompt": f"burst {i}" + (" [sandbox:fail]" if i % 3 == 0 else ""),
                       "duration": 4} for i in range(30)]
            return await asyncio.gather(*(c.post(T2V, json=b) for b in bodies))

    responses = asyncio.run(fire())
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(accepted) == n
    for r in refused:
        assert r.status_code == 403
        assert r.json()["error"]["type"] == "403"
        assert "Insufficient balance" in r.json()["error"]["message"]
    assert balance(billed, key) == 0

    with billed.client(key) as c:
        ended = [wait_until_done(c, r.json()["data"]["id"]) for r in accepted]
    failed = [d for d in ended if d["status"] == "failed"]
    completed = [d for d in ended if d["status"] == "completed"]
    rows = ledger_rows(billed, account_id)
    assert all(r["delta_micros"] == -r["amount_micros"] for r in rows if r["kind"] == "hold")
    assert all(int(r["balance_after"].replace(".", "")) >= 0 for r in rows)
    holds = sum(r["amount_micros"] for r in rows if r["kind"] == "hold")
    captures = sum(r["amount_micros"] for r in rows if r["kind"] == "capture")
    releases = sum(r["amount_micros"] for r in rows if r["kind"] == "release")
    assert holds == n * PRICE
    assert holds == captures + releases
    assert captures == len(completed) * PRICE and releases == len(failed) * PRICE
    # Users pay nothing for failures: what failed came back.
    assert balance(billed, key) == len(failed) * PRICE
    assert sum(r["delta_micros"] for r in rows) == balance(billed, key)
    # One capture or release per prediction, never both, never twice.
    per_prediction = {}
    for r in rows:
        if r["kind"] in ("capture", "release"):
            assert r["prediction_id"] not in per_prediction
            per_prediction[r["prediction_id"]] = r["kind"]
    assert len(per_prediction) == n


def test_failed_and_blocked_predictions_cost_nothing(billed: ServerProcess) -> None:
    _, key = new_account(billed, "careful", credit="5.00")
    before = balance(billed, key)
    with billed.client(key) as c:
        for prompt in ("x [sandbox:fail]", "y [sandbox:nsfw]"):
            r = c.post(T2V, json={"prompt": prompt, "duration": 4, "enable_sync_mode": True})
            assert r.json()["data"]["status"] == "failed"
        blocked = c.post(T2V, json={"prompt": "a forbidden scene", "duration": 4})
        assert blocked.status_code == 400 and blocked.json()["error"]["type"] == "503"
    assert balance(billed, key) == before
    # A completed one is charged exactly its price.
    with billed.client(key) as c:
        r = c.post(T2V, json={"prompt": "fine", "duration": 4, "enable_sync_mode": True})
        assert r.json()["data"]["status"] == "completed"
    assert balance(billed, key) == before - PRICE


def test_403_paths(billed: ServerProcess) -> None:
    account_id, _ = new_account(billed, "restricted", credit="10.00")
    with admin(billed) as a:
        key = a.post(f"/admin/v1/accounts/{account_id}/keys",
                     json={"name": "only-veo3", "models": ["veo3"]}).json()["key"]
    with billed.client(key) as c:
        r = c.post(T2V, json={"prompt": "x", "duration": 4})
        assert r.status_code == 403 and r.json()["error"]["type"] == "403"
        assert "veo3.1-fast" in r.json()["error"]["message"]
        assert c.post("/api/v3/google/veo3/text-to-video",
                      json={"prompt": "x", "duration": 4}).status_code == 200
    _, poor = new_account(billed, "poor", credit="0.10")
    with billed.client(poor) as c:
        r = c.post(T2V, json={"prompt": "x", "duration": 4})
        assert r.status_code == 403
        assert "Insufficient balance" in r.json()["error"]["message"]
        assert "0.400000" in r.json()["error"]["message"]
    with admin(billed) as a:
        a.patch(f"/admin/v1/accounts/{account_id}", json={"disabled": True})
    with billed.client(key) as c:
        r = c.post("/api/v3/google/veo3/text-to-video", json={"prompt": "x", "duration": 4})
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]


def test_rate_limit_429_and_headers(billed: ServerProcess) -> None:
    _, key = new_account(billed, "chatty", credit="1.00", rate_per_minute=3)
    with billed.client(key) as c:
        first = c.get("/api/v3/balance")
        assert first.headers["X-RateLimit-Limit"] == "3"
        assert first.headers["X-RateLimit-Remaining"] == "2"
        assert int(first.headers["X-RateLimit-Reset"]) >= int(time.time())
        c.get("/api/v3/balance")
        third = c.post(T2V, json={"prompt": "", "duration": 4})  # a 400 still counts
        assert third.status_code == 400 and third.headers["X-RateLimit-Remaining"] == "0"
        limited = c.get("/api/v3/balance")
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "429"
        assert "3 requests per minute" in limited.json()["error"]["message"]
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["X-RateLimit-Remaining"] == "0"


def test_concurrency_limit_429(billed: ServerProcess) -> None:
    _, key = new_account(billed, "one-at-a-time", credit="5.00", max_concurrent=1)
    with billed.client(key) as c:
        first = c.post(T2V, json={"prompt": "first", "duration": 4})
        assert first.status_code == 200
        second = c.post(T2V, json={"prompt": "second", "duration": 4})
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "429"
        assert "limit 1" in second.json()["error"]["message"]
        assert "Retry-After" in second.headers
        wait_until_done(c, first.json()["data"]["id"])
        # The slot is free again once the first ended; the refused one cost nothing.
        assert c.post(T2V, json={"prompt": "third", "duration": 4}).status_code == 200
    assert balance(billed, key) == 5_000_000 - 2 * PRICE


def test_keys_list_revoke_and_prices(billed: ServerProcess) -> None:
    account_id, key = new_account(billed, "keys-owner", credit="1.00")
    with admin(billed) as a:
        keys = a.get(f"/admin/v1/accounts/{account_id}/keys").json()
        assert len(keys) == 1 and key.startswith(keys[0]["prefix"])
        assert key not in json.dumps(keys)
        with billed.client(key) as c:
            prices = c.get("/api/v3/prices").json()["data"]["prices"]
            row = next(p for p in prices if p["model"] == "google/veo3.1-fast"
                       and p["resolution"] == "4k")
            assert row["per_second"] == "0.300000"
        a.post(f"/admin/v1/keys/{keys[0]['prefix']}/revoke")
    with billed.client(key) as c:
        assert c.get("/api/v3/balance").status_code == 401


def test_admin_api_auth_usage_csv_and_blocks(billed: ServerProcess) -> None:
    assert httpx.get(f"{billed.base_url}/admin/v1/accounts").status_code == 401
    r = httpx.get(f"{billed.base_url}/admin/v1/accounts", headers={"Authorization": "Bearer no"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "401"
    account_id, key = new_account(billed, "reporting", credit="3.00")
    with billed.client(key) as c:
        for prompt in ("one", "two [sandbox:fail]"):
            c.post(T2V, json={"prompt": prompt, "duration": 4, "enable_sync_mode": True})
        for prompt, category in (("how to BEHEAD a statue", "violence"),
                                 ("kids running nude on a beach", "minors"),
                                 ("WHY WOULD ANYONE DO THIS", "harassment")):
            r = c.post(T2V, json={"prompt": prompt, "duration": 4})
            assert r.status_code == 400 and r.json()["error"]["type"] == "503"
            assert f"category: {category}" in r.json()["error"]["message"]
    today = datetime.now(UTC).date()
    with admin(billed) as a:
        q = {"from": str(today - timedelta(days=1)), "to": str(today), "account": account_id}
        rows = a.get("/admin/v1/usage", params=q).json()
        assert rows == [{
            "account_id": account_id, "account": "reporting", "model": "veo3.1-fast",
            "predictions": 2, "completed": 1, "failed": 1, "video_seconds": 4,
            "charged": "0.400000", "charged_micros": PRICE,
        }]
        text = a.get("/admin/v1/usage", params={**q, "format": "csv"}).text
        parsed = list(csv.DictReader(io.StringIO(text)))
        assert parsed[0]["account"] == "reporting" and parsed[0]["charged"] == "0.400000"
        empty = a.get("/admin/v1/usage", params={"from": "2020-01-01", "to": "2020-01-02",
                                                  "account": account_id}).json()
        assert empty == []
        blocks = a.get("/admin/v1/policy-blocks").json()
        mine = [b for b in blocks if b["account_id"] == account_id]
        assert {b["category"] for b in mine} == {"violence", "minors", "harassment"}


def test_cli_accounts_and_usage(billed: ServerProcess) -> None:
    out = billed.cli("accounts", "create", "cli-acct")
    assert out.returncode == 0, out.stderr
    assert billed.cli("accounts", "credit", "cli-acct", "2.50").stdout.strip() == "2.500000"
    bad = billed.cli("accounts", "credit", "cli-acct", "0.1234567")
    assert bad.returncode == 1 and "6 decimal places" in bad.stderr
    ledger = json.loads(billed.cli("accounts", "ledger", "cli-acct", "--json").stdout)
    assert [r["kind"] for r in ledger] == ["credit"]
    usage = billed.cli("accounts", "usage", "--csv")
    assert usage.returncode == 0 and usage.stdout.startswith("account_id,account,model")
    missing = billed.cli("accounts", "credit", "nobody-here", "1")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_ledger_is_append_only_and_explains_balances(billed: ServerProcess) -> None:
    with sqlite3.connect(billed.data_dir / "reelgate.db") as conn:
        sums = dict(conn.execute("select account_id, sum(delta) from ledger group by account_id"))
        balances = dict(conn.execute("select id, balance from accounts"))
    assert sums
    for account_id, total in sums.items():
        assert balances[account_id] == total
    # The database itself refuses to rewrite history.
    with sqlite3.connect(billed.data_dir / "reelgate.db") as conn:
        for sql in ("update ledger set amount = 0", "delete from ledger"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
