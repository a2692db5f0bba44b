"""The web console's user pages: sign in, playground, history, a prediction, the account.

Server-rendered with Jinja2; htmx (vendored in static/) swaps fragments for the live parts
(price, status, the fields of a model and scene). Everything a page does goes through the
same code as the v3 API: intake.accept for a new prediction (validation, policy, price,
hold), the upload flow for images, the store's queries for lists and money."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from reelgate import catalog, intake
from reelgate.accounts.prices import PriceTable, quote
from reelgate.backends import backend_for
from reelgate.errors import ApiError, InvalidInput
from reelgate.jobs.runner import read_input
from reelgate.media.storage import StorageKeyMissing
from reelgate.money import MICROS
from reelgate.policy import ContentBlocked
from reelgate.requests import validate_create
from reelgate.services import Services
from reelgate.store.admin import AdminStore
from reelgate.store.console import ConsoleStore
from reelgate.store.repo import KeyRecord, Prediction, hash_key
from reelgate.store.tables import CANCELLED, COMPLETED, ENDED, FAILED, UNFINISHED, utcnow

from . import charts
from . import session as sess

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))

router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZE = 20
STATUSES = (*UNFINISHED, *ENDED)
# How long a status request waits for the prediction to end before answering as it is:
# the page asks again at once, so the video shows the moment it is stored.
STATUS_WAIT_S = 2.0


def money(micros: int | str | None) -> str:
    """Micro-units (or an exact decimal string from the store) as the operator's currency,
    with at least two decimals."""
    if isinstance(micros, str):
        d = Decimal(micros)
    else:
        d = Decimal(int(micros or 0)) / MICROS
    text = f"{d:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


templates.env.filters["money"] = money
templates.env.filters["when"] = (
    lambda dt: dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "–"
)
templates.env.globals["catalog"] = catalog


# --- who is asking -----------------------------------------------------------------------


@dataclass
class Viewer:
    session: sess.Session
    key: KeyRecord | None = None
    admin: bool = False
    account_name: str = ""

    @property
    def csrf(self) -> str:
        return self.session.csrf


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    services = services_of(request)
    return services.settings.public_base_url.rstrip("/") or str(request.base_url).rstrip("/")


def _public_origin(request: Request) -> str:
    public = services_of(request).settings.public_base_url
    if not public:
        return ""
    parts = urlsplit(public)
    return f"{parts.scheme}://{parts.netloc}"


async def viewer(request: Request, role: str | None = "user") -> Viewer:
    """The signed-in person, re-checked on every request (a revoked key, a disabled
    account or a changed admin token ends the session). Raises Redirect to the sign-in
    page when there is none, or the wrong kind for this page."""
    services = services_of(request)
    signing_key = services.settings.signing_key
    session = sess.load(request, signing_key)
    request.state.console_session = session
    if request.method not in ("GET", "HEAD"):
        # A cross-site post is refused as such before anything else (the cookie would not
        # even come with it); the token itself is checked with the form.
        sess.check_origin(request, _public_origin(request))
    v = Viewer(session=session)
    if session.role == "user" and session.key_hash:
        key = await ConsoleStore(services.store).key_by_hash(session.key_hash)
        if key is not None and not key.account_disabled:
            v.key = key
            v.account_name = await ConsoleStore(services.store).account_name(key.account_id)
    elif session.role == "admin" and session.admin_digest and services.settings.admin_token:
        expected = sess.admin_digest(services.settings.admin_token, signing_key)
        v.admin = hmac.compare_digest(expected, session.admin_digest)
    if role == "user" and v.key is None:
        raise Redirect("/console/admin" if v.admin else "/console/login")
    if role == "admin" and not v.admin:
        raise Redirect("/console/login")
    return v


async def form_with_csrf(request: Request, v: Viewer) -> FormData:
    form = await request.form()
    token = form.get(sess.CSRF_FIELD)
    sess.check_csrf(request, v.session, token if isinstance(token, str) else None,
                    _public_origin(request))
    return form


def page(request: Request, name: str, v: Viewer | None, status_code: int = 200,
         **context: Any) -> HTMLResponse:
    session = v.session if v else getattr(request.state, "console_session", None)
    response = templates.TemplateResponse(
        request, name, {"v": v, "csrf": session.csrf if session else "", **context},
        status_code=status_code,
    )
    if session is not None and session.changed:
        _save(request, response, session)
    return response


def _save(request: Request, response: Response, session: sess.Session) -> None:
    settings = services_of(request).settings
    secure = request.url.scheme == "https" or settings.public_base_url.startswith("https")
    sess.save(response, session, settings.signing_key, secure=secure)


def install(app: Any) -> None:
    """Mount the console on the API's app: routes, static files, and the two console-only
    exceptions turned into pages."""
    from fastapi.staticfiles import StaticFiles

    from reelgate.console import admin

    app.include_router(router)
    app.include_router(admin.router)
    app.mount("/console/static", StaticFiles(directory=str(STATIC_DIR)), name="console-static")

    @app.exception_handler(Redirect)
    async def _redirect(request: Request, exc: Redirect) -> Response:
        if request.headers.get("hx-request"):
            # htmx follows this header with a full page load (a fragment cannot hold a page).
            return Response(status_code=200, headers={"HX-Redirect": exc.url})
        return RedirectResponse(exc.url, status_code=303)

    @app.exception_handler(NotFoundPage)
    async def _not_found(request: Request, exc: NotFoundPage) -> Response:
        return HTMLResponse("Not found", status_code=404)

    @app.exception_handler(sess.CsrfRefused)
    async def _csrf(request: Request, exc: sess.CsrfRefused) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Refused</title><h1>Request refused</h1><p>This form was "
            "not sent from a page of this console (cross-site request), or the page is too "
            f"old. Reload the page and try again.</p><!-- {exc} -->",
            status_code=403,
        )


# --- sign in and out ----------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    v = await viewer(request, role=None)
    if v.admin:
        return RedirectResponse("/console/admin", status_code=303)
    if v.key:
        return RedirectResponse("/console/playground", status_code=303)
    return RedirectResponse("/console/login", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    v = await viewer(request, role=None)
    return page(request, "login.html", v, admin_enabled=bool(
        services_of(request).settings.admin_token))


# Failed sign-ins allowed per client address and minute: a guessed admin token or key has to
# get through this (successful sign-ins are not counted).
LOGIN_FAILURES_PER_MINUTE = 10


class LoginGuard:
    """Counts failed sign-ins per client address with the `limits` library, in the same
    storage as the API's rate limits (memory, or Redis shared by every API process)."""

    def __init__(self, storage_url: str) -> None:
        from limits import RateLimitItemPerMinute
        from limits.aio.strategies import MovingWindowRateLimiter
        from limits.storage import storage_from_string

        url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
        self.item = RateLimitItemPerMinute(LOGIN_FAILURES_PER_MINUTE)
        self.limiter = MovingWindowRateLimiter(storage_from_string(url))  # type: ignore[arg-type]

    async def locked(self, client: str) -> bool:
        return not await self.limiter.test(self.item, "console-login", client)

    async def failed(self, client: str) -> None:
        await self.limiter.hit(self.item, "console-login", client)


def login_guard(request: Request) -> LoginGuard:
    guard = getattr(request.app.state, "console_login_guard", None)
    if guard is None:
        guard = LoginGuard(services_of(request).settings.rate_limit_storage_url)
        request.app.state.console_login_guard = guard
    return guard


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    services = services_of(request)
    v = await viewer(request, role=None)
    form = await form_with_csrf(request, v)
    guard = login_guard(request)
    client = request.client.host if request.client else "unknown"
    if await guard.locked(client):
        return page(request, "login.html", v, status_code=429,
                    error="Too many failed sign-ins from this address: wait a minute.")
    secret = str(form.get("key") or "").strip()
    settings = services.settings
    new: sess.Session | None = None
    if settings.admin_token and hmac.compare_digest(secret.encode(),
                                                     settings.admin_token.encode()):
        new = sess.fresh("admin", admin_digest=sess.admin_digest(secret, settings.signing_key))
        target = "/console/admin"
    elif secret:
        key = await services.store.authenticate(secret)
        if key is not None and not key.account_disabled:
            new = sess.fresh("user", key_hash=hash_key(secret))
            target = "/console/playground"
        elif key is not None:
            return page(request, "login.html", v, status_code=403,
                        error="This account is disabled; contact the operator.")
    if new is None:
        await guard.failed(client)
        return page(request, "login.html", v, status_code=401,
                    error="That key is not valid: check it, or ask the operator for one.")
    response = RedirectResponse(target, status_code=303)
    _save(request, response, new)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    v = await viewer(request, role=None)
    await form_with_csrf(request, v)
    response = RedirectResponse("/console/login", status_code=303)
    _save(request, response, sess.fresh())
    return response


# --- the playground -----------------------------------------------------------------------


def field_spec(model: str, scene: str, request: Request, key: KeyRecord) -> dict[str, Any]:
    """Which models this key may use, and which fields and values this model and scene take
    (from the catalog, and for Google-served models what the mapped Google model can make)."""
    settings = services_of(request).settings
    m = catalog.MODELS[model]
    from reelgate.backends.registry import offered_resolutions

    backend = backend_for(model, settings)
    resolutions = offered_resolutions(model, backend, settings) or list(catalog.RESOLUTIONS)
    durations = list(catalog.DURATIONS)
    if scene == "reference-to-video":
        durations = [catalog.FULL_LENGTH_S]
    return {
        "models": [mm for mm in catalog.MODELS.values()
                   if key.allowed_models is None or mm.name in key.allowed_models],
        "model": m,
        "scene": scene,
        "backend": backend,
        "image": scene == "image-to-video",
        "last_image": scene == "image-to-video",
        "images": scene == "reference-to-video",
        "max_images": catalog.MAX_REFERENCE_IMAGES,
        "aspect_ratios": list(catalog.ASPECT_RATIOS),
        "resolutions": resolutions,
        "durations": durations,
        "full_length_only": sorted(catalog.FULL_LENGTH_ONLY_RESOLUTIONS),
        "defaults": catalog.DEFAULTS,
    }


def _model_scene(model: str | None, scene: str | None,
                 key: KeyRecord | None = None) -> tuple[str, str]:
    allowed = [m for m in catalog.MODELS
               if key is None or key.allowed_models is None or m in key.allowed_models]
    default = "veo3.1-fast" if "veo3.1-fast" in allowed else (allowed or ["veo3.1-fast"])[0]
    model = model if model in catalog.MODELS else default
    m = catalog.MODELS[model]
    scene = scene if scene in m.scenes else m.scenes[0]
    return model, scene


BOOL_FIELDS = ("enhance_prompt", "enable_upsample", "generate_audio")


def body_from_form(form: FormData) -> dict[str, Any]:
    """The create body the v3 API would get, from the playground's form. Values are passed
    as typed where the form's type is clear, and otherwise as given, so validation (the
    API's own) names the field that is wrong."""
    body: dict[str, Any] = {}
    for name in ("prompt", "negative_prompt", "image", "last_image", "aspect_ratio",
                 "resolution"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            body[name] = value
    images = [v for v in form.getlist("images") if isinstance(v, str) and v.strip()]
    if images:
        body["images"] = images
    for name in ("duration", "seed"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            body[name] = int(value) if value.strip().lstrip("-").isdigit() else value
    for name in BOOL_FIELDS:
        # A checkbox that is not ticked is not sent; "present" marks that the form had it.
        if form.get(f"{name}__present"):
            body[name] = form.get(name) == "on"
    body.setdefault("prompt", "")
    return body


@router.get("/playground", response_class=HTMLResponse)
async def playground(request: Request, model: str | None = None, scene: str | None = None,
                     again: str | None = None) -> Response:
    v = await viewer(request)
    services = services_of(request)
    values: dict[str, Any] = {}
    if again:
        # "Run again with these settings": the earlier prediction's fields, and its input
        # images uploaded again (the stored inputs are this account's own files).
        assert v.key is not None
        pred = await services.store.get(again, account_id=v.key.account_id)
        if pred is not None:
            model, scene = pred.model, pred.scene
            values = {k: val for k, val in pred.params.items() if val is not None}
            values.update(await _reupload_inputs(request, v.key, pred))
    assert v.key is not None
    model, scene = _model_scene(model, scene, v.key)
    return page(request, "playground.html", v, spec=field_spec(model, scene, request, v.key),
                values=values, nav="playground")


async def _reupload_inputs(request: Request, key: KeyRecord, pred: Prediction) -> dict[str, Any]:
    services = services_of(request)
    out: dict[str, Any] = {}

    async def upload(rel: str) -> str | None:
        data = await _input_bytes(services, pred, rel)
        if data is None:
            return None
        with contextlib.suppress(ApiError):
            record = await services.uploads.create_ready(key.account_id, Path(rel).name,
                                                         _image_type(data), data)
            return str(services.uploads.download_url(record["id"], record["filename"],
                                                     record["expires_at"], base_url(request)))
        return None

    for field in ("image", "last_image"):
        if pred.inputs.get(field):
            url = await upload(pred.inputs[field])
            if url:
                out[field] = url
    refs = [u for u in [await upload(r) for r in pred.inputs.get("images", [])] if u]
    if refs:
        out["images"] = refs
    return out


@router.get("/playground/fields", response_class=HTMLResponse)
async def playground_fields(request: Request, model: str | None = None,
                            scene: str | None = None) -> Response:
    v = await viewer(request)
    assert v.key is not None
    model, scene = _model_scene(model, scene, v.key)
    return page(request, "_fields.html", v, spec=field_spec(model, scene, request, v.key),
                values={})


def _preview_body(body: dict[str, Any], scene: str) -> dict[str, Any]:
    """The body with stand-ins for what the price does not depend on and the user may not
    have given yet (prompt, images), so the preview shows real rule breaks only."""
    preview = dict(body)
    if not str(preview.get("prompt", "")).strip():
        preview["prompt"] = "preview"
    if scene == "image-to-video" and not preview.get("image"):
        preview["image"] = "data:,"
    if scene == "reference-to-video" and not preview.get("images"):
        preview["images"] = ["data:,"]
    return preview


@router.post("/playground/price", response_class=HTMLResponse)
async def playground_price(request: Request) -> Response:
    v = await viewer(request)
    form = await form_with_csrf(request, v)
    model, scene = _model_scene(str(form.get("model")), str(form.get("scene")))
    settings = services_of(request).settings
    try:
        req = validate_create(model, scene, _preview_body(body_from_form(form), scene))
    except InvalidInput as exc:
        return page(request, "_price.html", v, error=exc.message)
    backend = backend_for(model, settings)
    price = quote(req.job, backend, settings)
    per_second = PriceTable.from_settings(settings).per_second(
        model, req.output_resolution, req.generate_audio)
    return page(request, "_price.html", v, price=price, backend=backend, req=req,
                free=backend in settings.free_backends, per_second=per_second)


async def _rate_limit(request: Request, key: KeyRecord) -> None:
    """The same per-key limit as the API: the console is one more client of the key."""
    services = services_of(request)
    per_minute = key.rate_per_minute or services.settings.rate_per_minute
    state = await services.limiter.hit(key.id, per_minute)
    if not state.allowed:
        wait = max(1, int(state.reset_at - time.time()) + 1)
        raise ApiError(429, f"Too many requests: this key may make {per_minute} requests "
                       f"per minute. Try again in {wait} s.")


@router.post("/playground", response_class=HTMLResponse)
async def playground_submit(request: Request) -> Response:
    v = await viewer(request)
    assert v.key is not None
    form = await form_with_csrf(request, v)
    services = services_of(request)
    model, scene = _model_scene(str(form.get("model")), str(form.get("scene")))
    body = body_from_form(form)
    try:
        await _rate_limit(request, v.key)
        pred, _ = await intake.accept(services, v.key, model, scene, body,
                                      base_url=base_url(request))
    except ApiError as exc:
        return page(request, "_submit_error.html", v, status_code=200,
                    **_explain(exc), fields=list(body) + ["image", "images", "last_image"])
    return page(request, "_status.html", v, **await _status_context(request, pred))


def _explain(exc: ApiError) -> dict[str, Any]:
    """An API error in plain words, and the field it is about (for the message beside it)."""
    if isinstance(exc, InvalidInput):
        field = exc.field.split("[")[0].split(".")[0]
        return {"field": field, "message": exc.rule, "title": "Please fix this field"}
    if isinstance(exc, ContentBlocked):
        return {"field": exc.field, "message": exc.message,
                "title": "Blocked by the content policy"}
    if exc.status == 429:
        return {"field": None, "message": exc.message, "title": "Slow down"}
    if exc.status == 403 and "balance" in exc.message.lower():
        return {"field": None, "message": exc.message + ". Ask the operator for credit.",
                "title": "Not enough balance"}
    return {"field": None, "message": exc.message, "title": "The request was refused"}


@router.post("/upload")
async def upload(request: Request) -> Response:
    """An image for the playground, through the API's upload flow (same checks, quota and
    expiry); answers the link the create body takes."""
    v = await viewer(request)
    assert v.key is not None
    services = services_of(request)
    sess.check_csrf(request, v.session, None, _public_origin(request))
    limit = services.uploads.limits.max_bytes
    try:
        await _rate_limit(request, v.key)
        form = await request.form(max_files=1, max_part_size=limit + 1)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise InvalidInput("file", "choose an image file")
        data = await part.read(limit + 1)
        if not data:
            raise InvalidInput("file", "the file is empty")
        record = await services.uploads.create_ready(v.key.account_id, part.filename or "image",
                                                     part.content_type, data)
    except ApiError as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    url = services.uploads.download_url(record["id"], record["filename"], record["expires_at"],
                                        base_url(request))
    return JSONResponse({"url": url, "filename": record["filename"], "size": record["size"]})


# --- one prediction -----------------------------------------------------------------------


async def _own_prediction(request: Request, v: Viewer, prediction_id: str) -> Prediction:
    assert v.key is not None
    pred = await services_of(request).store.get(prediction_id, account_id=v.key.account_id)
    if pred is None:
        # Another account's prediction is indistinguishable from a missing one.
        raise NotFoundPage()
    return pred


class NotFoundPage(Exception):
    pass


async def _status_context(request: Request, pred: Prediction) -> dict[str, Any]:
    services = services_of(request)
    elapsed = (pred.completed_at or utcnow()) - pred.created_at
    video = (services.storage.url(pred.outputs[0], base_url(request))
             if pred.status == COMPLETED and pred.outputs else None)
    # A failure or a cancellation says why; an unfinished or completed one has no error.
    error = pred.error if pred.status in (FAILED, CANCELLED) else ""
    return {"p": pred, "error": error, "elapsed_s": max(0.0, elapsed.total_seconds()),
            "video": video}


@router.get("/p/{prediction_id}/status", response_class=HTMLResponse)
async def status(request: Request, prediction_id: str) -> Response:
    v = await viewer(request)
    pred = await _own_prediction(request, v, prediction_id)
    if not pred.finished and request.query_params.get("wait"):
        services = services_of(request)
        await services.notifier.wait(pred.id, lambda: services.store.get(pred.id),
                                     STATUS_WAIT_S, until=lambda: services.drain_deadline)
        pred = await _own_prediction(request, v, prediction_id)
    return page(request, "_status.html", v, **await _status_context(request, pred))


@router.get("/p/{prediction_id}", response_class=HTMLResponse)
async def prediction_page(request: Request, prediction_id: str) -> Response:
    v = await viewer(request)
    services = services_of(request)
    try:
        pred = await _own_prediction(request, v, prediction_id)
    except NotFoundPage:
        return page(request, "not_found.html", v, status_code=404,
                    what=f"Prediction {prediction_id}")
    assert v.key is not None
    deliveries = await services.webhooks.list(v.key.account_id, pred.id)
    poster = services.storage.url(pred.poster, base_url(request)) if pred.poster else None
    inputs = [(field, name) for field, name in _input_names(pred)]
    return page(request, "prediction.html", v, nav="history", deliveries=deliveries,
                poster=poster, inputs=inputs, **await _status_context(request, pred))


def _input_names(pred: Prediction) -> list[tuple[str, str]]:
    out = []
    for field in ("image", "last_image"):
        if pred.inputs.get(field):
            out.append((field, Path(pred.inputs[field]).name))
    for i, rel in enumerate(pred.inputs.get("images", [])):
        out.append((f"images[{i}]", Path(rel).name))
    return out


@router.get("/p/{prediction_id}/inputs/{name}")
async def prediction_input(request: Request, prediction_id: str, name: str) -> Response:
    v = await viewer(request)
    try:
        pred = await _own_prediction(request, v, prediction_id)
    except NotFoundPage:
        return Response("Not found", status_code=404)
    rels = [pred.inputs.get("image"), pred.inputs.get("last_image"),
            *pred.inputs.get("images", [])]
    for rel in rels:
        if rel and Path(rel).name == name:
            data = await _input_bytes(services_of(request), pred, rel)
            if data is not None:
                return Response(data, media_type=_image_type(data),
                                headers={"Cache-Control": "private, max-age=3600"})
    return Response("Not found", status_code=404)


async def _input_bytes(services: Services, pred: Prediction, rel: str) -> bytes | None:
    """A stored input image, wherever it is kept (the storage layer, local or S3, or the data
    dir for rows accepted before inputs went through the storage); None once it is gone."""
    try:
        return await read_input(pred, rel, services.storage, services.settings.data_dir)
    except (OSError, StorageKeyMissing):
        return None


def _image_type(data: bytes) -> str:
    signatures = {b"\x89PNG": "image/png", b"\xff\xd8": "image/jpeg", b"GIF8": "image/gif",
                  b"BM": "image/bmp", b"RIFF": "image/webp"}
    for magic, ctype in signatures.items():
        if data.startswith(magic):
            return ctype
    return "application/octet-stream"


@router.post("/p/{prediction_id}/cancel", response_class=HTMLResponse)
async def cancel(request: Request, prediction_id: str) -> Response:
    v = await viewer(request)
    await form_with_csrf(request, v)
    assert v.key is not None
    services = services_of(request)
    pred = await _own_or_404(request, v, prediction_id)
    if isinstance(pred, Response):
        return pred
    if await services.store.cancel(prediction_id, v.key.account_id):
        await services.notifier.publish(prediction_id)
        flash = "Cancelled. Nothing was charged."
    else:
        flash = f"It is {pred.status}: only a prediction that has not started can be cancelled."
    return RedirectResponse(f"/console/p/{prediction_id}?{urlencode({'flash': flash})}",
                            status_code=303)


@router.post("/p/{prediction_id}/delete-outputs", response_class=HTMLResponse)
async def delete_outputs(request: Request, prediction_id: str) -> Response:
    v = await viewer(request)
    await form_with_csrf(request, v)
    assert v.key is not None
    services = services_of(request)
    pred = await _own_or_404(request, v, prediction_id)
    if isinstance(pred, Response):
        return pred
    keys = await services.store.delete_outputs(prediction_id, v.key.account_id)
    if keys is None:
        flash = f"It is {pred.status}: outputs can be deleted once it has ended."
    else:
        for storage_key in keys:
            await services.storage.delete(storage_key)
        flash = "The video was deleted."
    return RedirectResponse(f"/console/p/{prediction_id}?{urlencode({'flash': flash})}",
                            status_code=303)


@router.post("/p/{prediction_id}/deliveries/{delivery_id}/retry")
async def retry_delivery(request: Request, prediction_id: str, delivery_id: str) -> Response:
    v = await viewer(request)
    await form_with_csrf(request, v)
    assert v.key is not None
    row = await services_of(request).webhooks.retry(v.key.account_id, delivery_id)
    flash = "The webhook will be sent again now." if row else "No such delivery."
    return RedirectResponse(f"/console/p/{prediction_id}?{urlencode({'flash': flash})}",
                            status_code=303)


async def _own_or_404(request: Request, v: Viewer, prediction_id: str) -> Prediction | Response:
    try:
        return await _own_prediction(request, v, prediction_id)
    except NotFoundPage:
        return page(request, "not_found.html", v, status_code=404,
                    what=f"Prediction {prediction_id}")


# --- history ------------------------------------------------------------------------------


@router.get("/history", response_class=HTMLResponse)
async def history(request: Request) -> Response:
    from reelgate.accounts.usage import date_range

    v = await viewer(request)
    assert v.key is not None
    services = services_of(request)
    q = request.query_params
    status = q.get("status") or None
    model = q.get("model") or None
    since, until = q.get("from") or None, q.get("to") or None
    try:
        page_no = max(1, int(q.get("page", "1")))
    except ValueError:
        page_no = 1
    error = None
    if status and status not in STATUSES:
        error, status = f"Unknown status '{status}'.", None
    try:
        start, end = date_range(since, until)
    except InvalidInput as exc:
        error, start, end = exc.message, None, None
    items, total = await services.store.list_predictions(
        v.key.account_id, status=status, model=model, since=start, until=end, page=page_no,
        page_size=PAGE_SIZE,
    )
    base = base_url(request)
    rows = [
        {"p": p, "poster": services.storage.url(p.poster, base) if p.poster else None}
        for p in items
    ]
    filters = {k: val for k, val in (("status", status), ("model", model), ("from", since),
                                      ("to", until)) if val}
    pages = max(1, -(-total // PAGE_SIZE))
    return page(request, "history.html", v, nav="history", rows=rows, total=total,
                page_no=page_no, pages=pages, filters=filters, error=error,
                statuses=STATUSES, models=list(catalog.MODELS),
                link=lambda n: "/console/history?" + urlencode({**filters, "page": n}))


# --- the account --------------------------------------------------------------------------


def can_manage_keys(key: KeyRecord) -> bool:
    """Only a key with every model may create or revoke keys: a key restricted to some
    models must not be able to mint itself an unrestricted one."""
    return key.allowed_models is None


async def usage_chart(services: Services, account_id: str | None, days: int = 30,
                      ) -> tuple[Any, Any, list[dict[str, Any]]]:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=days - 1)
    by_day = await ConsoleStore(services.store).usage_by_day(
        datetime.combine(start, datetime.min.time(), UTC), account_id)
    day_list = charts.days_between(start, today)
    models = sorted({m for cells in by_day.values() for m in cells})
    count_series = {m: [by_day.get(d, {}).get(m, {}).get("predictions", 0) for d in day_list]
                    for m in models}
    money_series = {m: [by_day.get(d, {}).get(m, {}).get("charged", 0) / MICROS
                        for d in day_list] for m in models}
    totals = []
    for m in models:
        cells = [by_day[d][m] for d in by_day if m in by_day[d]]
        totals.append({
            "model": m,
            "predictions": sum(c["predictions"] for c in cells),
            "completed": sum(c["completed"] for c in cells),
            "seconds": sum(c["seconds"] for c in cells),
            "charged": sum(c["charged"] for c in cells),
        })
    return (
        charts.stacked_bars(day_list, count_series,
                            title=f"Predictions per day, last {days} days, by model"),
        charts.stacked_bars(day_list, money_series, title="Spend per day, by model"),
        totals,
    )


@router.get("/account", response_class=HTMLResponse)
async def account(request: Request, created: str | None = None) -> Response:
    v = await viewer(request)
    assert v.key is not None
    services = services_of(request)
    admin = AdminStore(services.store)
    balance = await services.store.balance(v.key.account_id)
    ledger = list(reversed(await admin.ledger(v.key.account_id, limit=100000)))[:100]
    keys = await admin.list_keys(v.key.account_id)
    chart_count, chart_money, totals = await usage_chart(services, v.key.account_id)
    new_key = _pop_new_key(request)
    response = page(request, "account.html", v, nav="account", balance=balance, ledger=ledger,
                    keys=keys, chart_count=chart_count, chart_money=chart_money, totals=totals,
                    manage=can_manage_keys(v.key), new_key=new_key, current_key=v.key.id)
    if new_key:
        response.delete_cookie(NEW_KEY_COOKIE, path="/console")
    return response


# A new key is shown once, on the page the creation redirects to. It travels in a
# short-lived cookie signed like the session (HttpOnly, Strict), never in the URL.
NEW_KEY_COOKIE = "reelgate_console_newkey"


def _pop_new_key(request: Request) -> str | None:
    from itsdangerous import BadSignature, URLSafeTimedSerializer

    raw = request.cookies.get(NEW_KEY_COOKIE)
    if not raw:
        return None
    signer = URLSafeTimedSerializer(
        hashlib.sha256(services_of(request).settings.signing_key + b"new-key").hexdigest())
    try:
        return str(signer.loads(raw, max_age=120))
    except BadSignature:
        return None


def set_new_key(request: Request, response: Response, secret: str) -> None:
    from itsdangerous import URLSafeTimedSerializer

    signer = URLSafeTimedSerializer(
        hashlib.sha256(services_of(request).settings.signing_key + b"new-key").hexdigest())
    response.set_cookie(NEW_KEY_COOKIE, signer.dumps(secret), max_age=120, path="/console",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


@router.post("/account/keys")
async def create_key(request: Request) -> Response:
    v = await viewer(request)
    assert v.key is not None
    form = await form_with_csrf(request, v)
    if not can_manage_keys(v.key):
        raise Redirect("/console/account?" + urlencode({"flash": "This key is restricted to "
                       "some models, so it cannot create keys."}))
    name = str(form.get("name") or "").strip()[:200] or "console"
    secret, _ = await services_of(request).store.create_key(v.key.account_id, name)
    response = RedirectResponse("/console/account#keys", status_code=303)
    set_new_key(request, response, secret)
    return response


@router.post("/account/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    v = await viewer(request)
    assert v.key is not None
    await form_with_csrf(request, v)
    admin = AdminStore(services_of(request).store)
    own = {k["id"] for k in await admin.list_keys(v.key.account_id)}
    if not can_manage_keys(v.key) or key_id not in own:
        flash = "That key cannot be revoked from here."
    else:
        await admin.revoke_key(key_id)
        flash = "Key revoked."
        if key_id == v.key.id:
            # Revoking the key this session runs on ends the session.
            response = RedirectResponse("/console/login", status_code=303)
            _save(request, response, sess.fresh())
            return response
    return RedirectResponse("/console/account?" + urlencode({"flash": flash}) + "#keys",
                            status_code=303)
