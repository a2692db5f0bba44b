"""A real video for the storage tests (the contract suite and the S3 specifics)."""

from __future__ import annotations

from pathlib import Path

from reelgate.backends.base import Job
from reelgate.backends.sandbox.backend import render_sandbox_video


def render_video(path: Path) -> Path:
    """A real sandbox render at ``path``, 720p, 1 s."""
    job = Job(id="s3-storage", model="veo3.1-fast", scene="text-to-video",
              prompt="a lighthouse stored in a bucket", duration=1, resolution="720p")
    render_sandbox_video(job, path, fps=24)
    return path
