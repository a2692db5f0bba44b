"""The user CLI (`reelgate generate`, `reelgate predictions ...`) as a real subprocess
against real servers: exit codes, what lands on stdout and what on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelgate.media.video import probe_video
from tests import launcher
from tests.conftest import ImageServer, ServerProcess, make_image

ID = re.compile(r"^[0-9a-f]{32}$")
ANSI = re.compile(r"\x1b\[")


def run_cli(*args: str, url: str | None = None, key: str | None = None,
            cwd: Path | None = None, extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m reelgate.cli ARGS` with a clean environment: no REELGATE_* settings
    inherited, and no user config file (XDG_CONFIG_HOME points at an empty folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGATE_")}
    env["XDG_CONFIG_HOME"] = str(Path(cwd or ".").resolve() / ".no-config")
    if url:
        env["REELGATE_BASE_URL"] = url
    if key:
        env["REELGATE_API_KEY"] = key
    env |= extra_env or {}
    return launcher.run([sys.executable, "-m", "reelgate.cli", *args], env=env, cwd=cwd,
                        timeout=timeout)


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker, 3 s of latency: a prediction stays processing long enough to time out a
    wait, and the next one stays created long enough to be cancelled."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("cli-slow"),
        {"REELGATE_SANDBOX_LATENCY_S": "3", "REELGATE_WORKER_CONCURRENCY": "1"},
    ).start()
    yield srv
    srv.stop()


# --- generate -----------------------------------------------------------------------


def test_generate_saves_the_video_and_prints_its_path(server: ServerProcess, key: str,
                                                      tmp_path: Path) -> None:
    out = run_cli("generate", "a paper boat on a rainy street", "--model", "veo3.1-fast",
                  "--duration", "4", "--resolution", "720p", "--aspect", "9:16",
                  "-o", str(tmp_path / "boat.mp4"), "--poll-interval", "0.2",
                  url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # stdout is the path alone, with no Rich markup or colour (it is not a terminal).
    assert out.stdout == f"{tmp_path / 'boat.mp4'}\n"
    assert not ANSI.search(out.stdout + out.stderr)
    info = probe_video(tmp_path / "boat.mp4")
    assert (info.video_codec, info.width, info.height) == ("h264", 720, 1280)
    assert 3.5 < info.duration_s < 4.5
    # Not a terminal: one plain progress line per status, then a summary.
    assert re.search(r"\b[0-9a-f]{32} \(veo3.1-fast\) completed \(\d+\.\d s\)", out.stderr)
    assert "saved" in out.stderr


def test_generate_default_output_is_the_id(server: ServerProcess, key: str,
                                           tmp_path: Path) -> None:
    out = run_cli("generate", "a default name", "-d", "4", url=server.base_url, key=key,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.parent == tmp_path.resolve() and ID.match(path.stem) and path.suffix == ".mp4"
    assert probe_video(path).frames > 0


def test_generate_uploads_local_files_and_passes_urls(server: ServerProcess, key: str,
                                                      images: ImageServer,
                                                      tmp_path: Path) -> None:
    first = tmp_path / "first.png"
    first.write_bytes(make_image((230, 120, 20)))
    last_url = images.add("/cli-last.png", make_image((20, 60, 220)))
    out = run_cli("generate", "from orange to blue", "--image", str(first),
                  "--last-image", last_url, "-o", str(tmp_path / "morph.mp4"),
                  url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"uploading {first}" in out.stderr and "cli-last.png" not in out.stderr
    pid = re.search(r"([0-9a-f]{32}) \(", out.stderr).group(1)  # type: ignore[union-attr]
    data = httpx.get(f"{server.base_url}/api/v3/predictions/{pid}",
                     headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert data["model"] == "google/veo3.1-fast/image-to-video"  # scene from the inputs

    refs = [tmp_path / "r1.png", tmp_path / "r2.png"]
    for i, ref in enumerate(refs):
        ref.write_bytes(make_image((40 * i, 200, 90)))
    out = run_cli("generate", "these two on a table", "--model", "veo3.1",
                  "--ref", str(refs[0]), "--ref", str(refs[1]), "-o", str(tmp_path / "r.mp4"),
                  url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("uploading") == 2
    assert probe_video(tmp_path / "r.mp4").frames > 0


def test_generate_wrong_or_missing_key_exits_3(server: ServerProcess, tmp_path: Path) -> None:
    out = run_cli("generate", "x", "-d", "4", "--key", "rg_wrong", url=server.base_url,
                  cwd=tmp_path)
    assert out.returncode == 3
    assert out.stderr.strip() == "error: invalid API key (401). Check --key."
    assert out.stdout == ""
    out = run_cli("generate", "x", "-d", "4", url=server.base_url, key="rg_wrong",
                  cwd=tmp_path)
    assert out.returncode == 3 and "Check REELGATE_API_KEY." in out.stderr
    out = run_cli("generate", "x", url=server.base_url, cwd=tmp_path)
    assert out.returncode == 3 and "no API key" in out.stderr and "--key" in out.stderr


def test_generate_refused_request_exits_4(server: ServerProcess, key: str,
                                          tmp_path: Path) -> None:
    out = run_cli("generate", "x", "--aspect", "4:3", url=server.base_url, key=key,
                  cwd=tmp_path)
    assert out.returncode == 4, out.stderr
    assert out.stderr.startswith("error: request refused (400): aspect_ratio")
    assert out.stdout == ""
    out = run_cli("generate", "a badword in the prompt", "-d", "4", url=server.base_url,
                  key=key, cwd=tmp_path)
    assert out.returncode == 4
    assert "content policy" in out.stderr and "badword" not in out.stderr.split(":", 2)[-1]
    out = run_cli("generate", "x", "--model", "veo9", url=server.base_url, key=key,
                  cwd=tmp_path)
    assert out.returncode == 4 and "not found (404)" in out.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_generate_failed_prediction_exits_5(server: ServerProcess, key: str,
                                            tmp_path: Path) -> None:
    out = run_cli("generate", "this one [sandbox:fail]", "-d", "4", "--poll-interval", "0.2",
                  url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 5, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert re.match(r"error: prediction [0-9a-f]{32} failed: .*simulated failure", last), last
    assert out.stdout == "" and not list(tmp_path.glob("*.mp4"))
    out = run_cli("generate", "this one [sandbox:nsfw]", "-d", "4", "--poll-interval", "0.2",
                  url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 5 and "(content policy)" in out.stderr


def test_generate_timeout_exits_6(slow: ServerProcess, tmp_path: Path) -> None:
    out = run_cli("generate", "takes a while", "-d", "4", "--timeout", "0.5",
                  "--poll-interval", "0.2", url=slow.base_url, key=slow.create_key(),
                  cwd=tmp_path)
    assert out.returncode == 6, out.stderr
    pid = re.search(r"prediction ([0-9a-f]{32}) is still", out.stderr).group(1)  # type: ignore[union-attr]
    assert f"reelgate predictions get {pid}" in out.stderr


def test_usage_and_connection_errors(server: ServerProcess, key: str, tmp_path: Path) -> None:
    out = run_cli("generate", "x", "--image", "no-such.png", url=server.base_url, key=key,
                  cwd=tmp_path)
    assert out.returncode == 2 and "--image: no such file 'no-such.png'" in out.stderr
    out = run_cli("generate", "x", "--duration", "four", url=server.base_url, key=key,
                  cwd=tmp_path)
    assert out.returncode == 2
    out = run_cli("generate", "x", url="http://127.0.0.1:1", key=key, cwd=tmp_path)
    assert out.returncode == 1
    assert "cannot reach" in out.stderr and "Check --url or REELGATE_BASE_URL" in out.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("base_url = \n")
    out = run_cli("predictions", "list", cwd=tmp_path, key=key,
                  extra_env={"REELGATE_CONFIG": str(broken)})
    assert out.returncode == 2 and "not valid TOML" in out.stderr


# --- predictions --------------------------------------------------------------------


def test_predictions_list_get_and_download(server: ServerProcess, tmp_path: Path) -> None:
    key = server.create_key("cli-lister")
    made = []
    for prompt in ("list me", "list me too [sandbox:fail]"):
        out = run_cli("generate", prompt, "-d", "4", "--poll-interval", "0.2",
                      "-o", str(tmp_path / "x.mp4"), url=server.base_url, key=key,
                      cwd=tmp_path)
        made.append(re.search(r"([0-9a-f]{32}) \(", out.stderr).group(1))  # type: ignore[union-attr]

    out = run_cli("predictions", "list", url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == made[::-1]  # newest first, ids in the first column
    assert [r[1] for r in rows] == ["failed", "completed"]
    assert "page 1 of 1, 2 prediction(s)" in out.stderr

    out = run_cli("predictions", "list", "--status", "failed", "--json",
                  url=server.base_url, key=key, cwd=tmp_path)
    listed = json.loads(out.stdout)
    assert [p["id"] for p in listed["items"]] == [made[1]] and listed["total"] == 1
    out = run_cli("predictions", "list", "--page-size", "1", "--page", "2",
                  "--model", "veo3.1-fast", url=server.base_url, key=key, cwd=tmp_path)
    assert out.stdout.split("\t")[0] == made[0] and "page 2 of 2" in out.stderr

    out = run_cli("predictions", "get", made[0], url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0
    assert re.search(r"^status:\s+completed$", out.stdout, re.M)
    assert re.search(r"^output:\s+http://127\.0\.0\.1", out.stdout, re.M)
    out = run_cli("predictions", "get", made[1], "--json", url=server.base_url, key=key,
                  cwd=tmp_path)
    data = json.loads(out.stdout)
    assert data["status"] == "failed" and "simulated failure" in data["error"]
    out = run_cli("predictions", "get", "0" * 32, url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 4 and "not found (404)" in out.stderr

    out = run_cli("predictions", "download", made[0], "-o", str(tmp_path / "again.mp4"),
                  url=server.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == str(tmp_path / "again.mp4")
    assert probe_video(tmp_path / "again.mp4").frames > 0
    out = run_cli("predictions", "download", made[1], url=server.base_url, key=key,
                  cwd=tmp_path)
    assert out.returncode == 5 and "failed" in out.stderr


def test_predictions_cancel(slow: ServerProcess, tmp_path: Path) -> None:
    key = slow.create_key("cli-cancel")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=slow.base_url, headers=headers) as api:
        ids = [api.post("/api/v3/google/veo3-fast/text-to-video",
                        json={"prompt": f"queue {i}", "duration": 4}).json()["data"]["id"]
               for i in range(2)]
        deadline = time.monotonic() + 15
        while api.get(f"/api/v3/predictions/{ids[0]}").json()["data"]["status"] != "processing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    out = run_cli("predictions", "cancel", ids[1], url=slow.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{ids[1]}\tcancelled\n"
    # One that already started cannot be cancelled: refused, exit 4, the server's reason.
    out = run_cli("predictions", "cancel", ids[0], url=slow.base_url, key=key, cwd=tmp_path)
    assert out.returncode == 4 and out.stderr.startswith("error: request refused (400)")


def test_url_and_key_from_the_config_file(server: ServerProcess, key: str,
                                          tmp_path: Path) -> None:
    cfg = tmp_path / "reelgate.toml"
    cfg.write_text(f'base_url = "{server.base_url}"\napi_key = "{key}"\n')
    out = run_cli("predictions", "list", "--page-size", "1", cwd=tmp_path,
                  extra_env={"REELGATE_CONFIG": str(cfg)})
    assert out.returncode == 0, out.stderr
    # A flag beats the file; the message names the setting to fix.
    out = run_cli("predictions", "list", "--key", "rg_wrong", cwd=tmp_path,
                  extra_env={"REELGATE_CONFIG": str(cfg)})
    assert out.returncode == 3 and "Check --key." in out.stderr
    cfg.write_text(f'base_url = "{server.base_url}"\napi_key = "rg_wrong"\n')
    out = run_cli("predictions", "list", cwd=tmp_path, extra_env={"REELGATE_CONFIG": str(cfg)})
    assert out.returncode == 3 and f"Check api_key in {cfg}." in out.stderr
