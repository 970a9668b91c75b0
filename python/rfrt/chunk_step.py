"""Moved to `rfrt.engine` (interface, EngineForward, TorchChunkStep); this path re-exports it for one release.
`StepCache` is now `rfrt.engine.EngineForward` (a chunk forward: set_text(cross), then forward(x, t))."""
from rfrt.engine.interface import (ChunkStepRunner, check_runner, check_step_shapes, step_feeds,
                                   step_input_shapes)
from rfrt.engine.stream import EngineForward, TorchChunkStep, chunk_step_forward

StepCache = EngineForward

__all__ = ["ChunkStepRunner", "StepCache", "TorchChunkStep", "check_runner", "check_step_shapes",
           "chunk_step_forward", "step_feeds", "step_input_shapes"]
