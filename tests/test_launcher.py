"""The tests' launcher (tests/launcher.py, tests/zygote.py): a command forked from the
zygote behaves as the same command started as a fresh ``python -m reelgate.cli``: its
output, exit status, environment, working directory and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import launcher
from tests.conftest import ServerProcess, eventually

CLI = [sys.executable, "-m", "reelgate.cli"]


@pytest.fixture(autouse=True)
def forking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests are about the forked path, whatever REELGATE_TEST_FORK says."""
    monkeypatch.setenv("REELGATE_TEST_FORK", "1")
    yield


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGATE_")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / ".no-config"), **extra}


def forked(cmd: list[str], **kwargs: object) -> launcher.Launched:
    proc = launcher.popen(cmd, **kwargs)  # type: ignore[arg-type]
    assert isinstance(proc, launcher.Launched), launcher.refusals
    return proc


@pytest.mark.parametrize("args", [["--help"], ["no-such-command"], ["keys", "list"],
                                  ["accounts", "show", "nobody"]])
def test_output_and_exit_status_are_a_fresh_interpreters(tmp_path: Path,
                                                        args: list[str]) -> None:
    env = clean_env(tmp_path, REELGATE_DATA_DIR=str(tmp_path / "data"))
    fresh = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                           timeout=120)
    proc = forked([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert out is not None and err is not None
    assert (proc.returncode, out.decode(), err.decode()) == \
        (fresh.returncode, fresh.stdout, fresh.stderr)
    # run() gives the same through its CompletedProcess.
    again = launcher.run([*CLI, *args], env=env, timeout=120)
    assert (again.returncode, again.stdout, again.stderr) == \
        (fresh.returncode, fresh.stdout, fresh.stderr)


def test_environment_settings_file_and_working_directory_are_the_callers(
        tmp_path: Path) -> None:
    """The child reads its settings from the environment it was given (the settings file
    too, named after the zygote's imports), and a relative path from its own directory."""
    settings = tmp_path / "settings.env"
    settings.write_text(f"REELGATE_DATA_DIR={tmp_path / 'from-file'}\n")
    env = clean_env(tmp_path, REELGATE_SETTINGS_FILE=str(settings))
    made = launcher.run([*CLI, "keys", "create", "--name", "a"], env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "from-file" / "reelgate.db").exists()

    work = tmp_path / "work"
    work.mkdir()
    made = launcher.run([*CLI, "keys", "create", "--name", "b"],
                        env=clean_env(tmp_path, REELGATE_DATA_DIR="rel"), cwd=work,
                        timeout=120)
    assert made.returncode == 0, made.stderr
    assert (work / "rel" / "reelgate.db").exists()
    assert not launcher.refusals or all("environment" in r for r in launcher.refusals)


def test_a_server_is_the_process_a_test_signals(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data").start()
    proc = srv.proc
    assert isinstance(proc, launcher.Launched), launcher.refusals
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    # The pid is the server's own: it is the one listening on the port, it logs to the
    # file the test gave it, and a signal sent to it by pid reaches it.
    import psutil  # type: ignore[import-untyped]

    assert proc.pid in {c.pid for c in psutil.net_connections("tcp")
                        if c.laddr and c.laddr.port == srv.port and c.status == "LISTEN"}
    os.kill(proc.pid, signal.SIGSTOP)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{srv.base_url}/healthz", timeout=1)
    os.kill(proc.pid, signal.SIGCONT)
    assert httpx.get(f"{srv.base_url}/healthz", timeout=30).status_code == 200
    # SIGTERM drains and exits as `serve` does; the status comes back as Popen's would.
    proc.terminate()
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert proc.poll() == proc.returncode
    proc.kill()  # after the end, as with Popen: nothing happens

    srv = ServerProcess(tmp_path / "data").start()
    assert srv.proc is not None
    srv.stop(signal.SIGKILL)
    assert srv.proc.returncode == -signal.SIGKILL


def test_what_the_zygote_cannot_honour_starts_as_a_fresh_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = clean_env(tmp_path, REELGATE_DATA_DIR=str(tmp_path / "data"))
    # The terminal width rich read when the zygote made its consoles: a fresh process.
    proc = launcher.popen([*CLI, "keys", "list"], env={**env, "COLUMNS": "211"},
                          stdout=subprocess.DEVNULL)
    assert isinstance(proc, subprocess.Popen)
    assert proc.wait(timeout=120) == 0
    assert any("COLUMNS" in r for r in launcher.refusals)
    # Commands other than reelgate's, and everything when REELGATE_TEST_FORK=0.
    assert isinstance(launcher.popen([sys.executable, "-c", "pass"]), subprocess.Popen)
    monkeypatch.setenv("REELGATE_TEST_FORK", "0")
    proc = launcher.popen([*CLI, "--help"], env=env, stdout=subprocess.DEVNULL)
    assert isinstance(proc, subprocess.Popen)
    assert proc.wait(timeout=120) == 0


def test_children_end_with_the_zygote(tmp_path: Path) -> None:
    """When the test process ends (the zygote's stdin closes), what it started and did
    not stop is killed, not left running."""
    zygote = launcher._Zygote()
    assert zygote.refusal is None, zygote.refusal
    srv = ServerProcess(tmp_path / "data")
    with open(tmp_path / "log", "wb") as log:
        proc = launcher._fork(zygote, [*CLI, "serve", "--port", str(srv.port)], srv.env,
                              os.getcwd(), None, log, log)
    assert proc is not None
    eventually(lambda: _answers(srv.base_url), timeout=60, what="the server")
    zygote.close()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    time.sleep(0.2)
    assert not _answers(srv.base_url)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
