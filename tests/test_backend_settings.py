"""The sandbox's and the local backend's settings (REELGATE_SANDBOX_*, REELGATE_LOCAL_*) are
objects of their own next to their backends; the variables are read from the environment and
from the settings file (REELGATE_SETTINGS_FILE), the environment winning, as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from reelgate.media.video import probe_video
from tests.conftest import ServerProcess

PRINT_SETTINGS = """
import json
from reelgate.backends.local.config import load_local_settings
from reelgate.backends.sandbox.config import load_sandbox_settings
print(json.dumps({"sandbox": load_sandbox_settings().model_dump(mode="json"),
                  "local": load_local_settings().model_dump(mode="json")}))
"""


def test_backend_settings_come_from_the_environment_and_the_settings_file(
        tmp_path: Path) -> None:
    settings_file = tmp_path / "reelgate.env"
    settings_file.write_text(textwrap.dedent("""\
        REELGATE_SANDBOX_FPS=12
        REELGATE_SANDBOX_RENDER_PROCESSES=0
        REELGATE_LOCAL_MODELS_FILE=/srv/reelgate/models.toml
        REELGATE_LOCAL_DEVICE=cuda:1
    """))
    # Only this test's REELGATE_* variables: a developer's own must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGATE_")}
    env.update({
        "REELGATE_SETTINGS_FILE": str(settings_file),
        "REELGATE_SANDBOX_LATENCY_S": "0.5",
        "REELGATE_LOCAL_TORCH_THREADS": "3",
        # The environment wins over the file.
        "REELGATE_LOCAL_DEVICE": "cpu",
    })
    out = subprocess.run([sys.executable, "-c", PRINT_SETTINGS], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["sandbox"] == {"latency_s": 0.5, "failure_rate": 0.0, "max_height": 0,
                              "fps": 12, "render_processes": 0}
    assert got["local"] == {"models_file": "/srv/reelgate/models.toml", "device": "cpu",
                            "torch_threads": 3}


def test_a_server_follows_backend_settings_from_its_file_and_environment(
        tmp_path: Path) -> None:
    """What a user sees: the sandbox renders at the height the settings file caps and the
    frame rate the environment sets, and the local model the file names is listed."""
    models = tmp_path / "local-models.toml"
    models.write_text(textwrap.dedent("""
        [[models]]
        name = "from-the-file"
        family = "ltx"
        weights = "/nonexistent/ltx"
        sizes = { "720p" = [64, 32] }
    """))
    settings_file = tmp_path / "reelgate.env"
    settings_file.write_text(f"REELGATE_SANDBOX_MAX_HEIGHT=72\n"
                             f"REELGATE_LOCAL_MODELS_FILE={models}\n")
    srv = ServerProcess(tmp_path / "data", {"REELGATE_SETTINGS_FILE": str(settings_file),
                                            "REELGATE_SANDBOX_FPS": "6"})
    # The tests' small-render default is an environment variable, which would win over
    # the file.
    srv.env.pop("REELGATE_SANDBOX_MAX_HEIGHT", None)
    srv.start()
    try:
        with srv.client(srv.create_key("settings")) as c:
            rows = {r["model"]: r for r in c.get("/api/v3/models").json()["data"]}
            assert rows["local/from-the-file"]["backend"] == "local"
            r = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                       json={"prompt": "settings", "duration": 4, "resolution": "720p",
                             "enable_sync_mode": True})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data["status"] == "completed", data
            video = tmp_path / "out.mp4"
            video.write_bytes(httpx.get(data["outputs"][0], timeout=60).content)
    finally:
        srv.stop()
    info = probe_video(video)
    assert (info.width, info.height) == (128, 72)
    assert info.fps == pytest.approx(6) and info.frames == 4 * 6
