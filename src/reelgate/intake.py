"""Accepting a prediction: validate → content policy → fetch and check inputs → store the row
(status created) → dispatch. Any refusal happens before anything is stored or spent.

Once the row is committed the create has succeeded: dispatch is only a hint (a worker's
reconciler finds every row nobody announced), so a broker outage never turns a stored,
held prediction into an error the client would retry and pay for twice. A client that got
no answer at all retries with the same ``Idempotency-Key`` and gets the same prediction."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

from reelgate import metrics
from reelgate.accounts.ledger import ensure_affordable
from reelgate.accounts.prices import quote
from reelgate.backends import backend_for, check_request
from reelgate.errors import ApiError, InvalidInput
from reelgate.logs import prediction_id_var
from reelgate.media.fetch import load_input_image, resolve_destination
from reelgate.policy import ContentBlocked
from reelgate.requests import CreateRequest, validate_create
from reelgate.services import Services
from reelgate.store.repo import KeyRecord, Prediction, new_id

log = logging.getLogger("reelgate.api")

_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


async def _fetch_inputs(req: CreateRequest, services: Services) -> dict[str, Any]:
    """Fetch every input image concurrently; the first refusal wins."""
    policy = services.fetch_policy
    named: list[tuple[str, str]] = []
    if req.image:
        named.append(("image", req.image))
    if req.last_image:
        named.append(("last_image", req.last_image))
    named += [(f"images[{i}]", url) for i, url in enumerate(req.images)]
    async def load(field: str, url: str) -> bytes:
        # Our own upload links are read from disk; anything else is fetched, guarded.
        own = await services.uploads.resolve(url, field)
        if own is not None:
            return own
        return await load_input_image(url, policy, field=field)

    results = await asyncio.gather(*(load(field, url) for field, url in named))
    return dict(zip((field for field, _ in named), results, strict=True))


def input_key(prediction_id: str, name: str) -> str:
    return f"inputs/{prediction_id[:2]}/{prediction_id}/{name}"


async def _save_inputs(prediction_id: str, fetched: dict[str, bytes],
                       services: Services) -> dict[str, Any]:
    """Put fetched inputs into the storage (where every worker can read them, wherever it
    runs); the row keeps their keys, so the worker never fetches a user URL again (it may
    have changed or expired)."""
    if not fetched:
        return {}
    refs: dict[str, Any] = {"storage": True, "images": []}

    async def put(field: str, data: bytes) -> None:
        name = field.replace("[", "_").replace("]", "")
        key = input_key(prediction_id, name)
        await services.storage.put_bytes(key, data, "application/octet-stream")
        if field.startswith("images["):
            refs["images"].append(key)
        else:
            refs[field] = key

    # One at a time keeps images[] in order.
    for field, data in fetched.items():
        await put(field, data)
    return refs


async def _drop_inputs(refs: dict[str, Any], services: Services) -> None:
    keys = [v for k, v in refs.items() if k not in ("storage", "images") and v]
    keys += list(refs.get("images") or [])
    for key in keys:
        with contextlib.suppress(Exception):  # an orphan input costs bytes, not money
            await services.storage.delete(key)


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 255 or not set(value) <= _KEY_CHARS:
        raise InvalidInput("Idempotency-Key", "must be 1 to 255 printable ASCII characters "
                           "without spaces (a UUID is a good choice)")
    return value


def request_hash(model: str, scene: str, body: Any, webhook: str | None) -> str:
    """What makes two creates "the same request" for an Idempotency-Key."""
    doc = {"model": model, "scene": scene, "body": body, "webhook": webhook}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _check_webhook(url: Any, services: Services) -> str | None:
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise InvalidInput("webhook", "must be a URL string")
    # The same address guard as image fetching, now for an early 400; the sender checks
    # again at every attempt (DNS can change in between).
    await resolve_destination(url, services.fetch_policy, field="webhook")
    return url.strip()


async def accept(services: Services, key: KeyRecord, model: str, scene: str,
                 body: Any, *, base_url: str, webhook: str | None = None,
                 idempotency_key: str | None = None,
                 dialect: str = "v3") -> tuple[Prediction, CreateRequest]:
    """The one door behind every dialect: ``body`` is reelgate's own create body (the v3
    fields; other dialects translate theirs into it), ``dialect`` is recorded on the row."""
    req = validate_create(model, scene, body)
    body_hash = None
    if idempotency_key is not None:
        body_hash = request_hash(model, scene, body, webhook)
        # A retry of a create that was stored: the same prediction, nothing fetched, held
        # or charged again (or a 409 if the key came with another request).
        earlier = await services.store.find_idempotent(key.account_id, idempotency_key,
                                                       body_hash)
        if earlier is not None:
            return earlier, req
    # WaveSpeed takes the webhook as a query parameter; a body field works too.
    webhook = await _check_webhook(webhook or body.get("webhook"), services)
    if webhook and req.enable_base64_output:
        # WaveSpeed's rule and reason: a webhook body is pushed to the receiver, and inline
        # video (megabytes) breaks receivers' payload limits. Refused before anything is
        # stored or spent.
        raise InvalidInput("enable_base64_output", "webhook callback does not support base64 "
                           "output; leave out the webhook and read the prediction (or use "
                           "enable_sync_mode) to get base64 outputs")
    if key.allowed_models is not None and req.model not in key.allowed_models:
        raise ApiError(403, f"This API key may not use model '{req.model}' (allowed: "
                       f"{', '.join(key.allowed_models) or 'none'})")
    settings = services.settings
    backend = backend_for(req.model, settings)
    check_request(backend, req.job, settings)
    try:
        services.policy.check({"prompt": req.prompt, "negative_prompt": req.negative_prompt})
    except ContentBlocked as blocked:
        await services.store.record_policy_block(
            key=key, model=req.model, scene=req.scene, category=blocked.category,
            field=blocked.field, text=getattr(req, blocked.field) or "",
        )
        raise
    price = quote(req.job, backend, settings)
    # Refuse an account that cannot pay before fetching anything (the hold itself is
    # taken atomically with the insert below; this is only the cheap early answer).
    await ensure_affordable(services.store, key.account_id, price)
    fetched = await _fetch_inputs(req, services)
    prediction_id = new_id()
    prediction_id_var.set(prediction_id)
    inputs = await _save_inputs(prediction_id, fetched, services)
    try:
        pred = await services.store.insert_prediction(
            id=prediction_id,
            account_id=key.account_id,
            key_id=key.id,
            model=req.model,
            scene=req.scene,
            backend=backend,
            params=req.params(),
            inputs=inputs,
            price=price,
            max_concurrent=key.max_concurrent or settings.max_concurrent,
            webhook=webhook,
            base_url=base_url,
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            dialect=dialect,
        )
    except BaseException:
        # Refused (limit, balance) or failed: nothing is stored, so keep no input files.
        await asyncio.shield(_drop_inputs(inputs, services))
        raise
    if pred.id != prediction_id:
        # Lost a race with a concurrent create under the same key: that one stands.
        await _drop_inputs(inputs, services)
        return pred, req
    try:
        await services.dispatch(pred.id, pred.backend)
    except Exception as exc:
        # Stored and held: the create succeeded. A worker's reconciler runs the row.
        metrics.DISPATCH_ERRORS.inc()
        log.warning("prediction %s stored but not dispatched (%s: %s); the reconciler "
                    "will run it", pred.id, type(exc).__name__, exc)
    return pred, req
