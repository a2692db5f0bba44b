"""The OpenAI Videos dialect."""

from reelgate.api.dialects import Dialect
from reelgate.api.openai import translate
from reelgate.api.openai.routes import router

DIALECT = Dialect("openai", ("/v1",), (router,), translate.error_body)

__all__ = ["DIALECT"]
