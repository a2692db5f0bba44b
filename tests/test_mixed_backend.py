"""The ``mix`` backend's routing rules, with scripted member backends (in process, fast):
priority first; failover only for a retryable failure before anything was submitted; a
stored handle pins the prediction to its member across a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reelgate.backends.base import BackendError, Job
from reelgate.backends.mixed import MixedBackend, MixMember, MixSettings


class Scripted:
    """A member that does what it is told: fail (before or after a checkpoint) or make a
    file; it records the jobs it got."""

    def __init__(self, name: str, *, fail: str | None = None, checkpoint: bool = False):
        self.name = name
        self.fail = fail  # None, "retryable", "final"
        self.checkpoint = checkpoint
        self.jobs: list[Job] = []

    async def generate(self, job: Job, workdir: Path) -> Path:
        self.jobs.append(job)
        if self.checkpoint and not job.upstream_ref:
            await job.checkpoint(f"{self.name}-op-1")
        if self.fail:
            raise BackendError(f"{self.name} failed", retryable=self.fail == "retryable")
        out = workdir / f"{self.name}.mp4"
        out.write_bytes(b"video")
        return out


def mix(*members: tuple[Scripted, int], **kw: float) -> MixedBackend:
    settings = MixSettings(members=[MixMember(name=m.name, priority=p) for m, p in members],
                           acquire_timeout_s=0.1, **kw)
    return MixedBackend(settings, {m.name: m for m, _ in members})


def job(stored: list[str], upstream_ref: str | None = None) -> Job:
    async def checkpoint(ref: str) -> None:
        stored.append(ref)

    return Job(id="p1", model="veo3.1", scene="text-to-video", prompt="x",
               upstream_ref=upstream_ref, checkpoint=checkpoint)


async def test_priority_then_failover_on_retryable(tmp_path: Path) -> None:
    first, second = Scripted("google", fail="retryable"), Scripted("v3", checkpoint=True)
    backend = mix((second, 1), (first, 0))
    stored: list[str] = []
    out = await backend.generate(job(stored), tmp_path)
    assert out.name == "v3.mp4"
    assert len(first.jobs) == 1 and len(second.jobs) == 1  # google asked first
    assert [json.loads(s) for s in stored] == [{"member": "v3", "ref": "v3-op-1"}]
    status = {r["name"]: r for r in backend.pool.snapshot()}
    assert status["google"]["health"] == "cooling" and status["v3"]["completed"] == 1


async def test_no_failover_after_a_submission_or_a_final_error(tmp_path: Path) -> None:
    submitted = Scripted("google", fail="retryable", checkpoint=True)
    other = Scripted("v3")
    with pytest.raises(BackendError, match="google failed"):
        await mix((submitted, 0), (other, 1)).generate(job([]), tmp_path)
    assert other.jobs == []  # it may be running at Google: never made twice
    final = Scripted("google", fail="final")
    with pytest.raises(BackendError, match="google failed"):
        await mix((final, 0), (other, 1)).generate(job([]), tmp_path)
    assert other.jobs == []


async def test_a_stored_handle_resumes_on_its_member(tmp_path: Path) -> None:
    google, v3 = Scripted("google"), Scripted("v3")
    backend = mix((google, 0), (v3, 1))
    ref = json.dumps({"member": "v3", "ref": "v3-op-7"})
    out = await backend.generate(job([], upstream_ref=ref), tmp_path)
    assert out.name == "v3.mp4" and google.jobs == []
    assert v3.jobs[0].upstream_ref == "v3-op-7"
    gone = json.dumps({"member": "local", "ref": "x"})
    with pytest.raises(BackendError, match="no longer a member"):
        await backend.generate(job([], upstream_ref=gone), tmp_path)


async def test_every_member_busy_fails_retryable(tmp_path: Path) -> None:
    a, b = Scripted("google", fail="retryable"), Scripted("v3", fail="retryable")
    with pytest.raises(BackendError) as exc:
        await mix((a, 0), (b, 0)).generate(job([]), tmp_path)
    assert exc.value.retryable and len(a.jobs) == 1 and len(b.jobs) == 1
