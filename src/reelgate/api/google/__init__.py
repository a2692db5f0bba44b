"""Google's native Veo dialect (Gemini API and Vertex AI express shapes)."""

from reelgate.api.dialects import Dialect
from reelgate.api.google import translate
from reelgate.api.google.routes import router

DIALECT = Dialect(
    name="google",
    prefixes=("/v1beta", "/v1beta1"),
    routers=(router,),
    parse_create=translate.parse_create,
    present=translate.present,
    error_body=translate.error_body,
    # Google's API has no webhooks and this door takes none; should a row of its ever carry
    # one, the receiver gets the operation as operations.get shows it.
    webhook_payload=translate.present,
    input_error=translate.input_error,
)

__all__ = ["DIALECT"]
