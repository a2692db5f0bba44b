"""Start ``python -m reelgate.cli ...`` for the tests, forked from a pre-imported zygote.

``popen(cmd, ...)`` and ``run(cmd, ...)`` take the arguments of ``subprocess.Popen`` and
``subprocess.run`` that the tests use. A command of the form ``[sys.executable, "-m",
MODULE, *args]`` with MODULE in FORKED_MODULES is forked from this test process's zygote
(tests/zygote.py, started on first use): the child is a real process running the command
with the given environment, working directory and standard streams, whose pid is the one a
test signals or kills, without the ~3 s of imports a new interpreter spends. Everything
else, and every command when REELGATE_TEST_FORK=0 is set, when the zygote could not start
or when it refuses a request (see tests/zygote.py: an environment it cannot honour after
its imports), starts as a plain ``subprocess.Popen``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import locale
import os
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
FORKED_MODULES = frozenset({"reelgate.cli", "reelgate.backends.google.cli"})
READY_TIMEOUT_S = 180  # the zygote's imports, on a loaded machine

# The environment the zygote starts with: this process's as it was when the tests were
# collected, not as some test has patched it at the moment of the first command.
_BASE_ENV = dict(os.environ)

Stream = int | IO[Any] | None


def enabled() -> bool:
    return os.environ.get("REELGATE_TEST_FORK", "1") != "0"


class Launched:
    """A command forked by the zygote, with the part of ``subprocess.Popen``'s interface
    the tests use. The zygote is its parent: it reports the exit status on this command's
    connection, and the pidfd it sent addresses this process and no other."""

    def __init__(self, args: list[str], conn: socket.socket, pid: int, pidfd: int,
                 buffered: bytes, stdout: int | None, stderr: int | None) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn
        self._pidfd = pidfd
        self._buf = buffered
        self._lock = threading.Lock()
        # Our ends of the pipes asked for with subprocess.PIPE (read by communicate()).
        self._out = stdout
        self._err = stderr
        self._chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self._take()

    def _take(self) -> None:
        if b"\n" in self._buf:
            line = self._buf.split(b"\n", 1)[0]
            self._finish(int(json.loads(line)["returncode"]))

    def _finish(self, code: int) -> None:
        self.returncode = code
        self._conn.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _read(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` (None: for ever) for the exit report."""
        with self._lock:
            if self.returncode is not None:
                return
            self._conn.settimeout(timeout)
            try:
                chunk = self._conn.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            if not chunk:
                # The zygote is gone; it killed its children on the way (or their
                # PR_SET_PDEATHSIG did).
                self._finish(-signal.SIGKILL)
                return
            self._buf += chunk
            self._take()

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._read(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is not None or self._pidfd < 0:
                return
            with contextlib.suppress(ProcessLookupError):  # ended, not yet reported
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        """Read the captured output to its end, then wait for the exit (no input: the
        tests never send any). On a timeout, as Popen: TimeoutExpired, the command runs on
        and what was read so far is kept for a later call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for role, fd in (("out", self._out), ("err", self._err)):
                if fd is not None and fd >= 0:
                    sel.register(fd, selectors.EVENT_READ, role)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                for key, _ in sel.select(left):
                    assert isinstance(key.fd, int)
                    data = os.read(key.fd, 65536)
                    if data:
                        self._chunks[key.data].append(data)
                    else:
                        sel.unregister(key.fd)
                        os.close(key.fd)
                        setattr(self, "_" + key.data, -1)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return (b"".join(self._chunks["out"]) if self._out is not None else None,
                b"".join(self._chunks["err"]) if self._err is not None else None)


class _Zygote:
    """This process's zygote: started on first use, ended when this process ends."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rgz-")
        self.path = os.path.join(self.dir, "sock")
        self.log = open(os.path.join(self.dir, "zygote.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote", self.path], cwd=ROOT, env=_BASE_ENV,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.refusal: str | None = None
        atexit.register(self.close)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT_S)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != "ready":
            self.refusal = line or "did not start"
            self.close()

    def close(self) -> None:
        # End of file on its stdin tells it we are done: it kills what is still running.
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()
# Why commands went to plain processes (the zygote's refusals), for the launcher's tests.
refusals: list[str] = []


def _get_zygote() -> _Zygote | None:
    global _zygote
    with _zygote_lock:
        if _zygote is None:
            _zygote = _Zygote()
            if _zygote.refusal is not None:
                refusals.append(f"zygote: {_zygote.refusal}")
        return _zygote if _zygote.refusal is None else None


def _fd(stream: Stream, default: int, opened: list[int]) -> int:
    if stream is None:
        return default
    if stream == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        opened.append(fd)
        return fd
    if isinstance(stream, int):
        return stream
    return stream.fileno()


def _fork(zygote: _Zygote, cmd: list[str], env: Mapping[str, str], cwd: str, stdin: Stream,
          stdout: Stream, stderr: Stream) -> Launched | None:
    opened: list[int] = []  # our copies of what the child gets, closed once it has them
    ours: dict[int, int] = {}  # 1, 2 -> our read end of a PIPE
    fds = []
    for index, stream in enumerate((stdin, stdout, stderr)):
        if stream == subprocess.PIPE:
            if index == 0:
                raise ValueError("stdin=PIPE is not supported by the launcher")
            r, w = os.pipe()
            ours[index] = r
            opened.append(w)
            fds.append(w)
        else:
            fds.append(_fd(stream, index, opened))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(zygote.path)
        body = json.dumps({"module": cmd[2], "argv": cmd[3:], "env": dict(env),
                           "cwd": cwd}).encode()
        socket.send_fds(conn, [struct.pack(">I", len(body))], fds)
        conn.sendall(body)
        conn.settimeout(60)
        data, got, _, _ = socket.recv_fds(conn, 4096, 1)
        while b"\n" not in data:
            more = conn.recv(4096)
            if not more:
                raise OSError("the zygote hung up")
            data += more
    except OSError as exc:
        conn.close()
        for fd in (*opened, *ours.values()):
            os.close(fd)
        refusals.append(f"zygote unreachable: {exc}")
        return None
    for fd in opened:
        os.close(fd)
    line, rest = data.split(b"\n", 1)
    answer = json.loads(line)
    if "pid" not in answer:
        conn.close()
        for fd in (*got, *ours.values()):
            os.close(fd)
        refusals.append(answer.get("refused", "refused"))
        return None
    return Launched(cmd, conn, int(answer["pid"]), got[0], rest, ours.get(1), ours.get(2))


def popen(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None, stdin: Stream = None,
          stdout: Stream = None, stderr: Stream = None) -> Launched | subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, ...)``, forked from the zygote where it can be."""
    cmd = list(cmd)
    if enabled() and len(cmd) >= 3 and cmd[0] == sys.executable and cmd[1] == "-m" \
            and cmd[2] in FORKED_MODULES:
        zygote = _get_zygote()
        if zygote is not None:
            launched = _fork(zygote, cmd, os.environ if env is None else env,
                             os.fspath(cwd) if cwd is not None else os.getcwd(),
                             stdin, stdout, stderr)
            if launched is not None:
                return launched
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr)


def run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, timeout: float | None = None,
        capture_output: bool = True, text: bool = True) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(cmd, capture_output=True, text=True, ...)``, forked where it can
    be: on a timeout the command is killed and TimeoutExpired raised, as there."""
    pipe = subprocess.PIPE if capture_output else None
    proc = popen(cmd, env=env, cwd=cwd, stdout=pipe, stderr=pipe)
    out: bytes | None
    err: bytes | None
    # A plain Popen is closed as subprocess.run closes it; a forked one has nothing to close.
    with proc if isinstance(proc, subprocess.Popen) else contextlib.nullcontext():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        code = proc.wait()
    if text:
        return subprocess.CompletedProcess(list(cmd), code, _text(out), _text(err))
    return subprocess.CompletedProcess(list(cmd), code, out, err)


def _text(data: bytes | None) -> str | None:
    """As subprocess's text mode decodes: the locale's encoding, universal newlines."""
    if data is None:
        return None
    decoded = data.decode(locale.getpreferredencoding(False))
    return decoded.replace("\r\n", "\n").replace("\r", "\n")
