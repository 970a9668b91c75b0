"""Priming a stream from given frames or latents: the context-pass half of the one chunk loop (SPEC §2.1).

A causal streaming model's whole state is the KV cache that the context passes of earlier chunks wrote. So a
context (a video to continue, an image to start from) is encoded with the model's own encoder and its latents
are written into the cache exactly as if the model had generated them:

* every whole chunk of context latents, in stream order: `rfrt.runtime.chunk.context_chunk`, i.e. `begin_chunk`
  (slots, positions, and the EMA fold of the chunk it evicts, as streaming does), then the loop's own context
  pass at t = 0. The first context chunk becomes the sink; a context longer than the window folds its evicted
  chunks into the sink;
* the decoder decodes those chunks (its causal state must continue from them; they are also the frames shown
  when the output starts with the context);
* the noise stream skips the draws of the primed chunks, so chunk c of a stream always uses chunk c's draws
  whether the first chunks were generated or given: priming a stream with its own first k chunks reproduces
  it from chunk k on;
* the remaining r < chunk latent frames (one image gives one Wan latent frame; a chunk is three) are *held*:
  the next generated chunk starts with them fixed (`sample_chunk(..., hold=...)`).

Holding is training-free: the model never saw a partially known chunk; after every denoising forward the known
frames' x0 is replaced by the given latents, so the next input carries them re-noised at that step's sigma
(with the stream's own noise draw for those frames) and the chunk's output holds them exactly, while the
unknown frames are denoised attending to them. How well that holds is measured in
tests/test_prime_default_model.py and train/prime_eval.py (on the shipped default model: the given frame comes
out exactly, but the frames generated after a single image follow the prompt, not the image; docs/design.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rfrt.context import (MAX_CONTEXT_LATENT_FRAMES, ContextError, check_latents, fit_frames, read_frames,
                          to_rgb)
from rfrt.decoders.base import to_uint8_frames
from rfrt.runtime.chunk import context_chunk
from rfrt.runtime.forward import ChunkForward
from rfrt.runtime.plan import ChunkPlan

__all__ = ["Primed", "ContextLatents", "context_latents", "prime_chunks"]


@dataclass(frozen=True, eq=False)
class ContextLatents:
    """A context in the stream's latent space. latents [F, C, h, w] (DiT dtype and device); source_hw: (H, W) of
    the given frames (None for latents); dropped_frames: leading frames left out so that the rest make whole
    latent frames (the Wan encoders take 1 + 4k frames)."""

    latents: Tensor
    source_hw: tuple[int, int] | None = None
    dropped_frames: int = 0


@dataclass(frozen=True, eq=False)
class Primed:
    """What `StreamGenerator.reset(..., context=...)` did.

    frames:             uint8 [T, H, W, 3] (CPU): the whole context chunks as the stream's decoder shows them.
    latents:            [F, C, h, w]: the context latents (whole chunks, then the held frames).
    chunks:             whole chunks given a context pass; the stream continues at chunk_index == chunks.
    held_frames:        latent frames (fewer than a chunk) held fixed at the start of the next generated chunk.
    held_output_frames: output frames at the start of that chunk which show the held context.
    source_hw, dropped_frames: as in ContextLatents.
    weights:            the DiT weight set the stream runs on, "stream" or "continuation" (rfrt.runtime.weights).
    """

    frames: Tensor
    latents: Tensor
    chunks: int
    held_frames: int
    held_output_frames: int
    source_hw: tuple[int, int] | None = None
    dropped_frames: int = 0
    weights: str = "stream"


def context_latents(context, *, decoder, height: int, width: int, channels: int, latent_hw: tuple[int, int],
                    chunk_latent_frames: int, dtype: torch.dtype, device: torch.device,
                    max_latent_frames: int = MAX_CONTEXT_LATENT_FRAMES) -> ContextLatents:
    """A context -> its latents, validated (ContextError naming the problem otherwise).

    context: a path to an image or video file; uint8 frames ([H, W], [H, W, C] or [T, H, W, C], see
             rfrt.context.to_rgb); or floating-point latents [F, C, h, w] in the DiT's space.
    Frames are brought to height x width (rfrt.context.fit_frames) and encoded with `decoder.encoder()` in
    pieces of one chunk; a file is read keeping at most the frames that make max_latent_frames.
    """
    if isinstance(context, torch.Tensor) and context.is_floating_point():
        latents = check_latents(context, channels=channels, latent_hw=latent_hw, max_frames=max_latent_frames)
        return ContextLatents(latents.detach().to(device=device, dtype=dtype))
    try:
        encoder = decoder.encoder()
    except NotImplementedError as err:
        raise ContextError(f"cannot encode context frames: {err}") from None
    if isinstance(context, (str, bytes)) or hasattr(context, "__fspath__"):
        context = read_frames(context, max_frames=encoder.frames_for(max_latent_frames))
    rgb = to_rgb(context)
    total = encoder.latent_frames_for(rgb.shape[0])
    if total == 0:
        raise ContextError(f"{rgb.shape[0]} context frames make no latent frame (the encoder needs "
                           f"{encoder.first_latent_frames})")
    if total > max_latent_frames:
        raise ContextError(f"the context's {rgb.shape[0]} frames make {total} latent frames, more than the "
                           f"{max_latent_frames} accepted; pass at most {encoder.frames_for(max_latent_frames)} "
                           "frames (rfrt generate --init-frames N keeps the last N)")
    dropped = rgb.shape[0] - encoder.frames_for(total)
    rgb = rgb[dropped:]  # keep the end: the stream continues from the context's last frame
    pieces, start = [], 0
    for lat in range(0, total, chunk_latent_frames):
        n = encoder.frames_for(min(chunk_latent_frames, total - lat), start=lat)
        x = fit_frames(rgb[start:start + n], height, width, device=device)
        pieces.append(encoder.encode(x[None])[0])
        start += n
    latents = torch.cat(pieces).to(device=device, dtype=dtype)
    if not torch.isfinite(latents).all():
        raise ContextError("the encoder turned the context frames into NaN or infinite latents (check the "
                           "encoder's weights and dtype)")
    return ContextLatents(latents, tuple(int(s) for s in rgb.shape[1:3]), dropped)


def prime_chunks(ctx: ContextLatents, forward: ChunkForward, plan: ChunkPlan, noise: torch.Generator,
                 decoder) -> tuple[Primed, list[Tensor], Tensor | None]:
    """Write the whole chunks of `ctx` into the stream behind `forward`, in order, each after skipping its noise
    draws from `noise`, and decode them with the stream's `decoder`. -> (Primed, the chunks' latents
    [1, F, C, h, w] in order, the held latents [1, r, C, h, w] or None)."""
    latents, per = ctx.latents, plan.latent_shape[1]
    whole = latents.shape[0] // per
    chunks, frames = [], []
    with torch.no_grad():
        for c in range(whole):
            chunk = latents[None, c * per:(c + 1) * per]
            plan.draw(noise)  # chunk c's draws belong to chunk c, given or generated
            context_chunk(forward, chunk, plan)
            frames.append(to_uint8_frames(decoder.decode(chunk))[0])
            chunks.append(chunk)
    held = latents[None, whole * per:]
    held_out = decoder.frames_for(held.shape[1], start=whole * per) if held.shape[1] else 0
    if frames:
        shown = torch.cat(frames)
    else:
        s = decoder.spatial_upsample
        shown = torch.empty(0, latents.shape[2] * s, latents.shape[3] * s, 3, dtype=torch.uint8)
    primed = Primed(frames=shown, latents=latents, chunks=whole, held_frames=held.shape[1],
                    held_output_frames=held_out, source_hw=ctx.source_hw, dropped_frames=ctx.dropped_frames)
    return primed, chunks, (held if held.shape[1] else None)
