"""Stage "regress": the Self-Forcing rollout regressed on the world's own video (a prompt-determined world).

On a world where the prompt determines the whole stream (data.phase "fixed", data.speed_min == speed_max) the
conditional mean is the video itself, so a regression loss is exact supervision with no teacher: the causal
student rolls out its own video exactly as at inference (train.stages.rollout: cache, sink policy, evictions
from chunk 3 of a 21-frame rollout; one exit step per iteration, gradient only through the exit forwards) and
  loss = mean over chunks, pixels of (x0_exit - video)^2
with video the world's rendered stream of the same length. stage.regress_context picks what the context passes
write into the cache: "video" (default, teacher forcing: the world's chunks, so every target is consistent with
the context it is asked to continue) or "own" (the student's x0, as at inference). Measured on the default
model: with "own" the object faded out within 25 steps (the student's chunk 0 sits a little off the world's
phase, so the targets of later chunks disagree with their context and the loss is cut by drawing less object).
Unlike the ODE init (regression on teacher samples with block-causal attention over 9 frames) it trains past the
window: evictions and the sink fold happen as at inference.
On a world with chance left in it the same loss would regress to the mean (smeared objects) where the chance is
not yet decided: use DMD there. Past the world's event frames of context it is decided, since the context then
shows the speed, the phase, a turn and an appearance: stage.regress_context_frames >= the world's
deciding_frames (EVENT_FRAMES on the random phase, 5 on the fixed phase; with regress_context "video") makes
those first frames context only (no loss, no graph) and trains the continuation of any window of the world,
exactly supervised: what a stream primed from a video asks of the student. The first chunks of a fresh stream
are then trained by nothing; stage.regress_anchor_weight holds them to the frozen start's (anchor_regression), and
stage.regress_anchor_frames can stretch that hold over the whole fresh stream.
stage.regress_target "nearest_speed" trains the fresh stream itself, on the fixed phase where the speed is the one
chance: the stream picks a speed in its first frames (deciding_frames), and from then on the world has exactly one
continuation, its clip at that speed. So the stream is regressed on the world's clip at the speed of a grid that
is nearest its own first frames (nearest_clip): every frame has a target consistent with the stream's own
choice, a mover must keep moving at the speed it started with, and no speed is averaged into a smear. A generated
stream also sits up to 2.5 px off the prompt's path along its direction, so stage.regress_shift_px also matches
that offset, over start shifts of 0.5 px steps (with_shift). Measured on the default model: with or without the
shift the student lost its object within 200 steps (presence 0.20-0.21), as with regress_context "own".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from rfrt.cache import CachePolicy
from rfrt.models import CausalWanDiT
from rfrt.sampling import SamplerConfig
from train.config import TrainConfig
from train.data.synthetic_world import Scene, deciding_frames, render_scene, with_shift, with_speed, world_of
from train.stages.common import autocast, frozen, load_dit
from train.stages.rollout import draw_exit_step, rollout
from train.stages.world_student import WorldStudentTrainer


def check_context_frames(cfg: TrainConfig, student: CausalWanDiT, deciding: int) -> int:
    """The chunk in frames; stage.regress_context_frames must be whole chunks, leave some to regress and hold at
    least the `deciding` frames of the world (`deciding_frames`: a shorter context leaves the continuation to
    chance, and the regression would smear it)."""
    n, chunk = cfg.stage.regress_context_frames, cfg.rollout.cache.chunk_frames * student.config.patch_size[0]
    if n % chunk or n >= cfg.rollout.num_frames:
        raise ValueError(f"stage.regress_context_frames ({n}) must be a multiple of the chunk ({chunk} frames) "
                         f"below rollout.num_frames ({cfg.rollout.num_frames})")
    if deciding and (n < deciding or cfg.stage.regress_context != "video"):
        raise ValueError("on a world with chance (random phase or speed) the regression needs a prompt-determined "
                         f"world or regress_context 'video' with regress_context_frames >= {deciding} (the frames "
                         f"that decide this world's chance), got {cfg.stage.regress_context!r}, {n}")
    anchor = cfg.stage.regress_anchor_frames
    if anchor % chunk or anchor > cfg.rollout.num_frames:
        raise ValueError(f"stage.regress_anchor_frames ({anchor}) must be a multiple of the chunk ({chunk} frames) "
                         f"at most rollout.num_frames ({cfg.rollout.num_frames})")
    return chunk


def object_mask(video: torch.Tensor, tol: float = 0.02) -> torch.Tensor:
    """video [..., 3, H, W] -> bool [..., 1, H, W]: pixels whose colour differs (by more than `tol` in a channel,
    [-1, 1] units) from their frame's background, taken as the per-channel median of the frame (the world's
    objects cover well under half of it)."""
    background = video.flatten(-2).median(dim=-1).values[..., None, None]
    return ((video - background).abs() > tol).any(dim=-3, keepdim=True)


def weighted_mse(x: torch.Tensor, target: torch.Tensor, object_weight: float = 0.0) -> torch.Tensor:
    """mean of w * (x - target)^2 over [..., 3, H, W], w = 1 + object_weight on the target's object pixels
    (`object_mask`) and 1 elsewhere, divided by the mean weight: object_weight 0 is the plain MSE."""
    weight = 1 + object_weight * object_mask(target).float()
    return (weight * (x.float() - target) ** 2).sum() / (weight.sum() * target.shape[-3])


def rollout_regression(student: CausalWanDiT, text: torch.Tensor, video: torch.Tensor, policy: CachePolicy,
                       sampler: SamplerConfig, exit_step: int, context_chunks: int = 0,
                       teacher_forced: bool = True, object_weight: float = 0.0) -> torch.Tensor:
    """mean w * (x0_exit - video)^2 over the chunks from `context_chunks` on, of the student's Self-Forcing rollout
    from fresh noise (global RNG) whose context passes write `video` (teacher_forced) or its own x0; the chunks
    before `context_chunks` are context only (no graph, no loss). w is 1 + object_weight on the target's object
    pixels (`object_mask`), else 1: a weighted mean, so object_weight 0 is the plain MSE."""
    x = rollout(student, text, torch.randn_like(video), policy, sampler, exit_step, grad=True,
                grad_from_chunk=context_chunks, context=video if teacher_forced else None)
    n = context_chunks * policy.chunk_frames * student.config.patch_size[0]
    return weighted_mse(x[:, n:], video[:, n:], object_weight)


def anchor_regression(student: CausalWanDiT, anchor: CausalWanDiT, text: torch.Tensor, like: torch.Tensor,
                      policy: CachePolicy, sampler: SamplerConfig, exit_step: int) -> torch.Tensor:
    """mean (x0_student - x0_anchor)^2 of two fresh streams of like's shape (own context, as at inference) from
    the same noise and re-noise draws (global RNG): the anchor's stream is drawn under a forked RNG, so the
    student's sees the very same draws."""
    noise = torch.randn_like(like)
    with torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else []), torch.no_grad():
        target = rollout(anchor, text, noise, policy, sampler, exit_step)
    x = rollout(student, text, noise, policy, sampler, exit_step, grad=True)
    return ((x.float() - target.float()) ** 2).mean()


def nearest_clip(scene: Scene, stream: torch.Tensor, match: int, speeds: Sequence[float],
                 shifts: Sequence[float] = (0.0,)) -> tuple[torch.Tensor, float, float]:
    """The world's clip of `scene` at the speed (one of `speeds`) and start shift along the direction of motion
    (one of `shifts`, px, `with_shift`) whose first `match` frames are nearest (MSE) the stream's own
    [F, 3, H, W]: the target of a fresh stream that chose that speed and started that far off the prompt's place.
    -> (clip [F, 3, H, W], speed, shift)."""
    head = replace(scene, num_frames=match)
    own = stream[:match].float().cpu()
    grid = [(v, d) for d in shifts for v in speeds]
    errors = [((render_scene(with_shift(with_speed(head, v), d)) - own) ** 2).mean() for v, d in grid]
    speed, shift = grid[int(torch.stack(errors).argmin())]
    return render_scene(with_shift(with_speed(scene, speed), shift)).to(stream.device), speed, shift


def nearest_clip_regression(student: CausalWanDiT, text: torch.Tensor, scenes: list[Scene], like: torch.Tensor,
                            policy: CachePolicy, sampler: SamplerConfig, exit_step: int, match: int,
                            speeds: Sequence[float], shifts: Sequence[float] = (0.0,),
                            object_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """`weighted_mse` of a fresh stream (own context, from fresh noise: global RNG) of like's shape against its
    clips, each clip `nearest_clip` of its scene and the stream's own first `match` frames.
    -> (loss, {nearest_speed: mean speed, nearest_shift: mean |shift| px})."""
    x = rollout(student, text, torch.randn_like(like), policy, sampler, exit_step, grad=True)
    picked = [nearest_clip(sc, xb.detach(), match, speeds, shifts) for sc, xb in zip(scenes, x)]
    target = torch.stack([clip for clip, _, _ in picked])
    n = len(picked)
    return weighted_mse(x, target, object_weight), {"nearest_speed": sum(v for _, v, _ in picked) / n,
                                                    "nearest_shift": sum(abs(d) for _, _, d in picked) / n}


def shift_grid(max_px: float, step: float = 0.5) -> list[float]:
    """Start shifts in `step` px steps within [-max_px, max_px] (0 alone for max_px below a step)."""
    n = int(max_px / step + 1e-9)
    return [i * step for i in range(-n, n + 1)]


class RegressTrainer(WorldStudentTrainer):
    """model.student_init: the causal student to start from (its text encoder stays frozen)."""

    def build(self) -> None:
        cfg = self.cfg
        super().build()
        self.world = world_of(cfg.data)
        deciding = deciding_frames(self.world)
        if cfg.stage.regress_target == "nearest_speed":
            if self.world.phase != "fixed" or self.world.layout != "canonical" or self.world.max_start_frame:
                raise ValueError("stage.regress_target \"nearest_speed\" needs a world whose only chance is the "
                                 "speed: data.phase fixed, layout canonical, max_start_frame 0")
            self.match, deciding = max(deciding, 2), 0  # two frames show a speed; no context frames to check
            self.speeds = torch.linspace(cfg.data.speed_min, cfg.data.speed_max, 11, dtype=torch.float64).tolist()
            self.shifts = shift_grid(cfg.stage.regress_shift_px)
        self.chunk = check_context_frames(cfg, self.student, deciding)
        self.exit_steps: list[int] = []
        self.anchor = None  # the frozen start: what a fresh stream's first chunks are held to
        if cfg.stage.regress_anchor_weight > 0:
            self.anchor = frozen(load_dit(cfg.model.student_init, "model.student_init")).to(self.info.device)
        self.parts: dict[str, float] = {}

    def loss(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """video [B, F, 3, H, W] in [-1, 1]: the rollout's exit x0 regressed on it past the context frames."""
        k = draw_exit_step(self.sampler.num_steps, self.info)
        self.exit_steps.append(k)
        text = self.text.encode(prompts)
        if self.cfg.stage.regress_target == "nearest_speed":
            scenes = [self.world.scene(i) for i in self.data.last_indices()]
            with autocast(self.cfg, self.info):
                loss, self.parts = nearest_clip_regression(self.student, text, scenes, video, self.policy,
                                                           self.sampler, k, self.match, self.speeds, self.shifts,
                                                           self.cfg.stage.regress_object_weight)
            return loss
        with autocast(self.cfg, self.info):
            loss = rollout_regression(self.student, text, video, self.policy, self.sampler, k,
                                      self.cfg.stage.regress_context_frames // self.chunk,
                                      self.cfg.stage.regress_context == "video", self.cfg.stage.regress_object_weight)
            if self.anchor is None:
                return loss
            span = self.cfg.stage.regress_anchor_frames or self.cfg.stage.regress_context_frames
            held = anchor_regression(self.student, self.anchor, text, video[:, :span], self.policy, self.sampler, k)
        self.parts = {"continue_loss": loss.item(), "anchor_loss": held.item()}
        return loss + self.cfg.stage.regress_anchor_weight * held

    def step_metrics(self) -> dict[str, float]:
        return {"exit_step": float(self.exit_steps[-1]), **self.parts}
