"""Backends by name: each backend module registers a factory; wiring, intake and the model
list look names up here instead of testing strings.

A factory takes the settings and a ``resolve`` function (the other backends of the same set,
for a backend made of others, like ``mix``) and returns a Backend, or raises NotConfigured
when the operator has not set it up. Building is cheap and does no I/O: API processes build
backends only to ``check`` and price requests; worker processes also ``start`` them.

The built-in backends register when this module first loads them; more come from modules
named in ``REELGATE_BACKEND_MODULES`` (settings.backend_modules) or from the
``reelgate.backends`` entry-point group, each of which calls ``register`` on import."""

from __future__ import annotations

import importlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from reelgate.backends.base import Backend, Job
from reelgate.errors import ApiError

if TYPE_CHECKING:
    from reelgate.settings import Settings

__all__ = [
    "BackendSet",
    "NotConfigured",
    "all_backends",
    "backend_for",
    "cancellable_backends",
    "build_backends",
    "check_request",
    "concurrency_for",
    "concurrency_of",
    "offered_durations",
    "offered_resolutions",
    "intake_backend",
    "register",
    "registered",
]

log = logging.getLogger("reelgate.backends")

Resolve = Callable[[str], Backend]
Factory = Callable[["Settings", Resolve], Backend]

# Modules whose import registers the built-in backends (none imports an optional extra).
BUILTIN_MODULES = (
    "reelgate.backends.sandbox",
    "reelgate.backends.google",
    "reelgate.backends.v3_upstream",
    "reelgate.backends.local",
    "reelgate.backends.mixed",
)
ENTRY_POINT_GROUP = "reelgate.backends"


class NotConfigured(Exception):
    """The backend is known but not set up on this server; ``message`` tells the operator
    what to set (answered as a 500 to a request routed to it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Factory
    # Built after the others (it is made of them), so ``build_backends`` lists it last.
    composite: bool = False


_REGISTRY: dict[str, _Entry] = {}
_loaded: set[str] = set()


def register(name: str, factory: Factory, *, composite: bool = False) -> None:
    """Make backend ``name`` available; registering a name again replaces its factory."""
    _REGISTRY[name] = _Entry(name, factory, composite)


def _load(settings: Settings | None = None) -> None:
    modules = list(BUILTIN_MODULES)
    if settings is not None:
        modules += settings.backend_modules
    for module in modules:
        if module not in _loaded:
            importlib.import_module(module)
            _loaded.add(module)
    if "entry-points" not in _loaded:
        _loaded.add("entry-points")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def registered(settings: Settings | None = None) -> list[str]:
    """Every registered backend name, built-ins first."""
    _load(settings)
    return list(_REGISTRY)


class BackendSet:
    """The backends of one settings object, built on first use."""

    def __init__(self, settings: Settings) -> None:
        _load(settings)
        self.settings = settings
        self._built: dict[str, Backend] = {}
        self._missing: dict[str, NotConfigured] = {}

    def get(self, name: str) -> Backend:
        """The backend ``name``; NotConfigured when it is not set up (or not registered)."""
        if name in self._built:
            return self._built[name]
        if name in self._missing:
            raise self._missing[name]
        entry = _REGISTRY.get(name)
        if entry is None:
            raise NotConfigured(f"Backend '{name}' is not configured on this server.")
        try:
            backend = entry.factory(self.settings, self.get)
        except NotConfigured as exc:
            self._missing[name] = exc
            raise
        self._built[name] = backend
        return backend

    def configured(self) -> dict[str, Backend]:
        """Every backend that is set up, composites after the backends they are made of."""
        entries = sorted(_REGISTRY.values(), key=lambda e: e.composite)
        out: dict[str, Backend] = {}
        for entry in entries:
            try:
                out[entry.name] = self.get(entry.name)
            except NotConfigured as exc:
                if entry.composite and entry.name in all_backends(self.settings):
                    log.warning("backend %s not built: %s", entry.name, exc.message)
        return out


def all_backends(settings: Settings) -> list[str]:
    """The backends this deployment sends work to (scaled out: one Redis stream each): the
    default, those the routing names, the sandbox, and the local backend when its settings
    name a models file (its models route to it by their path, not by model_backends)."""
    # Imported here: reelgate.backends.local registers itself through this module.
    from reelgate.backends.local.config import load_local_settings

    names = {settings.default_backend, *settings.model_backends.values(), "sandbox"}
    if load_local_settings().models_file:
        names.add("local")
    return sorted(names)


def build_backends(settings: Settings) -> dict[str, Backend]:
    """The backends a worker process runs: every registered one that is configured."""
    return BackendSet(settings).configured()


# The API side's backends, one set per settings object (used for check and price only; a
# test that builds new settings gets new backends).
# Keyed by id(): settings objects are not hashable; the entry goes when they do.
_intake_sets: dict[int, BackendSet] = {}


def intake_backend(name: str, settings: Settings) -> Backend:
    """Backend ``name`` built (never started) for intake, the model list and prices."""
    backends = _intake_sets.get(id(settings))
    if backends is None or backends.settings is not settings:
        backends = _intake_sets[id(settings)] = BackendSet(settings)
        weakref.finalize(settings, _intake_sets.pop, id(settings), None)
    return backends.get(name)


def backend_for(model: str, settings: Settings) -> str:
    """The backend a new prediction for ``model`` is routed to."""
    from reelgate import catalog

    if model in catalog.LOCAL_MODELS or model in catalog.LOCAL_ALIASES:
        return "local"
    return settings.model_backends.get(model, settings.default_backend)


def check_request(backend: str, job: Job, settings: Settings) -> None:
    """Refuse, with InvalidInput, what the chosen backend cannot do: called at intake, before
    anything is stored or spent. A backend that is not set up answers 500 (the operator's
    routing names it); a name no module registered is left to the worker, which fails the
    prediction uncharged."""
    _load(settings)
    if backend not in _REGISTRY:
        return
    try:
        instance = intake_backend(backend, settings)
    except NotConfigured as exc:
        raise ApiError(500, exc.message) from None
    instance.check(job)


def cancellable_backends(settings: Settings) -> tuple[str, ...]:
    """The configured backends that stop a running job when the user cancels it (they
    declare ``progress`` for some model): a cancel request reaches their running rows."""
    from reelgate import catalog

    models = [*catalog.MODELS, *catalog.LOCAL_MODELS]
    names = []
    for name in registered(settings):
        try:
            backend = intake_backend(name, settings)
        except NotConfigured:
            continue
        if any(backend.capabilities(m).progress for m in models):
            names.append(name)
    return tuple(names)


def concurrency_of(name: str, settings: Settings) -> int:
    """Jobs of the backend called ``name`` one worker process runs at once: the operator's
    number for it, else what the backend declares; 1 for a backend not set up here."""
    if name in settings.backend_concurrency:
        return max(1, settings.backend_concurrency[name])
    try:
        return concurrency_for(intake_backend(name, settings), settings)
    except NotConfigured:
        return 1


def concurrency_for(backend: Backend, settings: Settings) -> int:
    """Jobs of ``backend`` one worker process runs at once: the operator's number for it
    (REELGATE_BACKEND_CONCURRENCY), else what the backend declares."""
    return max(1, settings.backend_concurrency.get(backend.name, backend.concurrency))


def offered_resolutions(model: str, backend: str, settings: Settings) -> list[str]:
    """The catalog's resolutions that ``backend`` can deliver for ``model``, in the
    catalog's order; every resolution when the backend is not set up here."""
    from reelgate import catalog

    try:
        offered = intake_backend(backend, settings).capabilities(model).resolutions
    except NotConfigured:
        return list(catalog.RESOLUTIONS)
    return [r for r in catalog.RESOLUTIONS if r in offered]


def offered_durations(model: str, backend: str, settings: Settings) -> list[int]:
    """The durations ``backend`` makes for ``model`` (a local model's own rules, else
    Veo's); the catalog's when the backend is not set up here."""
    from reelgate import catalog

    try:
        return list(intake_backend(backend, settings).capabilities(model).durations)
    except NotConfigured:
        return list(catalog.DURATIONS)
