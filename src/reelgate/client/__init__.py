"""The client side of reelgate: the Python SDK (``sdk``), where it finds the server URL and
key (``config``), the user's commands (``cli``: ``reelgate generate``, ``reelgate
predictions``) and webhook verification for receivers (``webhooks``).

Nothing in this package imports the server (an import-linter contract in pyproject.toml
holds it to that), so an application that only calls a reelgate server pulls in httpx and
standardwebhooks, not FastAPI or SQLAlchemy. ``reelgate.Client`` and the rest of the names
in ``__all__`` are re-exported lazily by ``reelgate`` itself.
"""

from reelgate.client.sdk import *  # noqa: F403  (the SDK's names, listed once in sdk.__all__)
from reelgate.client.sdk import __all__ as __all__
