"""Accepting a prediction: validate → content policy → fetch and check inputs → store the row
(status created) → dispatch. Any refusal happens before anything is stored or spent."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from reelgate.backends import backend_for, check_request
from reelgate.billing import InsufficientBalance, quote
from reelgate.errors import ApiError, InvalidInput
from reelgate.logs import prediction_id_var
from reelgate.media.fetch import load_input_image, resolve_destination
from reelgate.policy import ContentBlocked
from reelgate.requests import CreateRequest, validate_create
from reelgate.services import Services
from reelgate.store.repo import KeyRecord, Prediction, new_id


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


def _save_inputs(prediction_id: str, fetched: dict[str, bytes], inputs_dir: Path,
                 data_dir: Path) -> dict[str, Any]:
    """Write fetched inputs next to the data dir; the row keeps relative paths, so the worker
    never fetches a user URL again (it may have changed or expired)."""
    if not fetched:
        return {}
    folder = inputs_dir / prediction_id
    folder.mkdir(parents=True, exist_ok=True)
    refs: dict[str, Any] = {"images": []}
    for field, data in fetched.items():
        name = field.replace("[", "_").replace("]", "")
        path = folder / name
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        rel = str(path.relative_to(data_dir))
        if field.startswith("images["):
            refs["images"].append(rel)
        else:
            refs[field] = rel
    return refs


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
                 body: Any, *, base_url: str,
                 webhook: str | None = None) -> tuple[Prediction, CreateRequest]:
    req = validate_create(model, scene, body)
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
    check_request(backend, req, settings)
    try:
        services.policy.check({"prompt": req.prompt, "negative_prompt": req.negative_prompt})
    except ContentBlocked as blocked:
        await services.store.record_policy_block(
            key=key, model=req.model, scene=req.scene, category=blocked.category,
            field=blocked.field, text=getattr(req, blocked.field) or "",
        )
        raise
    price = quote(req, backend, settings)
    # Refuse an account that cannot pay before fetching anything (the hold itself is
    # taken atomically with the insert below; this is only the cheap early answer).
    if price > 0:
        available = await services.store.balance(key.account_id)
        if price > available:
            raise InsufficientBalance(price, available)
    fetched = await _fetch_inputs(req, services)
    prediction_id = new_id()
    prediction_id_var.set(prediction_id)
    inputs = (
        await asyncio.to_thread(
            _save_inputs, prediction_id, fetched, settings.inputs_dir, settings.data_dir
        )
        if fetched
        else {}
    )
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
        )
    except BaseException:
        # Refused (limit, balance) or failed: nothing is stored, so keep no input files.
        await asyncio.to_thread(shutil.rmtree, settings.inputs_dir / prediction_id, True)
        raise
    await services.dispatch(pred.id, pred.backend)
    return pred, req
