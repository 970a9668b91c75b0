"""Moved to `rfrt.runtime.generator`; this path re-exports it for one release (`from rfrt import
StreamGenerator` is the stable spelling)."""
from rfrt.runtime.generator import BACKENDS, Chunk, StreamGenerator

__all__ = ["StreamGenerator", "Chunk", "BACKENDS"]
