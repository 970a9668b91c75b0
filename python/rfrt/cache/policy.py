"""CachePolicy: the sink + window KV-cache layout of SPEC §2.2 in frames, as one frozen, validated value.

It holds no resolution: token counts follow from the token grid in `rfrt.cache.CacheLayout`, the geometry
that joins this policy with the model. The slot arithmetic is mirrored in csrc/include/rfrt/slots.h;
tests/test_cache_inputs.py pins the two together.
"""
from __future__ import annotations

from dataclasses import dataclass

from rfrt._checks import positive_int

ROPE_RULES = ("window_relative", "absolute")
SINK_PRECISIONS = ("fp32", "cache")


@dataclass(frozen=True)
class CachePolicy:
    """Sink + sliding-window cache, in latent frames.

    sink_frames:      frames held by the sink (filled by chunk 0, then the EMA accumulator).
    window_frames:    frames a query may attend to, *including* the sink (9 in the release).
    chunk_frames:     frames generated per chunk (3 in the release).
    sink_ema_alpha:   EMA-Sink coefficient, sink <- a*sink + (1-a)*evicted (0.999 in the release).
    rope_rule:        "window_relative" (Reward Forcing: positions 0..window_frames-1) or "absolute"
                      (Self-Forcing: keys at their absolute frame, sink at 0..sink_frames-1).
    sink_precision:   "fp32" keeps the sink accumulator in fp32 (the update the paper describes);
                      "cache" keeps it in the cache dtype, reproducing the reference's bf16 rounding.
    """

    sink_frames: int = 3
    window_frames: int = 9
    chunk_frames: int = 3
    sink_ema_alpha: float = 0.999
    rope_rule: str = "window_relative"
    sink_precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("sink_frames", "window_frames", "chunk_frames"):
            positive_int(f"CachePolicy.{name}", getattr(self, name))
        if not (isinstance(self.sink_ema_alpha, (int, float)) and 0.0 <= float(self.sink_ema_alpha) <= 1.0):
            raise ValueError(f"CachePolicy.sink_ema_alpha must lie in [0, 1], got {self.sink_ema_alpha!r}")
        if self.rope_rule not in ROPE_RULES:
            raise ValueError(f"CachePolicy.rope_rule must be one of {ROPE_RULES}, got {self.rope_rule!r}")
        if self.sink_precision not in SINK_PRECISIONS:
            raise ValueError(
                f"CachePolicy.sink_precision must be one of {SINK_PRECISIONS}, got {self.sink_precision!r}")
        # The public code, when the evicted length differs from the sink length, silently overwrites a prefix
        # of the sink and skips the EMA. rfrt rejects that layout instead of reproducing it silently.
        if self.sink_frames != self.chunk_frames:
            raise ValueError(
                f"CachePolicy: sink_frames ({self.sink_frames}) must equal chunk_frames ({self.chunk_frames}): "
                "the EMA folds one evicted chunk into the sink token by token")
        ring = self.window_frames - self.sink_frames
        if ring <= 0 or ring % self.chunk_frames != 0:
            raise ValueError(
                f"CachePolicy: window_frames - sink_frames ({ring}) must be a positive multiple of "
                f"chunk_frames ({self.chunk_frames})")

    # ---- derived sizes (token counts: CacheLayout) ----
    @property
    def ring_chunks(self) -> int:
        """Chunk slots in the ring behind the sink (2 in the release)."""
        return (self.window_frames - self.sink_frames) // self.chunk_frames

    # ---- per-chunk schedule (pure functions of the chunk index) ----
    def slot_frame(self, frame: int) -> int:
        """Physical frame slot of logical frame `frame`: sink fixed, the rest a ring."""
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        ring = self.window_frames - self.sink_frames
        return frame if frame < self.sink_frames else self.sink_frames + (frame - self.sink_frames) % ring

    def chunk_slot_frame(self, chunk: int) -> int:
        """First physical frame slot of chunk `chunk`."""
        return self.slot_frame(chunk * self.chunk_frames)

    def valid_frames(self, chunk: int) -> int:
        """Frames a chunk's queries attend to (a prefix of the buffer): the sink, the filled ring, itself."""
        return min((chunk + 1) * self.chunk_frames, self.window_frames)

    def evicted_chunk(self, chunk: int) -> int | None:
        """Chunk folded into the sink at chunk `chunk`'s first forward, or None while the ring is filling."""
        victim = chunk - self.ring_chunks
        return victim if victim >= 1 else None

    def sink_position(self, chunk: int) -> int:
        """RoPE position given to the first sink frame while chunk `chunk` is generated.

        window_relative: the sink sits just before the oldest ring frame still held, so relative distances
        match positions 0..window_frames-1 of SPEC §2.2. absolute: the sink stays at 0.
        """
        if self.rope_rule == "absolute" or chunk == 0:
            return 0
        oldest_ring_chunk = max(1, chunk - self.ring_chunks + 1)
        return oldest_ring_chunk * self.chunk_frames - self.sink_frames
