"""The dialect contract: one set of cases, run against every API dialect (v3, Google's native
Veo API, OpenAI Videos) through a running ``reelgate serve`` with the sandbox backend.

Each dialect is one ``Door`` below: how its clients authenticate, create, read and list, and
which request of its own is invalid. A new dialect is one folder under api/ plus one Door.
Every case checks the wire against the port as well: an answer is what the dialect's
``present`` makes of the stored prediction, an error is its ``error_body``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from reelgate.api.dialects import Dialect, all_dialects
from reelgate.errors import CONTENT_POLICY
from reelgate.services import Services
from reelgate.settings import Settings
from reelgate.store.repo import Prediction
from tests.conftest import ServerProcess

BLOCKED_WORD = "forbidden thing"


@dataclass(frozen=True)
class Door:
    """One dialect as its clients use it."""

    name: str
    auth: Callable[[str], dict[str, str]]  # key → request headers
    create: tuple[str, str, dict[str, Any]]  # method, path, JSON body (a 4 s video)
    created_id: Callable[[dict[str, Any]], str]  # the create's answer → prediction id
    read_path: Callable[[str], str]
    finished: Callable[[dict[str, Any]], bool]  # a read's answer → ended?
    read_id: Callable[[dict[str, Any]], str]
    invalid: dict[str, Any]  # a create body this dialect refuses with a 400
    invalid_field: str  # the field that 400 names, in the dialect's words
    blocked: dict[str, Any]  # a create body the content policy blocks
    create_params: dict[str, str]  # the create route's path parameters
    list_ids: Callable[[httpx.Client], list[str]] | None = None  # its own listing, if any


def _v3_list(c: httpx.Client) -> list[str]:
    r = c.get("/api/v3/predictions", params={"page_size": 100})
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["data"]["items"]]


def _openai_list(c: httpx.Client) -> list[str]:
    r = c.get("/v1/videos", params={"limit": 100})
    assert r.status_code == 200, r.text
    return [v["id"] for v in r.json()["data"]]


DOORS = {
    "v3": Door(
        name="v3",
        auth=lambda key: {"Authorization": f"Bearer {key}"},
        create=("POST", "/api/v3/google/veo3.1-fast/text-to-video",
                {"prompt": "a kite over the dunes", "duration": 4}),
        created_id=lambda body: body["data"]["id"],
        read_path=lambda pid: f"/api/v3/predictions/{pid}/result",
        finished=lambda body: body["data"]["status"] in ("completed", "failed", "cancelled"),
        read_id=lambda body: body["data"]["id"],
        invalid={"prompt": "a kite", "duration": 5},
        invalid_field="duration",
        blocked={"prompt": f"a {BLOCKED_WORD} in the park", "duration": 4},
        create_params={"model": "veo3.1-fast", "scene": "text-to-video"},
        list_ids=_v3_list,
    ),
    "google": Door(
        name="google",
        auth=lambda key: {"x-goog-api-key": key},
        create=("POST", "/v1beta/models/veo-3.1-fast-generate-preview:predictLongRunning",
                {"instances": [{"prompt": "a kite over the dunes"}],
                 "parameters": {"durationSeconds": 4}}),
        created_id=lambda body: body["name"].rsplit("/", 1)[1],
        # Named by the catalog model, as the dialect's presenter names operations.
        read_path=lambda pid: f"/v1beta/models/veo3.1-fast/operations/{pid}",
        finished=lambda body: bool(body.get("done")),
        read_id=lambda body: body["name"].rsplit("/", 1)[1],
        invalid={"instances": [{"prompt": "a kite"}], "parameters": {"durationSeconds": 5}},
        invalid_field="parameters.durationSeconds",
        blocked={"instances": [{"prompt": f"a {BLOCKED_WORD} in the park"}],
                 "parameters": {"durationSeconds": 4}},
        create_params={"model": "veo-3.1-fast-generate-preview"},
        # Google's API lists no operations; its predictions show in the v3 list (below).
    ),
    "openai": Door(
        name="openai",
        auth=lambda key: {"Authorization": f"Bearer {key}"},
        create=("POST", "/v1/videos",
                {"prompt": "a kite over the dunes", "seconds": "4", "size": "1280x720"}),
        created_id=lambda body: body["id"],
        read_path=lambda pid: f"/v1/videos/{pid}",
        finished=lambda body: body["status"] in ("completed", "failed"),
        read_id=lambda body: body["id"],
        invalid={"prompt": "a kite", "seconds": "5", "size": "1280x720"},
        invalid_field="seconds",
        blocked={"prompt": f"a {BLOCKED_WORD} in the park", "seconds": "4"},
        create_params={},
        list_ids=_openai_list,
    ),
}

DIALECTS = {d.name: d for d in all_dialects()}


def test_every_dialect_has_a_door() -> None:
    assert set(DIALECTS) == set(DOORS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(tmp_path_factory.mktemp("dialect-contract"), {
        "REELGATE_SANDBOX_MAX_HEIGHT": "144",
        "REELGATE_SANDBOX_FPS": "8",
        "REELGATE_POLICY_BLOCKLIST": BLOCKED_WORD,
    }).start()
    key = server.create_key("contract")
    yield server, key
    server.stop()


@pytest.fixture(params=sorted(DOORS))
def door(request: pytest.FixtureRequest) -> Door:
    return DOORS[request.param]


def client(server: ServerProcess, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=60)


def stored(server: ServerProcess, prediction_id: str) -> tuple[Prediction, Services]:
    """The stored row, read through reelgate's own store (and the services, for storage)."""

    async def read() -> tuple[Prediction | None, Services]:
        services = await Services.open(Settings(data_dir=server.data_dir), run_workers=False)
        try:
            return await services.store.get(prediction_id), services
        finally:
            await services.close()

    pred, services = asyncio.run(read())
    assert pred is not None
    return pred, services


def without_signatures(doc: Any) -> Any:
    """URLs with their query (signed, with an expiry that moves) left out."""
    if isinstance(doc, dict):
        return {k: without_signatures(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [without_signatures(v) for v in doc]
    if isinstance(doc, str) and doc.startswith("http") and "signature=" in doc:
        return urlunsplit(urlsplit(doc)._replace(query=""))
    return doc


def assert_error(dialect: Dialect, r: httpx.Response, status: int,
                 reason: str | None = None) -> str:
    """The answer is exactly the dialect's error body for this status; its message."""
    assert r.status_code == status, r.text
    body = r.json()
    message = body["error"]["message"]
    assert body == dialect.error_body(status, message, reason), body
    assert "Traceback" not in r.text
    return str(message)


def test_create_read_list_and_the_row_records_the_dialect(
        served: tuple[ServerProcess, str], door: Door) -> None:
    server, key = served
    dialect = DIALECTS[door.name]
    with client(server, door.auth(key)) as c:
        method, path, body = door.create
        r = c.request(method, path, json=body)
        assert r.status_code == 200, r.text
        pid = door.created_id(r.json())
        deadline = time.monotonic() + 90
        while True:
            read = c.get(door.read_path(pid))
            assert read.status_code == 200, read.text
            if door.finished(read.json()):
                break
            assert time.monotonic() < deadline, f"{pid} did not finish"
            time.sleep(0.3)
        answer = read.json()
        assert door.read_id(answer) == pid
        if door.list_ids is not None:
            assert pid in door.list_ids(c)
    # One prediction whatever the door: the v3 list shows it too.
    with client(server, DOORS["v3"].auth(key)) as v3:
        assert pid in _v3_list(v3)

    pred, services = stored(server, pid)
    assert pred.status == "completed", pred.error
    assert pred.dialect == door.name
    with sqlite3.connect(server.data_dir / "reelgate.db") as conn:
        (row_dialect,) = conn.execute("select dialect from predictions where id = ?",
                                      (pid,)).fetchone()
    assert row_dialect == door.name
    # The door answers what the dialect's presenter makes of the row.
    presented = dialect.present(pred, server.base_url, services.storage)
    assert without_signatures(presented) == without_signatures(answer)
    # Its webhook body: JSON that names the prediction.
    payload = dialect.webhook_payload(pred, server.base_url, services.storage)
    assert pid in json.dumps(payload)


def test_request_parsing_gives_reelgates_own_create(door: Door) -> None:
    dialect = DIALECTS[door.name]
    create = dialect.parse_create(door.create[2], door.create_params)
    assert (create.model, create.scene) == ("veo3.1-fast", "text-to-video")
    assert create.body["prompt"] == "a kite over the dunes"
    assert create.body["duration"] == 4


def test_an_invalid_request_answers_in_the_dialects_body(
        served: tuple[ServerProcess, str], door: Door) -> None:
    server, key = served
    dialect = DIALECTS[door.name]
    method, path, _ = door.create
    with client(server, door.auth(key)) as c:
        message = assert_error(dialect, c.request(method, path, json=door.invalid), 400)
        assert message.startswith(f"{door.invalid_field}: "), message
        # Not JSON at all: the same body.
        r = c.request(method, path, content=b"{not json", headers={
            "Content-Type": "application/json"})
        assert_error(dialect, r, 400)


def test_a_content_policy_block_carries_its_reason(
        served: tuple[ServerProcess, str], door: Door) -> None:
    server, key = served
    dialect = DIALECTS[door.name]
    method, path, _ = door.create
    with client(server, door.auth(key)) as c:
        r = c.request(method, path, json=door.blocked)
        # The reason shows in each body its own way: v3's documented type "503", OpenAI's
        # code moderation_blocked; Google's body has no place for it.
        assert_error(dialect, r, 400, CONTENT_POLICY)


def test_an_unknown_id_is_the_dialects_404(served: tuple[ServerProcess, str],
                                           door: Door) -> None:
    server, key = served
    dialect = DIALECTS[door.name]
    with client(server, door.auth(key)) as c:
        message = assert_error(dialect, c.get(door.read_path("pred_does_not_exist")), 404)
    assert "pred_does_not_exist" in message


def test_auth_failures_answer_in_the_dialects_body(served: tuple[ServerProcess, str],
                                                   door: Door) -> None:
    server, _ = served
    dialect = DIALECTS[door.name]
    method, path, body = door.create
    with client(server, {}) as c:
        assert_error(dialect, c.request(method, path, json=body), 401)
        assert_error(dialect, c.get(door.read_path("pred_x")), 401)
    with client(server, door.auth("rg_not-a-real-key")) as c:
        assert "Invalid API key" in assert_error(dialect, c.request(method, path, json=body),
                                                 401)
