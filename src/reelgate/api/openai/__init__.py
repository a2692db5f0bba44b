"""The OpenAI Videos dialect."""

from reelgate.api.dialects import Dialect
from reelgate.api.openai import translate
from reelgate.api.openai.routes import router

DIALECT = Dialect(
    name="openai",
    prefixes=("/v1",),
    routers=(router,),
    parse_create=translate.parse,
    present=translate.present,
    error_body=translate.error_body,
    webhook_payload=translate.webhook_event,
    input_error=translate.input_error,
)

__all__ = ["DIALECT"]
