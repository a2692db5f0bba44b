"""The README's curl walk-through, run as written against a real server (only the port and
the path of the reelgate command differ)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from reelgate.media.video import probe_video
from tests.conftest import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    section = text.split("## Walk-through with curl", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_first_two_commands_are_install_run_and_test() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert blocks[0].strip().endswith("reelgate serve")
    assert blocks[1].strip().endswith(".venv/bin/pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci  # CI runs the README's test command


def test_curl_walkthrough(server: ServerProcess, tmp_path: Path) -> None:
    script = walkthrough()
    script = script.replace("http://127.0.0.1:8000", server.base_url)
    script = script.replace(".venv/bin/reelgate", f"{sys.executable} -m reelgate.cli")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                            env={**os.environ, **server.env}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    info = probe_video(tmp_path / "video.mp4")
    assert info.video_codec == "h264" and (info.width, info.height) == (1280, 720)
