"""`rfrt serve`: live generation streamed to browsers, with prompt switching (see app.py for the design)."""
from .app import BackgroundServer, ServeConfig, create_app, parse_command, serve
from .cli import add_arguments, main
from .hub import FRAME_HEADER, Hub, ServeError

__all__ = ["BackgroundServer", "ServeConfig", "create_app", "parse_command", "serve", "add_arguments", "main",
           "FRAME_HEADER", "Hub", "ServeError"]
