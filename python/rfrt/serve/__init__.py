"""`rfrt serve`: live generation streamed to browsers, with prompt switching (see app.py for the design).

Names are imported on first use, so that `rfrt generate` (whose parser lists `serve`) works without aiohttp.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"BackgroundServer": "app", "ServeConfig": "config", "create_app": "app", "parse_command": "app",
            "serve": "app", "add_arguments": "cli", "main": "cli", "FRAME_HEADER": "hub", "Hub": "hub",
            "ServeError": "hub"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rfrt.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
