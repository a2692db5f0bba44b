"""Wake-ups between the API processes of one embedded server (``reelgate serve --workers
N`` on SQLite), which has no Redis to carry them.

Each process binds a Unix datagram socket in ``<data dir>/notify/`` named after its pid.
Two messages go to every other socket there:

- ``e:<id>``: a prediction ended. Each receiver wakes its own waiters (sync-mode requests,
  ``?wait=N`` long-polls) exactly as an end in its own process would;
- ``w:<id>``: new work. The one process that runs the workers dispatches it at once
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
from collections.abc import Awaitable, Callable
from pathlib import Path

from reelgate.jobs.notify import LocalNotifier

log = logging.getLogger("reelgate.jobs")


class SocketNotifier(LocalNotifier):
    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.path = folder / f"{os.getpid()}.sock"
        self._sock: socket.socket | None = None
        self._out: socket.socket | None = None
        # Set in the process that runs the workers: called with each announced new id.
        self.on_work: Callable[[str], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

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

    async def publish(self, prediction_id: str) -> None:
        await super().publish(prediction_id)
        self._broadcast(f"e:{prediction_id}")

    async def announce_work(self, prediction_id: str) -> None:
        self._broadcast(f"w:{prediction_id}")

    def _broadcast(self, message: str) -> None:
        if self._out is None:
            return
        data = message.encode()
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
            kind, _, prediction_id = data.decode(errors="replace").partition(":")
            if kind == "e":
                # Wake our waiters (and listeners) as a local end would; not re-broadcast.
                self._spawn(LocalNotifier.publish(self, prediction_id))
            elif kind == "w" and self.on_work is not None:
                self._spawn(self.on_work(prediction_id))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
