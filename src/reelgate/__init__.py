"""reelgate: a self-hostable video-generation API server for Google Veo models."""

__version__ = "0.1.0"
