"""The lifecycle of one prediction on a worker: claim the row, call its backend, check and
store the video, end the row, tell whoever waits.

Every step starts from the row. A prediction that was already ended, or that another worker
holds a live lease on, is left alone, so a duplicated dispatch costs nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from reelgate import metrics
from reelgate.backends.base import Backend, BackendError, Cancelled, Inputs, Job
from reelgate.jobs.notify import Notifier
from reelgate.logs import prediction_id_var
from reelgate.media.storage import Storage
from reelgate.media.video import InvalidVideo, check_video, poster_frame
from reelgate.settings import Settings
from reelgate.store.repo import Prediction, Store

log = logging.getLogger("reelgate.jobs")

# A prediction whose worker died this many times is failed instead of retried forever
# (a request that crashes the worker every time must not take the service down with it).
MAX_ATTEMPTS = 3

class LeaseLost(BackendError):
    """Another worker took the row over: stop, and never try again here."""


class GenerateTimeout(Exception):
    """``generate`` ran past its backend's ``timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


TIMEOUT_FAILURE = (
    "The video was not generated within this server's time limit for its backend ({:g} s). "
    "You were not charged; please try again."
)

INTERNAL_FAILURE = (
    "The video could not be generated because of an internal error. You were not charged; "
    "please try again."
)


UNCONFIRMED_FAILURE = (
    "An earlier attempt to start this video upstream was interrupted before the upstream's "
    "answer was recorded, and this server is set never to start a video twice; so it was "
    "not started again. You were not charged; please try again."
)


async def read_input(pred: Prediction, ref: str, storage: Storage, data_dir: Path) -> bytes:
    """One stored input image of ``pred``: from the storage (where intake puts them), or, for
    rows accepted before inputs went through the storage, from the data dir."""
    if pred.inputs.get("storage"):
        return await storage.get_bytes(ref)
    return await asyncio.to_thread((data_dir / ref).read_bytes)


async def load_inputs(pred: Prediction, storage: Storage, data_dir: Path) -> Inputs:
    """The prediction's input images: from the storage (where intake put them), or, for
    rows accepted before inputs went through the storage, from the data dir."""

    async def read(ref: str | None) -> bytes | None:
        return await read_input(pred, ref, storage, data_dir) if ref else None

    images = [await read(r) for r in pred.inputs.get("images", [])]
    return Inputs(
        image=await read(pred.inputs.get("image")),
        last_image=await read(pred.inputs.get("last_image")),
        images=tuple(data for data in images if data is not None),
    )


def job_from_row(
    pred: Prediction, inputs: Inputs, checkpoint: Callable[[str], Awaitable[None]],
    intend: Callable[[str | None], Awaitable[None]] | None = None,
    on_unconfirmed: str = "resubmit",
    report_progress: Callable[[int, int], Awaitable[bool]] | None = None,
) -> Job:
    """The job intake stored on the row (``Job.to_params``), with the run's inputs, handle
    and callbacks."""
    run: dict[str, Any] = {"inputs": inputs, "upstream_ref": pred.upstream_ref,
                           "checkpoint": checkpoint, "on_unconfirmed": on_unconfirmed}
    if intend is not None:
        run["intend"] = intend
    if report_progress is not None:
        run["report_progress"] = report_progress
    return Job.from_params(pred.id, pred.model, pred.scene, pred.params, **run)


def output_key(prediction_id: str) -> str:
    return f"{prediction_id[:2]}/{prediction_id}.mp4"


def poster_key(prediction_id: str) -> str:
    return f"{prediction_id[:2]}/{prediction_id}.jpg"


class Runner:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        storage: Storage,
        backends: dict[str, Backend],
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.backends = backends
        self.notifier = notifier

    async def run(self, prediction_id: str, owner: str) -> None:
        prediction_id_var.set(prediction_id)  # every log line of this task names it
        ttl = self.settings.lease_ttl_s
        pred = await self.store.claim(prediction_id, owner, ttl)
        if pred is None:
            return  # ended already, or another worker holds it
        if pred.attempts > MAX_ATTEMPTS:
            log.error("prediction %s gave up after %d attempts", pred.id, pred.attempts - 1)
            await self.store.fail(pred.id, owner, INTERNAL_FAILURE)
            await self._publish(pred.id)
            return
        log.info("prediction %s processing on %s (attempt %d)", pred.id, pred.backend,
                 pred.attempts)
        if pred.submit_intent is not None and pred.upstream_ref is None:
            # A predecessor recorded a submission and died before recording its answer:
            # the upstream may be running (and billing) an operation nobody will collect.
            policy = self.settings.on_unconfirmed_submission(pred.backend)
            metrics.UNCONFIRMED_SUBMISSIONS.labels(pred.backend, policy).inc()
            if policy == "fail":
                log.warning("prediction %s: unconfirmed submission %s; failing it (at most "
                            "once)", pred.id, pred.submit_intent)
                if await self.store.fail(pred.id, owner, UNCONFIRMED_FAILURE):
                    metrics.PREDICTIONS_ENDED.labels("failed", pred.backend).inc()
                await self._publish(pred.id)
                return
            log.warning("prediction %s: unconfirmed submission %s; submitting again (at "
                        "least once)", pred.id, pred.submit_intent)
        # The lease is renewed by the worker pool for all its rows at once (renew_leases).
        try:
            await self._generate(pred, owner)
        except asyncio.CancelledError:
            # Shutting down: hand the row back so the next worker starts it at once.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release_lease(pred.id, owner))
            raise
        await self._publish(pred.id)

    async def _publish(self, prediction_id: str) -> None:
        # The row is the truth and has ended; a lost wake-up (Redis down) only makes a
        # sync-mode waiter find the end on its next re-read.
        try:
            await self.notifier.publish(prediction_id)
        except Exception as exc:
            log.warning("prediction %s: end not announced (%s)", prediction_id,
                        type(exc).__name__)

    async def _generate(self, pred: Prediction, owner: str) -> None:
        backend = self.backends.get(pred.backend)
        if backend is None:
            await self.store.fail(pred.id, owner, f"Backend '{pred.backend}' is not configured "
                                  "on this server.")
            return

        handles: list[str] = [pred.upstream_ref] if pred.upstream_ref else []

        async def checkpoint(ref: str) -> None:
            handles.append(ref)
            if not await self.store.set_upstream_ref(pred.id, owner, ref):
                # Our lease was taken over: stop before waiting on work another worker owns.
                raise LeaseLost("lease lost", retryable=True)

        async def intend(intent: str | None) -> None:
            ok = (await self.store.set_submit_intent(pred.id, owner, intent) if intent
                  else await self.store.clear_submit_intent(pred.id, owner))
            if intent and not ok:
                raise LeaseLost("lease lost", retryable=True)

        async def report_progress(step: int, steps: int) -> bool:
            metrics.GENERATION_PROGRESS.labels(pred.backend, pred.model).set(
                step / max(1, steps))
            cancel = await self.store.set_progress(pred.id, owner,
                                                   {"step": step, "steps": steps})
            if cancel is None:
                raise LeaseLost("lease lost", retryable=True)
            return cancel

        tmp_root = self.settings.data_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        workdir = ""
        try:
            # File work off the event loop (reading inputs, removing the work directory):
            # on a busy disk it stalled every request this process was answering.
            workdir = await asyncio.to_thread(tempfile.mkdtemp, dir=tmp_root)
            # Inputs come through the storage layer (local or S3), not this machine's disk.
            inputs = await load_inputs(pred, self.storage, self.settings.data_dir)
            job = job_from_row(pred, inputs, checkpoint, intend,
                               self.settings.on_unconfirmed_submission(pred.backend),
                               report_progress)
            started = time.perf_counter()
            video = await self._call(backend, job, Path(workdir), handles)
            metrics.BACKEND_LATENCY.labels(pred.backend).observe(
                time.perf_counter() - started
            )
            info = await asyncio.to_thread(check_video, video)
            key = output_key(pred.id)
            await self.storage.put_file(key, video)
            poster = await self._store_poster(pred.id, video, Path(workdir))
        except Cancelled as exc:
            log.info("prediction %s cancelled: %s", pred.id, exc.message)
            if await self.store.cancel_running(pred.id, owner, exc.message):
                metrics.PREDICTIONS_ENDED.labels("cancelled", pred.backend).inc()
            return
        except GenerateTimeout:
            # The backend's own bound (Backend.timeout): a hung generate ends the row,
            # uncharged, instead of holding a worker slot and the lease forever.
            log.warning("prediction %s: %s backend timed out after %s s", pred.id,
                        pred.backend, backend.timeout)
            metrics.UPSTREAM_ERRORS.labels(pred.backend, "timeout").inc()
            if await self.store.fail(pred.id, owner,
                                     TIMEOUT_FAILURE.format(backend.timeout or 0)):
                metrics.PREDICTIONS_ENDED.labels("failed", pred.backend).inc()
            return
        except BackendError as exc:
            log.info("prediction %s failed: %s", pred.id, exc.message)
            kind = "blocked" if exc.nsfw else ("retryable" if exc.retryable else "failed")
            metrics.UPSTREAM_ERRORS.labels(pred.backend, kind).inc()
            if await self.store.fail(pred.id, owner, exc.message, nsfw=exc.nsfw):
                metrics.PREDICTIONS_ENDED.labels("failed", pred.backend).inc()
            return
        except InvalidVideo as exc:
            log.error("prediction %s: backend produced an invalid video: %s", pred.id, exc)
            await self.store.fail(pred.id, owner, "The backend returned a video that could not "
                                  "be decoded. You were not charged; please try again.")
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("prediction %s: internal error", pred.id)
            await self.store.fail(pred.id, owner, INTERNAL_FAILURE)
            return
        finally:
            if workdir:
                await asyncio.to_thread(shutil.rmtree, workdir, True)
        if await self.store.complete(pred.id, owner, [key], poster):
            metrics.PREDICTIONS_ENDED.labels("completed", pred.backend).inc()
            log.info("prediction %s completed: %dx%d %.2fs %s", pred.id, info.width,
                     info.height, info.duration_s, info.video_codec)
        else:
            log.warning("prediction %s: lease lost before completion", pred.id)


    @staticmethod
    async def _call(backend: Backend, job: Job, workdir: Path, handles: list[str]) -> Path:
        """``generate`` within the backend's timeout, tried again in place (up to its
        ``retries``) after a retryable BackendError raised before any upstream handle was
        written: nothing was started upstream, so another try cannot pay twice."""
        timeout = getattr(backend, "timeout", None)
        retries = max(0, int(getattr(backend, "retries", 0) or 0))
        attempt = 0
        while True:
            bound = asyncio.timeout(timeout or None)
            try:
                async with bound:
                    return await backend.generate(job, workdir)
            except TimeoutError:
                # Ours only when our bound expired; a backend's own TimeoutError is an error.
                if bound.expired():
                    raise GenerateTimeout(timeout or 0) from None
                raise
            except BackendError as exc:
                if not exc.retryable or handles or attempt >= retries \
                        or isinstance(exc, LeaseLost):
                    raise
                attempt += 1
                log.info("prediction %s: retryable failure (%s); trying again (%d of %d)",
                         job.id, exc.message, attempt, retries)

    async def _store_poster(self, prediction_id: str, video: Path, workdir: Path) -> str | None:
        """Take a still from the video and store it beside it (the console's thumbnail).
        A picture is a nicety: failing to make one never fails the prediction."""
        try:
            still = await asyncio.to_thread(poster_frame, video, workdir / "poster.jpg")
            key = poster_key(prediction_id)
            await self.storage.put_file(key, still)
            return key
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("prediction %s: no poster frame", prediction_id, exc_info=True)
            return None
