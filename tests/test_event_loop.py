"""`reelgate serve` runs on the event loop REELGATE_EVENT_LOOP names (asyncio by default:
see the README's benchmarks for why), and refuses a loop it does not know."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess


@pytest.mark.parametrize(("setting", "loop"), [(None, "asyncio"), ("uvloop", "uvloop"),
                                               ("asyncio", "asyncio")])
def test_serve_runs_on_the_configured_loop(start_server: Callable[..., ServerProcess],
                                           monkeypatch: pytest.MonkeyPatch,
                                           setting: str | None, loop: str) -> None:
    monkeypatch.setenv("REELGATE_TEST_SERVER_LOG", "info")
    server = start_server({} if setting is None else {"REELGATE_EVENT_LOOP": setting})
    key = server.create_key()
    r = httpx.get(f"{server.base_url}/api/v3/balance",
                  headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert f"serving on the {loop} event loop" in server.log_path.read_text()


def test_an_unknown_loop_is_refused_at_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "reelgate.cli", "serve", "--port", "1"],
                         env={"PATH": "/usr/bin:/bin", "REELGATE_EVENT_LOOP": "trio",
                              "REELGATE_DATA_DIR": str(tmp_path / "data")},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "REELGATE_EVENT_LOOP" in out.stderr or "event_loop" in out.stderr, out.stderr
