"""Issue 15: requests that used to answer 500, loose types and missing limits. Every case is
a 400 (or 404) in the documented error body that names the field, and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess

T2V = "/api/v3/google/veo3.1-fast/text-to-video"
ADMIN = "hardening-admin-token"


def assert_error(r: httpx.Response, status: int, field: str | None = None,
                 *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == str(status)
    message = body["error"]["message"]
    if field is not None:
        assert message.startswith(f"{field}:"), message
    for w in words:
        assert w in message, message


def prediction_count(api: httpx.Client) -> int:
    r = api.get("/api/v3/predictions", params={"page_size": 1})
    assert r.status_code == 200, r.text
    return int(r.json()["data"]["total"])


# --- the bounded JSON parser ----------------------------------------------------------------


def test_integer_longer_than_python_limit_names_the_field(api: httpx.Client) -> None:
    before = prediction_count(api)
    digits = "1" * 5000
    for raw, field in (
        ('{"prompt": "x", "seed": ' + digits + "}", "seed"),
        # Even in a field nobody reads, and in a list.
        ('{"prompt": "x", "ignored": {"deep": [1, ' + digits + "]}}", "ignored.deep[1]"),
    ):
        r = api.post(T2V, content=raw, headers={"Content-Type": "application/json"})
        assert_error(r, 400, field, "digits")
    assert prediction_count(api) == before


def test_deep_nesting_is_400(api: httpx.Client) -> None:
    for depth in (2000, 100_000):
        raw = '{"prompt": "x", "junk": ' + "[" * depth + "]" * depth + "}"
        r = api.post(T2V, content=raw, headers={"Content-Type": "application/json"})
        assert_error(r, 400, None, "nested")
    # Below Python's recursion limit the field is named.
    raw = '{"prompt": "x", "junk": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}"
    r = api.post(T2V, content=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400, None, "nested")
    assert r.json()["error"]["message"].startswith("junk.a.a.a")
    # Also when the client sends no Content-Type (the create route parses those itself).
    raw = '{"prompt": "x", "junk": ' + "[" * 5000 + "]" * 5000 + "}"
    r = api.post(T2V, content=raw, headers={"Content-Type": ""})
    assert_error(r, 400, None, "nested")


def test_non_finite_numbers_and_unstorable_characters(api: httpx.Client) -> None:
    for raw, field, word in (
        ('{"prompt": "x", "seed": NaN}', "seed", "NaN"),
        ('{"prompt": "x", "duration": 1e999}', "duration", "too large"),
        ('{"prompt": "a\\u0000b"}', "prompt", "NUL"),
        ('{"prompt": "x", "negative_prompt": "\\ud800"}', "negative_prompt", "surrogate"),
        ('{"prompt": "x", "a\\u0000": 1}', "<key>", "NUL"),
    ):
        r = api.post(T2V, content=raw, headers={"Content-Type": "application/json"})
        assert_error(r, 400, field, word)


def test_oversized_body_is_400(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_MAX_BODY_BYTES": "10000"})
    with srv.client(srv.create_key()) as c:
        r = c.post(T2V, json={"prompt": "x", "pad": "y" * 20000})
        assert_error(r, 400, "body", "10000 bytes")
        assert c.post(T2V, json={"prompt": "x", "duration": 4}).status_code == 200


# --- query parameters -----------------------------------------------------------------------


def test_page_that_overflows_the_offset_is_400(api: httpx.Client) -> None:
    r = api.get("/api/v3/predictions", params={"page": "4611686018427387904"})
    assert_error(r, 400, "page")
    r = api.get("/api/v3/predictions", params={"page": "1000000", "page_size": "100"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["items"] == []


def test_far_dates_do_not_overflow(api: httpx.Client) -> None:
    api.post(T2V, json={"prompt": "a dated cat", "duration": 4}).raise_for_status()
    r = api.get("/api/v3/predictions", params={"to": "9999-12-31"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["total"] >= 1
    r = api.get("/api/v3/predictions", params={"from": "0001-01-01", "to": "9999-12-31"})
    assert r.status_code == 200, r.text
    r = api.get("/api/v3/predictions", params={"from": "0001-01-01T00:00:00+14:00"})
    assert_error(r, 400, "from", "ISO")


# --- NUL in ids and filters: PostgreSQL refuses it in text ----------------------------------


def nul_requests(c: httpx.Client) -> list[tuple[httpx.Response, int, str | None]]:
    nul = "abc%00def"
    return [
        (c.get(f"/api/v3/predictions/{nul}/result"), 404, None),
        (c.get(f"/api/v3/predictions/{nul}"), 404, None),
        (c.post(f"/api/v3/predictions/{nul}/cancel"), 404, None),
        (c.delete(f"/api/v3/predictions/{nul}/outputs"), 404, None),
        (c.post(f"/api/v3/webhooks/deliveries/{nul}/retry"), 404, None),
        (c.get(f"/api/v3/predictions?model={nul}"), 400, "model"),
        (c.get(f"/api/v3/webhooks/deliveries?prediction_id={nul}"), 400, "prediction_id"),
        (c.get(f"/api/v3/predictions?status={nul}"), 400, "status"),
        (c.post(T2V, json={"prompt": "a\x00b"}), 400, "prompt"),
    ]


@pytest.fixture
def pg_server(start_server, pg_url: str) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    yield start_server({"REELGATE_DATABASE_URL": pg_url, "REELGATE_ADMIN_TOKEN": ADMIN})


def test_nul_in_ids_and_filters_postgresql(pg_server: ServerProcess) -> None:
    with pg_server.client(pg_server.create_key()) as c:
        for r, status, field in nul_requests(c):
            assert_error(r, status, field)
    with httpx.Client(base_url=pg_server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        assert_error(admin.get("/admin/v1/accounts/a%00b"), 404)
        assert_error(admin.post("/admin/v1/accounts", json={"name": "a\x00b"}), 400, "name")


def test_nul_in_ids_and_filters_sqlite(api: httpx.Client) -> None:
    for r, status, field in nul_requests(api):
        assert_error(r, status, field)


# --- limits and strict types ----------------------------------------------------------------


@pytest.mark.parametrize(("body", "field", "word"), [
    ({"prompt": "x", "negative_prompt": "n" * 4001}, "negative_prompt", "4000"),
    ({"prompt": "x", "negative_prompt": "n" * 5_000_000}, "negative_prompt", "4000"),
    ({"prompt": "x", "enhance_prompt": "yes"}, "enhance_prompt", "boolean"),
    ({"prompt": "x", "generate_audio": "no"}, "generate_audio", "boolean"),
    ({"prompt": "x", "enable_upsample": 1}, "enable_upsample", "boolean"),
    ({"prompt": "x", "duration": "8"}, "duration", "integer"),
    ({"prompt": "x", "duration": True}, "duration", "integer"),
    ({"prompt": "x", "seed": "7"}, "seed", "integer"),
    ({"prompt": "x", "webhook": "https://example.com/" + "a" * 9000}, "webhook", "8192"),
    ({"prompt": "x", "aspect_ratio": "1" * 1000}, "aspect_ratio", "16"),
])
def test_create_limits_and_strict_types(api: httpx.Client, body: dict, field: str,
                                        word: str) -> None:
    before = prediction_count(api)
    assert_error(api.post(T2V, json=body), 400, field, word)
    assert prediction_count(api) == before


def test_upload_ticket_strict_types(api: httpx.Client) -> None:
    for body, field in (({"filename": "a.png", "size": "5"}, "size"),
                        ({"filename": "a.png", "size": True}, "size"),
                        ({"filename": 7, "size": 5}, "filename")):
        assert_error(api.post("/api/v3/media/uploads", json=body), 400, field)


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("hardening-admin"),
                        {"REELGATE_ADMIN_TOKEN": ADMIN}).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/admin/v1/accounts", {"name": "a", "rate_per_minute": True}, "rate_per_minute"),
    ("POST", "/admin/v1/accounts", {"name": "a", "max_concurrent": "3"}, "max_concurrent"),
    ("POST", "/admin/v1/accounts", {"name": "a", "rate_per_minute": 10**30}, "rate_per_minute"),
    ("POST", "/admin/v1/accounts", {"name": "a", "rate_per_minute": -1}, "rate_per_minute"),
    ("PATCH", "/admin/v1/accounts/acme", {"disabled": "false"}, "disabled"),
    ("PATCH", "/admin/v1/accounts/acme", {"rate_per_minute": 1.5}, "rate_per_minute"),
    ("POST", "/admin/v1/accounts/acme/keys", {"name": "k", "models": "veo3"}, "models"),
    ("POST", "/admin/v1/accounts/acme/credits", {"amount": True}, "amount"),
    ("POST", "/admin/v1/accounts/acme/credits", {"amount": "1e999999"}, "amount"),
    ("POST", "/admin/v1/accounts/acme/credits", {"amount_micros": 10**40}, "amount_micros"),
    ("POST", "/admin/v1/accounts/acme/credits", {"amount": "1", "note": "n" * 5000}, "note"),
])
def test_admin_strict_types(admin_server: ServerProcess, method: str, path: str, body: dict,
                            field: str) -> None:
    with httpx.Client(base_url=admin_server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        if admin.get("/admin/v1/accounts/acme").status_code == 404:
            admin.post("/admin/v1/accounts", json={"name": "acme"}).raise_for_status()
        before = admin.get("/admin/v1/accounts/acme").json()
        assert_error(admin.request(method, path, json=body), 400, field)
        assert admin.get("/admin/v1/accounts/acme").json() == before


def test_admin_bounded_body(admin_server: ServerProcess) -> None:
    with httpx.Client(base_url=admin_server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        raw = '{"name": "n", "rate_per_minute": ' + "9" * 5000 + "}"
        r = admin.post("/admin/v1/accounts", content=raw,
                       headers={"Content-Type": "application/json"})
        assert_error(r, 400, "rate_per_minute", "digits")
        raw = '{"name": "n", "x": ' + "[" * 3000 + "]" * 3000 + "}"
        r = admin.post("/admin/v1/accounts", content=raw,
                       headers={"Content-Type": "application/json"})
        assert_error(r, 400, None, "nested")
        names = [a["name"] for a in admin.get("/admin/v1/accounts").json()]
        assert "n" not in names


# --- the OpenAPI document lists every status ------------------------------------------------


def test_openapi_documents_every_status(admin_server: ServerProcess) -> None:
    spec = httpx.get(f"{admin_server.base_url}/openapi.json").json()
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    for (method, path), op in ops.items():
        codes = set(op["responses"])
        assert "422" not in codes, (method, path)  # reelgate answers 400, never 422
        assert {"400", "500"} <= codes, (method, path, codes)
        if "{" in path:
            assert "404" in codes, (method, path, codes)
        if path.startswith("/admin/"):
            assert {"401", "404"} <= codes, (method, path, codes)
    for method, path in (("POST", "/api/v3/media/uploads"),
                         ("POST", "/api/v3/media/upload/binary"),
                         ("POST", "/api/v3/webhooks/deliveries/{delivery_id}/retry")):
        assert {"400", "401", "403", "429"} <= set(ops[(method, path)]["responses"]), path
    assert "404" in ops[("POST", "/api/v3/webhooks/deliveries/{delivery_id}/retry")][
        "responses"]


# --- sync-mode wake-ups cannot be lost ------------------------------------------------------


async def test_end_published_during_a_read_wakes_the_waiter() -> None:
    from reelgate.jobs.notify import LocalNotifier

    notifier = LocalNotifier()
    notifier.fallback_s = 3600  # no safety-net re-read inside this test
    state = {"finished": False, "reads": 0}

    class Row:
        def __init__(self, finished: bool) -> None:
            self.finished = finished

    async def read() -> Row:
        state["reads"] += 1
        row = Row(bool(state["finished"]))
        if state["reads"] == 1:
            # The prediction ends while this read is in flight, after it saw the old row:
            # the window where clearing the flag after the read lost the wake-up.
            state["finished"] = True
            await notifier.publish("p1")
        return row

    row, ended = await notifier.wait("p1", read, timeout=5)
    assert ended and row is not None and row.finished
    assert state["reads"] == 2


async def test_wait_gives_up_at_its_timeout_with_the_row_as_it_stands() -> None:
    from reelgate.jobs.notify import LocalNotifier

    notifier = LocalNotifier()

    class Row:
        finished = False

    async def read() -> Row:
        return Row()

    row, ended = await notifier.wait("p2", read, timeout=0.2)
    assert not ended and isinstance(row, Row)


# --- images are decoded under a budget and no larger than needed -----------------------------


def test_images_for_render_are_reduced_before_use() -> None:
    import io

    from PIL import Image

    from reelgate.media.images import open_for_render

    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (6000, 4000), (200, 30, 30)).save(buf, fmt)
        im = open_for_render(buf.getvalue(), (1280, 720))
        # At least the frame in both directions, at most about twice it.
        assert 1280 <= im.width < 2 * 1280 + 1280 and 720 <= im.height, im.size
        assert im.width * im.height < 6000 * 4000 / 4
        assert im.mode == "RGB"
        r, g, b = im.getpixel((im.width // 2, im.height // 2))
        assert r > 150 and g < 80 and b < 80


def test_decode_budget_bounds_concurrent_decodes() -> None:
    import threading
    import time

    from reelgate.media.images import DecodeBudget

    budget = DecodeBudget(100)
    in_use: list[int] = []
    current = [0]
    lock = threading.Lock()

    def decode(nbytes: int) -> None:
        with budget.hold(nbytes):
            with lock:
                current[0] += min(nbytes, 100)
                in_use.append(current[0])
            time.sleep(0.02)
            with lock:
                current[0] -= min(nbytes, 100)

    threads = [threading.Thread(target=decode, args=(n,)) for n in (60, 60, 60, 250, 30, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Never more than the budget at once; the one larger than the budget ran alone.
    assert max(in_use) <= 100
    assert len(in_use) == 6
