"""The model objects a stream runs on: which model loads, the fast paths that change it, the sizes it accepts.

Kept apart from StreamGenerator so that the generator holds only the stream (its state and the chunk order);
everything here happens once, in StreamGenerator.__init__, before any stream exists.
"""
from __future__ import annotations

import os

import torch

from rfrt._checks import positive_int
from rfrt.fast.config import RuntimeConfig
from rfrt.model_dir import LoadedModel, ModelDirError, default_model_path, load_model_dir

__all__ = ["load_bundle", "apply_runtime", "check_resolution"]


def load_bundle(model: str | os.PathLike | LoadedModel | None, checkpoint, use_ema: bool, device: torch.device,
                dtype: torch.dtype) -> LoadedModel:
    """The model for StreamGenerator(model, checkpoint=, use_ema=): the embedded default model for None, a loaded
    model moved to (device, dtype), or a model directory loaded there."""
    if model is not None and not isinstance(model, (str, os.PathLike, LoadedModel)):
        raise TypeError(f"model must be a model directory path, a LoadedModel or None (the default model), "
                        f"got {type(model).__name__} {model!r}")
    if model is None:
        model = default_model_path()
        if model is None:
            raise ModelDirError(
                "no model given and the embedded default model is not installed: pass a model directory, "
                "e.g. StreamGenerator('path/to/Wan2.1-T2V-1.3B-Diffusers', checkpoint='rewardforcing.pt') "
                "or `rfrt generate --model DIR [--checkpoint PT]`")
    if isinstance(model, LoadedModel):
        if checkpoint is not None:
            raise ValueError("checkpoint= applies to a model directory, not to an already loaded model")
        model.dit.to(device=device, dtype=dtype)
        return model
    return load_model_dir(model, checkpoint=checkpoint, use_ema=use_ema, device=device, dtype=dtype)


def apply_runtime(runtime: RuntimeConfig, dit, decoder, device: torch.device):
    """The fast paths that change the model objects: modulation precision / fused helpers, FP8 block linears (in
    place), the overlapped decoder. -> (dit, decoder)."""
    current = getattr(dit, "block_math", None)
    if current is not None and (current.precision, current.compile) != (runtime.modulation, runtime.fuse_helpers):
        from rfrt.models.dit import BlockMath

        dit.set_block_math(BlockMath(runtime.modulation, compile=runtime.fuse_helpers))
    if runtime.fp8:
        from rfrt.fast.fp8 import swap_dit_linears

        swap_dit_linears(dit, runtime.fp8_scaling)
    if runtime.overlap_decode:
        from rfrt.fast.overlap import OverlappedDecoder

        decoder = OverlappedDecoder(decoder, device)
    return dit, decoder


def check_resolution(dit_config, spatial_upsample: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) if the DiT and decoder can stream that size: a multiple of decoder stride x patch, and the
    size of a learned position embedding where the model has one; else a ValueError that names a size that works."""
    ph, pw = dit_config.patch_size[1:]
    s = spatial_upsample
    for name, value, p in (("height", height, ph), ("width", width, pw)):
        positive_int(name, value)
        if value % (s * p):
            raise ValueError(f"{name} {value} px is not a multiple of {s * p} px (decoder stride {s} x "
                             f"patch {p}); try {max(s * p, value // (s * p) * s * p)}")
    grid = dit_config.pos_grid
    if grid is not None and (height // (s * ph), width // (s * pw)) != grid:
        raise ValueError(f"this model has a learned position embedding for {grid[0] * s * ph}x"
                         f"{grid[1] * s * pw} px video only, got {height}x{width}")
    return height, width
