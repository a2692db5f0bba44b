"""The v3 dialect (GPTProto / WaveSpeed's predictions API): routes, request parsing, the
prediction object and envelope, the error body, the webhook body."""

from collections.abc import Mapping
from typing import Any

from reelgate.api.dialects import Create, Dialect
from reelgate.api.v3 import errors, present
from reelgate.api.v3.routes import EXTRA_SCHEMAS, HOT_ROUTES, router
from reelgate.errors import InvalidInput
from reelgate.requests import resolve_model_scene


def parse_create(body: Any, path: Mapping[str, str]) -> Create:
    """The v3 create body is reelgate's own: the model and scene come from the path
    (``/api/v3/google/{model}/{scene}``; a local model's path gives ``local/{model}``)."""
    model, scene = path["model"], path["scene"]
    resolve_model_scene(model, scene)  # an unknown route is a 404 whatever the body
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")  # as intake says it
    return Create(model, scene, body)


DIALECT = Dialect(
    name="v3",
    prefixes=("/api/v3",),
    routers=(router,),
    parse_create=parse_create,
    present=present.present,
    error_body=errors.error_body,
    webhook_payload=present.webhook_payload,
    hot_routes=HOT_ROUTES,
)

__all__ = ["DIALECT", "EXTRA_SCHEMAS", "router"]
