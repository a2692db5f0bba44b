"""`reelgate serve --workers 2` on SQLite: the core HTTP tests of test_predictions.py, run
again against two API processes sharing one port and one data dir (the job workers in
one of them, wake-ups between them over Unix sockets)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_until_done
from tests.test_predictions import (  # noqa: F401 - collected here, with the fixtures below
    test_async_mode_moves_forward_only,
    test_blocked_output_sets_nsfw_flag,
    test_every_model_and_scene,
    test_failed_prediction_is_200_with_error,
    test_sync_mode_answers_with_the_ended_prediction,
    test_sync_mode_ceiling_returns_the_object_as_it_stands,
)

WORKERS_ENV = {"REELGATE_SERVE_WORKERS": "2"}
# uvicorn's supervisor starts each process by spawning a fresh interpreter that imports the
# whole app again: on a loaded machine that alone took 17 s, so the default 30 s to answer
# /healthz (migration, then two spawned imports) is not enough.
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("workers2"), {
        **WORKERS_ENV, "REELGATE_POLICY_BLOCKLIST": "forbidden thing,badword",
        "REELGATE_SYNC_TIMEOUT_S": "120"}, start_timeout=START_TIMEOUT_S,
        fork=False).start()  # the real `python -m reelgate.cli` start, as documented
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server: ServerProcess) -> str:
    return server.create_key("alice")


@pytest.fixture(scope="module")
def api(server: ServerProcess, key: str) -> Iterator[httpx.Client]:
    with server.client(key) as c:
        yield c


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def _start(env: dict[str, str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / f"data{len(started)}",
                            {**WORKERS_ENV, **(env or {})}, start_timeout=START_TIMEOUT_S,
                            fork=False)
        started.append(srv)
        return srv.start()

    yield _start
    # SIGTERM, so uvicorn's supervisor stops its processes too (SIGKILL would orphan them).
    for srv in started:
        srv.stop(signal.SIGTERM)


def test_two_processes_one_runs_the_workers(server: ServerProcess, api: httpx.Client) -> None:
    deadline = time.monotonic() + 20  # the second process may still be starting
    while time.monotonic() < deadline:
        sockets = sorted((server.data_dir / "notify").glob("*.sock"))
        if len(sockets) == 2:
            break
        time.sleep(0.1)
    assert len(sockets) == 2, sockets
    # Many creates, spread over both processes by the kernel, all end: the process without
    # workers hands its new predictions to the one with them.
    ids = []
    for i in range(6):
        with httpx.Client(base_url=server.base_url, timeout=60,
                          headers=dict(api.headers)) as fresh:  # a new connection each
            r = fresh.post("/api/v3/google/veo3.1-fast/text-to-video",
                           json={"prompt": f"spread {i}", "duration": 4})
            assert r.status_code == 200, r.text
            ids.append(r.json()["data"]["id"])
    for pid in ids:
        assert wait_until_done(api, pid)["status"] == "completed"
