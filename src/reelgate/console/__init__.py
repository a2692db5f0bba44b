"""The web console at /console: server-rendered pages served by the API process.

Templates and static files (htmx included) ship inside the package: no build step, no CDN,
nothing fetched from the internet."""

from reelgate.console.routes import install

__all__ = ["install"]
