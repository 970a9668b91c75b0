"""The streaming runtime: the chunk loop (once), its forward protocol and plan, StreamGenerator, CUDA graphs.

    sample_chunk(forward, draws, plan, *, exit_step=None, grad=False) -> x0      rfrt.runtime.chunk
    ChunkForward / TorchForward                                                   rfrt.runtime.forward
    ChunkPlan                                                                     rfrt.runtime.plan
    StreamGenerator (model loading and fast paths: rfrt.runtime.loading)          rfrt.runtime.generator
    Chunk (one generated chunk: index, frames, video, latents)                    rfrt.runtime.chunk
    ChunkGraphs                                                                   rfrt.runtime.graphs

Importing this package loads the loop only; the generator (model directories, text, decoders) loads on use.
"""
from rfrt.runtime.chunk import sample_chunk
from rfrt.runtime.forward import ChunkForward, TorchForward
from rfrt.runtime.plan import ChunkPlan

__all__ = ["ChunkForward", "ChunkPlan", "TorchForward", "sample_chunk"]
