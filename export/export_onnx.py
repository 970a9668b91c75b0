"""Export the student's chunk forward to ONNX, with the self-attention cache as explicit inputs and outputs.

One graph = one DiT forward of one chunk at one timestep (SPEC §2.1), static shapes:

  inputs   x [B, chunk_frames*pt, C, H, W] f32   latents of the chunk
           t [B, chunk_frames] f32               timestep per (token) frame
           cross_kv [2, layers, B, text_len, heads, head_dim]   the prompt's cross-attention K | V
           kv [2, layers, B, window_tokens, heads, head_dim]    the [sink | ring] cache (RingCache layout)
           sink_acc [2, layers, B, sink_tokens, heads, head_dim] the sink's unrotated EMA accumulator
           slots int64 [2], rope_cos / rope_sin f32 [3, chunk_frames, time_pairs], fold f32 [2]
           valid_tokens int64 [1]                (phase "any" only)
  outputs  flow [B, chunk_frames*pt, C, H, W], kv_out, sink_acc_out (shapes of kv / sink_acc)

The per-forward controls come from ``rfrt.cache.functional.step_controls``; feeding kv_out / sink_acc_out back as
the next kv / sink_acc continues the stream exactly like ``rfrt.cache.RingCache``. Phase "steady" serves every
chunk whose window is full (chunk >= policy.ring_chunks: chunk 2 on in the release; the first forward of chunk
ring_chunks + 1 on folds the sink) and attends to the whole buffer; phase "any" adds the key mask and also
serves the filling chunks. The fold costs one elementwise pass over the sink per forward, so the same graph
serves all five forwards of a chunk.

The model comes from ``rfrt.models`` (a checkpoint, or a tiny random config for smoke tests); nothing here
defines one. Usage:

    PYTHONPATH=python:. python export/export_onnx.py --checkpoint rewardforcing.pt --out chunk.onnx --verify
    PYTHONPATH=python:. python export/export_onnx.py --tiny-random 0 --out /tmp/tiny.onnx --verify
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rfrt._checks import positive_int
from rfrt.cache import CachePolicy, RingCache
from rfrt.cache.functional import StepControls, step_controls
from rfrt.cache.layout import CacheLayout
from rfrt.engine.interface import MASK_INPUT, STEP_INPUTS, STEP_OUTPUTS
from rfrt.engine.onnxruntime import ort_session
from rfrt.engine.stream import chunk_step_forward
from rfrt.models import CausalWanDiT, ModelConfig, load_model

PHASES = ("steady", "any")
# ONNX protobufs are capped at 2 GiB: larger models keep their weights in an external data file.
_INLINE_WEIGHT_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class ExportSpec:
    """What one exported graph is specialised to (all its shapes derive from this and the model config).

    batch: videos per call. latent_h, latent_w: latent size (60 x 104 at 832x480).
    policy: cache policy (frames, alpha; its token counts follow from the latent size). phase: "steady" or "any".
    opset: ONNX opset of the export.
    """

    batch: int
    latent_h: int
    latent_w: int
    policy: CachePolicy
    phase: str = "steady"
    opset: int = 18

    def __post_init__(self) -> None:
        for name in ("batch", "latent_h", "latent_w", "opset"):
            positive_int(f"ExportSpec.{name}", getattr(self, name))
        if not isinstance(self.policy, CachePolicy):
            raise TypeError(f"ExportSpec.policy must be a CachePolicy, got {type(self.policy).__name__}")
        if self.phase not in PHASES:
            raise ValueError(f"ExportSpec.phase must be one of {PHASES}, got {self.phase!r}")

    def layout(self, cfg: ModelConfig) -> CacheLayout:
        """The cache geometry for model `cfg` at this latent size; raises if the latent does not fit the patch."""
        cfg.tokens_per_frame(self.latent_h, self.latent_w)  # a clear error for a latent the patch does not divide
        ph, pw = cfg.patch_size[1:]
        return CacheLayout.for_model(cfg, self.policy, self.latent_h // ph, self.latent_w // pw, batch=self.batch)

    def input_names(self) -> tuple[str, ...]:
        return STEP_INPUTS + ((MASK_INPUT,) if self.phase == "any" else ())


class ChunkStep(nn.Module):
    """The model's chunk forward as a pure function of tensors (what gets exported).

    forward(x, t, cross_kv, kv, sink_acc, slots, rope_cos, rope_sin, fold[, valid_tokens])
        -> (flow, kv_out, sink_acc_out); shapes in the module docstring.
    """

    def __init__(self, model: CausalWanDiT, spec: ExportSpec) -> None:
        super().__init__()
        self.model, self.spec, self.layout = model, spec, spec.layout(model.config)

    def forward(self, x, t, cross_kv, kv, sink_acc, slots, rope_cos, rope_sin, fold, valid_tokens=None):
        masked = self.spec.phase == "any"
        if masked and valid_tokens is None:
            raise ValueError("phase 'any' needs the valid_tokens input")
        if not masked:  # steady state: every slot of the buffer holds a key
            valid_tokens = torch.full((1,), self.layout.window_tokens, dtype=torch.int64)
        controls = StepControls(slots, rope_cos, rope_sin, fold, valid_tokens)
        # The same function StreamGenerator's engine backends are checked against (rfrt.engine).
        return chunk_step_forward(self.model, self.layout, masked, x, t, cross_kv, kv, sink_acc, controls)


def example_inputs(model: CausalWanDiT, spec: ExportSpec, chunk: int | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs with the graph's exact shapes and dtypes, and the controls of a real forward.

    chunk: which chunk's controls (default: the first steady-state chunk, the first forward, so it folds).
    """
    cfg, layout = model.config, spec.layout(model.config)
    p, dtype = spec.policy, model.patch_embedding.weight.dtype
    chunk = p.ring_chunks + 1 if chunk is None else chunk
    gen = torch.Generator().manual_seed(seed)
    frames = p.chunk_frames * cfg.patch_size[0]
    ctl = step_controls(layout, chunk, first_forward=True)
    inputs = {
        "x": torch.randn(spec.batch, frames, cfg.in_dim, spec.latent_h, spec.latent_w, generator=gen).to(dtype),
        "t": torch.full((spec.batch, p.chunk_frames), 937.5),
        "cross_kv": torch.randn(2, cfg.num_layers, spec.batch, cfg.text_len, cfg.num_heads, cfg.head_dim,
                                generator=gen).to(dtype),
        "kv": torch.randn(layout.kv_shape(), generator=gen).to(dtype),
        "sink_acc": torch.randn(layout.sink_acc_shape(), generator=gen),
        "slots": ctl.slots, "rope_cos": ctl.rope_cos, "rope_sin": ctl.rope_sin, "fold": ctl.fold,
    }
    if spec.phase == "any":
        inputs[MASK_INPUT] = ctl.valid_tokens
    return inputs


def export_chunk_step(model: CausalWanDiT, spec: ExportSpec, path: str | Path, check: bool = True) -> Path:
    """Write the ONNX graph of `model`'s chunk forward to `path` (static shapes); run the ONNX checker."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = ChunkStep(model.eval(), spec).eval()
    inputs = example_inputs(model, spec)
    names = spec.input_names()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        program = torch.onnx.export(step, tuple(inputs[n] for n in names), dynamo=True, opset_version=spec.opset,
                                    input_names=list(names), output_names=list(STEP_OUTPUTS),
                                    external_data=weight_bytes > _INLINE_WEIGHT_LIMIT_BYTES)
    program.save(str(path), external_data=weight_bytes > _INLINE_WEIGHT_LIMIT_BYTES)
    if check:
        # By path: the checker then also handles models with external weights (> 2 GiB).
        onnx.checker.check_model(str(path), full_check=True)
    return path


def run_ort(session, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run the graph on torch tensors; returns (flow, kv_out, sink_acc_out) as torch tensors."""
    names = [i.name for i in session.get_inputs()]
    feeds = {n: inputs[n].detach().cpu().numpy() for n in names}
    return tuple(torch.from_numpy(o) for o in session.run(list(STEP_OUTPUTS), feeds))


def max_rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (a scale-free error that does not blow up near zeros)."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def verify_stream(model: CausalWanDiT, spec: ExportSpec, session, text: torch.Tensor, chunks: int | None = None,
                  forwards: tuple[float, ...] = (1000.0, 625.0, 0.0), seed: int = 0) -> dict[str, float]:
    """Drive the ONNX graph and a RingCache-driven eager model side by side; return the worst relative errors.

    The runtime fills the cache up to the first chunk the graph serves (chunk ring_chunks, the first with a
    full window, for phase "steady"; chunk 0 for "any"); then `chunks` consecutive chunks (default: up to
    the second chunk that folds the sink) of `forwards` (timesteps; the last one is the context pass at 0)
    run through both, the graph's cache outputs fed back as its next inputs.
    text: [B, Ltext, text_dim]. Keys: flow (vs the RingCache forward), step (vs the exported module in
    PyTorch on the same inputs), kv, sink_acc (vs RingCache's buffers).
    """
    cfg, layout, p = model.config, spec.layout(model.config), spec.policy
    ring = RingCache(layout, dtype=model.patch_embedding.weight.dtype)
    step = ChunkStep(model, spec).eval()
    gen = torch.Generator().manual_seed(seed)
    first = p.ring_chunks if spec.phase == "steady" else 0
    chunks = p.ring_chunks + 3 - first if chunks is None else chunks
    worst = dict.fromkeys(("flow", "step", "kv", "sink_acc"), 0.0)
    frames = p.chunk_frames * cfg.patch_size[0]
    with torch.no_grad():
        ckv = model.cross_kv(text)
        cross = torch.stack([torch.stack(ckv.keys), torch.stack(ckv.values)])
        state = None
        for c in range(first + chunks):
            if c == first:  # the graph takes over the cache the runtime built, before this chunk's fold
                state = {"kv": ring.kv.clone(), "sink_acc": ring.sink_acc.clone()}
            ring.begin_chunk()
            for i, tv in enumerate(forwards):
                x = torch.randn(spec.batch, frames, cfg.in_dim, spec.latent_h, spec.latent_w, generator=gen)
                t = torch.full((spec.batch, p.chunk_frames), tv)
                want = model(x, t, ckv, ring)
                if state is None:
                    continue
                ctl = step_controls(layout, c, first_forward=i == 0)
                feeds = {"x": x, "t": t, "cross_kv": cross, **state, "slots": ctl.slots, "rope_cos": ctl.rope_cos,
                         "rope_sin": ctl.rope_sin, "fold": ctl.fold, MASK_INPUT: ctl.valid_tokens}
                flow, kv_out, acc_out = run_ort(session, feeds)
                eager = step(*(feeds[n] for n in spec.input_names()))[0]
                worst["flow"] = max(worst["flow"], max_rel_error(flow, want))
                worst["step"] = max(worst["step"], max_rel_error(flow, eager))
                worst["kv"] = max(worst["kv"], max_rel_error(kv_out, ring.kv))
                worst["sink_acc"] = max(worst["sink_acc"], max_rel_error(acc_out, ring.sink_acc))
                state = {"kv": kv_out, "sink_acc": acc_out}
    return worst


def tiny_config() -> ModelConfig:
    """A small random-weight architecture for smoke tests (fast on a CPU)."""
    return ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16,
                       freq_dim=16, text_len=8)


def tiny_model(seed: int) -> CausalWanDiT:
    """tiny_config() with every parameter random (modulations included, so no gate is trivially zero)."""
    torch.manual_seed(seed)
    model = CausalWanDiT(tiny_config())
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Export the rfrt student's chunk forward (with its KV cache) to ONNX.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint file or directory (any layout rfrt loads)")
    src.add_argument("--tiny-random", type=int, metavar="SEED", help="a tiny random-weight model (smoke test)")
    ap.add_argument("--out", type=Path, required=True, help="output .onnx path")
    ap.add_argument("--latent-height", type=int, help="latent height (default 60; 4 for --tiny-random)")
    ap.add_argument("--latent-width", type=int, help="latent width (default 104; 6 for --tiny-random)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--sink-frames", type=int, default=3)
    ap.add_argument("--window-frames", type=int, default=9)
    ap.add_argument("--chunk-frames", type=int, default=3)
    ap.add_argument("--sink-ema-alpha", type=float, default=0.999)
    ap.add_argument("--phase", choices=PHASES, default="steady",
                    help="steady: full-window chunks only; any: every chunk (adds the valid_tokens key mask)")
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                    help="weight/activation dtype of the graph (TensorRT can lower an fp32 graph itself)")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--use-ema", action="store_true", help="Self-Forcing dicts: export generator_ema")
    ap.add_argument("--verify", action="store_true",
                    help="check against ONNX Runtime on CPU over 3 chunks (fp32 only; slow for the full model)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tiny = args.checkpoint is None
    h = args.latent_height or (4 if tiny else 60)
    w = args.latent_width or (6 if tiny else 104)
    model = tiny_model(args.tiny_random) if tiny else load_model(args.checkpoint, use_ema=args.use_ema,
                                                                 dtype=torch.float32)
    if args.dtype == "fp16":
        model = model.half()
    policy = CachePolicy(sink_frames=args.sink_frames, window_frames=args.window_frames,
                         chunk_frames=args.chunk_frames, sink_ema_alpha=args.sink_ema_alpha)
    spec = ExportSpec(batch=args.batch, latent_h=h, latent_w=w, policy=policy, phase=args.phase, opset=args.opset)
    path = export_chunk_step(model, spec, args.out)
    print(f"wrote {path} (checker passed): {spec}")
    if args.verify:
        if args.dtype != "fp32":
            print("--verify compares in fp32 only; skipped for --dtype fp16", file=sys.stderr)
            return 0
        text = torch.randn(args.batch, model.config.text_len, model.config.text_dim)
        worst = verify_stream(model, spec, ort_session(path), text)
        print("ONNX Runtime vs PyTorch, max relative error: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        if max(worst.values()) > 1e-4:
            print("FAILED: above the fp32 tolerance 1e-4", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
