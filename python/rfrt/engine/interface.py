"""The exported chunk step's interface: tensor names, the runner protocol, feeds and static-shape checks.

A chunk step runs one DiT forward of one chunk with the self-attention cache passed in and handed back, the
function of ``rfrt.cache.functional`` that ``export/export_onnx.py`` exports and ``export/build_engine.py``
turns into a TensorRT engine:

    step(x, t, cross_kv, kv, sink_acc, controls) -> (flow, kv_out, sink_acc_out)

Everything that binds such a graph by name (the TensorRT and ONNX Runtime runners, the exporter) takes the
names from here, and ``check_interface`` / ``check_step_shapes`` validate a graph against them at load time.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

from rfrt.cache.functional import CacheLayout, StepControls
from rfrt.models import ModelConfig

__all__ = ["MASK_INPUT", "STEP_CONTROL_INPUTS", "STEP_INPUTS", "STEP_OUTPUTS", "ChunkStepRunner", "check_interface",
           "check_runner", "check_step_shapes", "step_feeds", "step_input_shapes"]

STEP_CONTROL_INPUTS = ("slots", "rope_cos", "rope_sin", "fold")
STEP_INPUTS = ("x", "t", "cross_kv", "kv", "sink_acc") + STEP_CONTROL_INPUTS
MASK_INPUT = "valid_tokens"
STEP_OUTPUTS = ("flow", "kv_out", "sink_acc_out")


class ChunkStepRunner(Protocol):
    """One DiT chunk forward with the cache in and out (the exported graph's interface).

    masked:       whether it takes the valid_tokens key mask (phase "any": serves every chunk) or attends to the
                  whole buffer (phase "steady": only chunks whose window is full, chunk >= policy.ring_chunks).
    input_shapes: input name -> static shape; input_dtypes: input name -> torch dtype (the cache state is
                  allocated in these dtypes).
    __call__ returns tensors with the shapes of flow / kv / sink_acc; a returned kv_out / sink_acc_out must stay
    valid as the next call's kv / sink_acc (TensorRTChunkStep double-buffers its outputs for this).
    """

    masked: bool
    input_shapes: Mapping[str, tuple[int, ...]]
    input_dtypes: Mapping[str, torch.dtype]

    def __call__(self, x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor,
                 controls: StepControls) -> tuple[Tensor, Tensor, Tensor]: ...


def check_runner(runner) -> ChunkStepRunner:
    """`runner` if it has the ChunkStepRunner interface, else a TypeError naming what it lacks."""
    missing = [a for a in ("masked", "input_shapes", "input_dtypes") if not hasattr(runner, a)]
    if not callable(runner):
        missing.append("__call__")
    if missing:
        raise TypeError(f"backend {type(runner).__name__} is not a chunk-step runner: it lacks {missing} "
                        "(see rfrt.engine.ChunkStepRunner)")
    return runner


def step_feeds(x: Tensor, t: Tensor, cross_kv: Tensor, kv: Tensor, sink_acc: Tensor, controls: StepControls,
               masked: bool) -> dict[str, Tensor]:
    """The graph inputs of one forward, by name (valid_tokens only for a masked graph)."""
    feeds = {"x": x, "t": t, "cross_kv": cross_kv, "kv": kv, "sink_acc": sink_acc, "slots": controls.slots,
             "rope_cos": controls.rope_cos, "rope_sin": controls.rope_sin, "fold": controls.fold}
    if masked:
        feeds[MASK_INPUT] = controls.valid_tokens
    return feeds


def step_input_shapes(cfg: ModelConfig, layout: CacheLayout, masked: bool) -> dict[str, tuple[int, ...]]:
    """The static input shapes of the chunk step of model `cfg` over cache `layout` (what an engine must have)."""
    pt, ph, pw = cfg.patch_size
    p = layout.policy
    shapes = {
        "x": (layout.batch, p.chunk_frames * pt, cfg.in_dim, layout.grid_h * ph, layout.grid_w * pw),
        "t": (layout.batch, p.chunk_frames),
        "cross_kv": (2, cfg.num_layers, layout.batch, cfg.text_len, cfg.num_heads, cfg.head_dim),
        "kv": layout.kv_shape(), "sink_acc": layout.sink_acc_shape(), "slots": (2,),
        "rope_cos": (3, p.chunk_frames, layout.time_pairs), "rope_sin": (3, p.chunk_frames, layout.time_pairs),
        "fold": (2,),
    }
    if masked:
        shapes[MASK_INPUT] = (1,)
    return shapes


def check_step_shapes(runner: ChunkStepRunner, cfg: ModelConfig, layout: CacheLayout, what: str) -> None:
    """Raise ValueError when `runner`'s static shapes are not those of this model, resolution and cache.

    An engine is built for one latent size, chunk length and cache window; running it under another config
    would fail deep inside TensorRT (or, worse, run on misread buffers), so the mismatch is named at load time.
    """
    want = step_input_shapes(cfg, layout, runner.masked)
    got = {n: tuple(s) for n, s in runner.input_shapes.items()}
    bad = [f"{n} {got.get(n, 'missing')} (needs {w})" for n, w in want.items() if got.get(n) != w]
    extra = sorted(set(got) - set(want))
    if bad or extra:
        p, pt = layout.policy, cfg.patch_size
        latent_h, latent_w = layout.grid_h * pt[1], layout.grid_w * pt[2]
        raise ValueError(
            f"{what} does not fit this generator: {'; '.join(bad + [f'unexpected input {n}' for n in extra])}. "
            f"The generator runs latents {latent_h}x{latent_w} ({layout.grid_h}x{layout.grid_w} tokens per frame), "
            f"chunk_frames={p.chunk_frames}, sink_frames={p.sink_frames}, window_frames={p.window_frames}, "
            f"{cfg.num_layers} layers x {cfg.num_heads} heads x {cfg.head_dim}, text_len={cfg.text_len}: export "
            f"with export/export_onnx.py --latent-height {latent_h} --latent-width {latent_w} "
            f"--chunk-frames {p.chunk_frames} --sink-frames {p.sink_frames} --window-frames {p.window_frames} "
            "(the model's own weights) and rebuild the engine, or construct the generator with the engine's "
            "height / width / cache")


def check_interface(inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]) -> bool:
    """Validate an engine's I/O against the exported chunk step; return whether it has the key-mask input.

    inputs / outputs: tensor name -> static shape. Raises ValueError naming what is missing, unexpected or
    dynamic (the chunk step is built with static shapes per phase).
    """
    masked = MASK_INPUT in inputs
    want_in = set(STEP_INPUTS) | ({MASK_INPUT} if masked else set())
    for kind, got, want in (("inputs", set(inputs), want_in), ("outputs", set(outputs), set(STEP_OUTPUTS))):
        if got != want:
            raise ValueError(f"engine {kind} {sorted(got)} are not the chunk step's: missing {sorted(want - got)}, "
                             f"unexpected {sorted(got - want)} (build it from export/export_onnx.py's graph)")
    for name, shape in {**inputs, **outputs}.items():
        if any(d < 0 for d in shape):
            raise ValueError(f"engine tensor {name} has a dynamic shape {shape}; the chunk step needs static shapes")
    if inputs["kv"] != outputs["kv_out"] or inputs["sink_acc"] != outputs["sink_acc_out"]:
        raise ValueError("engine cache outputs do not have the shapes of its cache inputs")
    return masked
