"""The tests' pre-forked launcher: ``python -m tests.zygote SOCKET``.

Starting ``python -m reelgate.cli serve`` costs about 3 s of CPU, most of it importing
(FastAPI, SQLAlchemy, pydantic, alembic, taskiq, boto3...), and the suite starts well over a
hundred servers, workers and command lines. This process imports all of that once, then
forks a child per request that runs the command as ``python -m MODULE ARGS`` would, with
the caller's environment, working directory and standard streams. tests/launcher.py is the
caller's side and says when it is not used.

Protocol, one connection per command (so each command's exit status comes back on its
own connection, and the caller may poll it from any thread):

* the caller sends a 4-byte big-endian length with its stdin, stdout and stderr file
  descriptors attached (SCM_RIGHTS), then that many bytes of JSON: module, argv, env, cwd;
* the zygote answers one JSON line, ``{"pid": N}`` with a pidfd of the child attached (the
  caller signals through it, so a signal can never reach a recycled pid), or
  ``{"refused": "why"}`` (the caller then starts a plain process);
* when the child ends, ``{"returncode": N}`` as ``subprocess.Popen`` would report it.

The zygote is the children's parent and reaps them. Its stdin is a pipe from the test
process: end of file there means the test process is gone, and the zygote kills what it
started and exits; each child also has PR_SET_PDEATHSIG, so a SIGKILLed zygote takes its
children with it.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import io
import json
import os
import random
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
import warnings
from typing import Any

# What the commands import, loaded once here. reelgate.cli and reelgate.api.app pull in
# nearly everything `serve`, `worker` and the operator commands need; the rest is what
# they import lazily while starting (uvicorn's protocol and loop modules, migrations,
# the database drivers, Redis, S3).
PRELOAD = (
    "reelgate.cli",
    "reelgate.api.app",
    "reelgate.api.drain",
    "reelgate.services",
    "reelgate.store.migrate",
    "reelgate.store.db",
    "reelgate.backends.google.cli",
    "reelgate.backends.sandbox",
    "reelgate.jobs.dispatch.redis",
    "reelgate.jobs.notify.redis",
    "reelgate.api.google.routes",
    "reelgate.api.openai.routes",
    "reelgate.api.outputs",
    "reelgate.backends.google.backend",
    "reelgate.backends.mixed",
    "reelgate.backends.v3_upstream",
    "reelgate.backends.local.config",
    "reelgate.console.routes",
    "reelgate.console.admin",
    "reelgate.store.console",
    "fastapi.staticfiles",
    "fastapi.templating",
    "jinja2",
    "itsdangerous",
    "multiprocessing.synchronize",
    "multiprocessing.sharedctypes",
    "encodings.idna",
    "uvicorn",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.main",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "uvicorn.lifespan.on",
    "alembic.runtime.migration",
    "alembic.command",
    "aiosqlite",
    "asyncpg",
    "redis.asyncio",
    "taskiq_redis",
    "boto3",
    "av",
    "numpy",
)

# Variables read while modules are imported (or while objects made at import are built):
# a request whose value differs from the zygote's is refused, so its command starts as a
# fresh interpreter that reads them itself. The interpreter's own (PYTHON*), the locale
# (standard streams' encoding), the terminal (rich and typer decide width and colours when
# their consoles are made), temporary directories, the time zone, BLAS threads.
SENSITIVE = frozenset({
    "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "PY_COLORS",
    "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERMINAL_WIDTH", "GITHUB_ACTIONS",
    "JUPYTER_COLUMNS", "JUPYTER_LINES", "DATABRICKS_RUNTIME_VERSION",
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir",
})
# (torch, transformers and huggingface_hub are not preloaded: a command that imports them
# reads their variables itself, e.g. the TORCHINDUCTOR_CACHE_DIR torch.compile sets in the
# test process.)
SENSITIVE_PREFIXES = ("PYTHON", "LC_")

PR_SET_PDEATHSIG = 1


def sensitive(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k in SENSITIVE or k.startswith(SENSITIVE_PREFIXES)}


def preload() -> str | None:
    """Import PRELOAD; None when forking is safe afterwards, else why not."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional extra not installed: the command imports what it needs
    # fork() copies only the calling thread: another thread's locks would stay held in the
    # child for ever. No Python thread may run here...
    if threading.active_count() != 1:
        return f"{threading.active_count()} Python threads after the imports"
    # ...nor a native one. numpy's OpenBLAS starts a thread pool when imported and stops it
    # in a pthread_atfork handler before each fork (restarting it lazily), so after one
    # probe fork every thread left is one nobody stops for us.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    tasks = len(os.listdir("/proc/self/task"))
    if tasks != 1:
        return f"{tasks} native threads after the imports"
    return None


class Zygote:
    def __init__(self, path: str) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "lifeline")
        # pid -> (its pidfd, the connection to report its end on, or None once the
        # caller hung up)
        self.children: dict[int, tuple[int, socket.socket | None]] = {}
        self.refusal: str | None = None
        self.env = sensitive(dict(os.environ))

    def fds(self) -> list[int]:
        """Descriptors of the zygote's own, which a child must not keep."""
        own = [self.listener.fileno(), *(fd for fd, _ in self.children.values())]
        own += [c.fileno() for _, c in self.children.values() if c is not None]
        return own

    def serve(self) -> None:
        while True:
            for key, _ in self.sel.select():
                what = key.data
                if what == "lifeline":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                elif what == "accept":
                    conn, _ = self.listener.accept()
                    self.handle(conn)
                elif isinstance(what, int):
                    if what in self.children:
                        self.reap(what)
                else:  # a caller hung up or sent more: its child runs on unreported
                    pid = what[1]
                    caller = key.fileobj
                    assert isinstance(caller, socket.socket)
                    if pid not in self.children or self.children[pid][1] is not caller:
                        continue  # reaped earlier in this round
                    self.sel.unregister(caller)
                    caller.close()
                    pidfd, _ = self.children[pid]
                    self.children[pid] = (pidfd, None)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)  # a caller sends its request at once
        passed: list[int] = []
        try:
            head, passed, _, _ = socket.recv_fds(conn, 4, 3)
            if len(head) != 4 or len(passed) != 3:
                raise ValueError("bad request")
            size = struct.unpack(">I", head)[0]
            body = b""
            while len(body) < size:
                chunk = conn.recv(size - len(body))
                if not chunk:
                    raise ValueError("truncated request")
                body += chunk
            request = json.loads(body)
            why = self.refusal or self.check(request, passed)
            if why is not None:
                conn.sendall(json.dumps({"refused": why}).encode() + b"\n")
                conn.close()
                return
            pid = os.fork()
            if pid == 0:
                child(request, passed, [*self.fds(), conn.fileno(), self.sel_fd()])
            pidfd = os.pidfd_open(pid)
            socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
        except (OSError, ValueError) as exc:
            print(f"zygote: request failed: {exc!r}", file=sys.stderr)
            conn.close()
            return
        finally:
            for fd in passed:
                os.close(fd)
        conn.setblocking(True)
        self.children[pid] = (pidfd, conn)
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        self.sel.register(conn, selectors.EVENT_READ, ("conn", pid))

    def sel_fd(self) -> int:
        fileno = getattr(self.sel, "fileno", None)
        return int(fileno()) if fileno is not None else -1

    def check(self, request: dict[str, Any], passed: list[int]) -> str | None:
        env = request["env"]
        if sensitive(env) != self.env:
            differ = sorted(set(sensitive(env).items()) ^ set(self.env.items()))
            return f"environment differs from the zygote's in {sorted({k for k, _ in differ})}"
        # rich picks its colours when the consoles are made (here, without a terminal).
        if any(os.isatty(fd) for fd in passed[1:]):
            return "output to a terminal"
        return None

    def reap(self, pid: int) -> None:
        pidfd, conn = self.children.pop(pid)
        self.sel.unregister(pidfd)
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        if conn is not None:
            self.sel.unregister(conn)
            try:
                conn.sendall(json.dumps(
                    {"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass  # the caller is gone
            conn.close()

    def close(self) -> None:
        """The test process is gone: nobody will stop what it started."""
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def child(request: dict[str, Any], passed: list[int], own: list[int]) -> None:
    """In the forked child: become ``python -m MODULE ARGV`` and never return."""
    code = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the zygote died before the line above
            os._exit(1)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it
        for fd in own:
            if fd >= 0:
                os.close(fd)
        for target, fd in enumerate(passed):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()  # putenv/unsetenv too: the command's own subprocesses see it
        os.environ.update(request["env"])
        # As `python -m` sets them: the working directory first on the path, argv[0] the
        # module's file (runpy sets it), and multiprocessing's record of where we started.
        sys.path[0] = os.getcwd()
        sys.argv = ["-m", *request["argv"]]
        import multiprocessing.process

        multiprocessing.process.ORIGINAL_DIR = os.getcwd()  # type: ignore[attr-defined]
        # The zygote's random state is every child's: reseed (random also does so itself
        # after a fork; numpy's global generator does not).
        random.seed()
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed()
        # Buffered as the interpreter would buffer them on these descriptors.
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(line_buffering=os.isatty(fd) or fd == 2)
        code = run_module(request["module"])
        # What the interpreter does on its way out: join the non-daemon threads, run the
        # atexit handlers (multiprocessing stops its pool processes there, logging
        # flushes), flush the standard streams.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                code = code or 120  # as the interpreter does when the final flush fails
    except BaseException:  # noqa: BLE001 - nothing may unwind into the zygote's loop
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)
    os._exit(code)


def run_module(module: str) -> int:
    """Run ``module`` as ``__main__`` (runpy, as ``python -m`` does: multiprocessing's
    spawned children import it again as their main) and return the exit status."""
    # Its module object is already in sys.modules, imported here; runpy runs the code
    # again as __main__ (as `python -m` does with a module imported before it runs) and
    # warns about exactly that.
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message=r".* found in sys\.modules after import of package")
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The interpreter ends an uncaught Ctrl-C by dying of SIGINT, so the parent sees it.
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:  # noqa: BLE001 - reported as the interpreter does
        traceback.print_exc()
        return 1
    return 0


def main() -> None:
    path = sys.argv[1]
    # SIGINT reaches the whole process group (Ctrl-C in pytest): the zygote has no work of
    # its own to interrupt and ends when the test process does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    zygote = Zygote(path)
    zygote.refusal = preload()
    print("refused: " + zygote.refusal if zygote.refusal else "ready", flush=True)
    try:
        zygote.serve()
    finally:
        zygote.close()


if __name__ == "__main__":
    main()
