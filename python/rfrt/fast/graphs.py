"""Moved to `rfrt.runtime.graphs` (the CUDA-graph runner captures the one chunk loop); this path re-exports it
for one release."""
from rfrt.runtime.graphs import ChunkGraphs
from rfrt.runtime.plan import ChunkPlan

__all__ = ["ChunkGraphs", "ChunkPlan", "device_cursors"]


def device_cursors(cache, chunk):
    """Deprecated: `RingCache.device_cursors(chunk)`."""
    return cache.device_cursors(chunk)
