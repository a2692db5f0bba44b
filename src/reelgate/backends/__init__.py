"""Backends turn a job into a video. Which backend serves a model is the operator's choice.

``base`` is the port (the Backend protocol, Job, Capabilities), ``registry`` finds backends
by name. Each backend is a module or a folder that registers itself: ``sandbox``,
``google/`` (the template for a backend folder), ``v3_upstream``, ``local/``, ``mixed``."""

from __future__ import annotations

from reelgate.backends.base import Backend, BackendError, Cancelled, Capabilities, Inputs, Job
from reelgate.backends.registry import (
    NotConfigured,
    backend_for,
    build_backends,
    check_request,
    intake_backend,
    register,
)

__all__ = [
    "Backend",
    "BackendError",
    "Cancelled",
    "Capabilities",
    "Inputs",
    "Job",
    "NotConfigured",
    "backend_for",
    "build_backends",
    "check_request",
    "intake_backend",
    "register",
]
