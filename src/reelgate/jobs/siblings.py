"""Messages between the API processes of one embedded server (``reelgate serve --workers
N`` on SQLite), which has no Redis to carry them: the transport under the in-process
Notifier (jobs/notify/local.py) and the in-process Dispatch (jobs/dispatch/local.py) when
there are several processes.

Each process binds a Unix datagram socket in ``<data dir>/notify/`` named after its pid.
Two kinds of message go to every other socket there:

- ``e:<id>``: a prediction ended. Each receiver wakes its own waiters (sync-mode requests,
  ``?wait=N`` long-polls) exactly as an end in its own process would;
- ``w:<backend>:<id>``: new work. The one process that runs the workers takes it at once
  (the others ignore it), instead of waiting for its reconciler to find the row.

Why sockets rather than polling the database: a waiter is answered within a millisecond
of the end, and an idle server does nothing. Datagrams on one machine are not lost in
transit, but a receiver whose queue is full drops new ones (we never block the sender's
event loop); the waiters' periodic re-read and the reconciler cover that case, as they
cover a lost Redis message in the scaled-out mode."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("reelgate.jobs")

# The kinds of message (one letter, then ":"), and who listens for each.
ENDED = "e"
WORK = "w"


class Siblings:
    def __init__(self, folder: Path, name: str | None = None) -> None:
        self.folder = folder
        # Named after the pid: a process that died leaves a socket nobody is bound to,
        # which the next sender removes.
        self.path = folder / f"{name or os.getpid()}.sock"
        self._sock: socket.socket | None = None
        self._out: socket.socket | None = None
        self._handlers: dict[str, Callable[[str], None]] = {}

    def on(self, kind: str, handler: Callable[[str], None]) -> None:
        """Call ``handler`` with the payload of every ``kind`` message a sibling sends."""
        self._handlers[kind] = handler

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous process with our pid
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setblocking(False)
        self._sock = sock
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    async def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._out is not None:
            self._out.close()
            self._out = None

    def broadcast(self, kind: str, payload: str) -> None:
        """Send ``kind:payload`` to every other process; never blocks."""
        if self._out is None:
            return
        data = f"{kind}:{payload}".encode()
        try:
            peers = [p for p in os.scandir(self.folder)
                     if p.name.endswith(".sock") and p.path != str(self.path)]
        except FileNotFoundError:
            return
        for peer in peers:
            try:
                self._out.sendto(data, peer.path)
            except BlockingIOError:
                log.warning("wake-up to %s dropped: its queue is full", peer.name)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    # Nobody is bound there: a process that died without cleaning up.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(peer.path)
                else:
                    log.warning("wake-up to %s failed: %s", peer.name, exc)

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            kind, _, payload = data.decode(errors="replace").partition(":")
            handler = self._handlers.get(kind)
            if handler is None:
                continue
            try:
                handler(payload)
            except Exception:
                log.exception("handling a %r message from a sibling failed", kind)
