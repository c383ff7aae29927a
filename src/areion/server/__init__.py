"""The OpenAI-compatible HTTP server."""

from areion.server.app import create_app

__all__ = ["create_app"]
