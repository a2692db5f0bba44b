"""Google's native Veo dialect (Gemini API and Vertex AI express shapes)."""

from reelgate.api.dialects import Dialect
from reelgate.api.google import translate
from reelgate.api.google.routes import router

DIALECT = Dialect("google", ("/v1beta", "/v1beta1"), (router,), translate.error_body)

__all__ = ["DIALECT"]
