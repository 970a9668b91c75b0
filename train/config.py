"""Typed training configuration: frozen dataclasses loaded from YAML or a dict.

Every section is a frozen dataclass validated on construction. `load_config` turns a nested mapping into
those dataclasses field by field: an unknown key is an error naming the key and its section, a value of the
wrong type is an error naming the field, and ranges are checked in each `__post_init__`.

The runtime's own config types are composed, not mirrored: `rollout.cache` loads as an
`rfrt.cache.CachePolicy` and `sampler` as an `rfrt.sampling.SamplerConfig`, the same frozen values the
exported model's manifest (rfrt.json) carries, so what a model was trained with is what it ships with.

Two EMA coefficients exist in this project and must never be mixed up:
  * `ema.weight_ema_decay` (0.99): the EMA of the *generator's weights* during training (SPEC 3).
  * `rollout.cache.sink_ema_alpha` (0.999): the *KV-cache EMA-Sink* coefficient (SPEC 2) of
    `rfrt.cache.CachePolicy`. It matters in training only when `rollout.sink_ema_during_training` is on,
    and at inference always.
Putting either key in the other's section is rejected with a message that says where it belongs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar, Union

from rfrt.cache.policy import CachePolicy
from rfrt.sampling import SamplerConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the section and key."""


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


@dataclass(frozen=True)
class ModelSection:
    """Which weights the stages start from (model directories an earlier stage exported; nothing is
    downloaded).

    student_init: model directory the causal student starts from (the ODE stage's export in Re-DMD).
    teacher:      model directory of the bidirectional teacher ("real score").
    critic_init:  model directory the critic ("fake score") starts from.
    teacher_init: model directory (dit/ + text_encoder/) the teacher stage fine-tunes instead of starting from
                  scratch; its architecture replaces the arch section's DiT and text encoder.
    """

    student_init: str | None = None
    teacher: str | None = None
    critic_init: str | None = None
    teacher_init: str | None = None


@dataclass(frozen=True)
class ArchSection:
    """Architecture of the DiTs a stage builds from scratch (the teacher) and of the vocab text encoder.

    The stages that load weights (ODE, DMD) read the architecture from the weights' config.json instead.
    in/out channels are the data's 3 RGB channels: the default model's "pixel" decoder (latents are frames).
    text_layers: transformer layers of the VocabTextEncoder (0 or 1); max_words: its positions (= text_len).
    position_embedding: add a learned spatial position embedding over the data's token grid
                 (rfrt.models.ModelConfig.pos_grid): without it a tiny RoPE-only DiT cannot place objects.
    """

    dim: int = 64
    ffn_dim: int = 256
    num_heads: int = 2
    num_layers: int = 2
    freq_dim: int = 64
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 64
    max_words: int = 16
    text_layers: int = 1
    position_embedding: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim", "max_words"):
            _require(getattr(self, name) >= 1, f"arch.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(all(p >= 1 for p in self.patch_size), "arch.patch_size", f"must be positive, got {self.patch_size}")
        _require(self.dim % self.num_heads == 0, "arch.dim", f"{self.dim} not divisible by num_heads {self.num_heads}")
        _require(self.text_layers in (0, 1), "arch.text_layers", f"must be 0 or 1, got {self.text_layers}")


@dataclass(frozen=True)
class StageSection:
    """Which stage `python -m train.launch` runs, and the stage-specific knobs.

    kind:            teacher (flow matching, bidirectional) | ode (ODE-pair generation + regression of the
                     causal student) | dmd (Self-Forcing rollout + DMD, Re-DMD when reward.kind != none) |
                     forcing (teacher forcing of the causal student on the world's video through the
                     inference cache, train/stages/forcing.py) | regress (Self-Forcing rollout regressed on
                     the world's own video: a prompt-determined world only, train/stages/regress.py).
    teacher_shift:   timestep shift of the teacher's flow-matching t draw (1.0 = uniform sigma).
    text_dropout:    probability of training the teacher on the empty prompt (what CFG's uncond needs).
    ode_pairs:       number of teacher ODE trajectories to generate (ode stage).
    ode_substeps:    Euler steps of the teacher ODE (a fine grid through the warped timesteps).
    ode_guidance_scale: CFG scale used to generate the ODE pairs.
    ode_pairs_path:  where the pairs are stored (default <out_dir>/ode_pairs.pt; reused when present).
    ode_teacher:     the teacher the pairs come from: "bidirectional" (stage teacher, the whole clip at once),
                     "causal" (stage forcing, chunk by chunk through rollout.cache on its own chunks) or "world"
                     (no model: the synthetic world's exact flow ODE, chunk by chunk, train/stages/world_ode.py;
                     needs the fixed phase, clips from frame 0 and the canonical layout, where only the speed is
                     chance).
    ode_object_weight: ode stage: the pairs' object pixels (those that differ from the frame's median colour) weigh
                     1 + this in the regression's squared error, the rest 1 (as regress_object_weight: where the
                     object is small, the cheapest cut of a plain MSE is to draw less of it). 0 (default): plain MSE.
    ode_world_speeds: ode_teacher "world": points of the speed grid standing in for U[speed_min, speed_max].
    ode_world_shift_px: ode_teacher "world", ode_context "student": std (px) of the prior on how far along its motion
                     the student's context has put the object; the chunk continues the world from there.
    ode_world_context_sigma: ode_teacher "world": pixel noise std ([-1, 1] units) through which the teacher reads
                     the context's frames as a world clip (smaller: the continuation follows the context more
                     strictly).
    ode_attention:   how the regressed student sees earlier chunks: "block_causal" (every earlier frame, clip
                     positions, as CausVid's ODE init) or "cache" (the inference cache, rollout.cache with the
                     rollout's training sink, teacher-forced with the teacher's clean chunks: evictions and the
                     sink happen as at inference).
    ode_context:     whose chunks the causal teacher continues from when it makes a pair (ode_teacher "causal"):
                     "teacher" (its own, as it would stream) or "student" (model.student_init's, generated from
                     the same chunk noise through its own cache: on-policy pairs, so the regressed student learns
                     the teacher's next chunk from the contexts it makes itself when streaming; the pairs then
                     store that context, and ode_attention "cache" writes it into the cache).
    ode_prime_fraction: the fraction of pair batches (16 pairs each, ode_teacher "causal") whose first
                     chunks' context is the world's own video of the same scene from a later stream frame
                     (U{0..ode_prime_max_start}), as when a stream is primed from a video; the number of primed
                     chunks is U{1..ode_prime_chunks} per batch. 0 (default): none.
    ode_continue_weight: ode stage (ode_attention "cache"): each step adds this weight times stage regress's
                     continuation loss (regress_context_frames of world video as context, at least the world's
                     event frames) on a batch of the random-phase world, so the student learns to continue any
                     window of a stream, the pairs meant to keep its own streams as they were (measured: they did not at
                     weight 1 or 0.25, train/results/default_model.md). 0 (default): none.
    forcing_later_windows: forcing stage: the fraction of clips that are a later window of the stream. Clips are
                     then data.num_frames long (> rollout.num_frames) and a clip is trained on frames [0, R)
                     (R = rollout.num_frames) or, with this probability, on [s, s + R), s ~ U{1..F - R}, whose
                     first chunk is context only (no loss: where a later window starts is chance the prompt
                     does not tell, train/stages/forcing.py). 0 (default): every clip from frame 0.
    regress_context: regress stage: the context passes write the world's video ("video") or the student's
                     own x0 ("own").
    regress_context_frames: regress stage: the first frames of every clip are context only (no loss; a
                     multiple of the chunk). With at least the world's event frames of video as context, the
                     continuation is determined by what the context shows (speed, phase, turn, appearance), so
                     a world with chance in it is exact supervision from there on: the student learns to
                     continue any context, as a primed stream asks (train/stages/regress.py). 0 (default).
    regress_anchor_weight: regress stage (regress_context_frames > 0): adds this weight times the MSE, over the
                     context frames of a fresh stream (no context given, the same noise and re-noise draws),
                     between the student's rollout and the frozen model.student_init's: it holds the first
                     chunks of a fresh stream, which the continuation never trains. 0 (default): none.
    regress_target: regress stage: what the rollout is regressed on. "video" (default): the world's clip.
                     "nearest_speed": a fresh stream (own context, no context frames) regressed on the world's clip of
                     the same scene at the speed, out of 11 in [data.speed_min, data.speed_max], whose first
                     deciding frames are nearest the stream's own: the one continuation of the world consistent
                     with the speed the stream chose (needs the fixed phase, canonical layout, clips from frame 0).
    regress_anchor_frames: how many frames of the fresh stream the anchor spans (a multiple of the chunk, at most
                     rollout.num_frames): 0 (default) the context frames, rollout.num_frames the whole stream, which
                     also holds the later chunks of a fresh stream (its own context) to the start's.
    regress_object_weight: regress stage (either regress_target): the target's object pixels (those that differ from
                     the frame's background, `object_mask`) weigh 1 + this in the regression, the background 1. A
                     small object covers ~4 % of a 16x16 frame, so under plain MSE leaving it out costs little
                     (measured: continuation students lost it in 5 of 48 primed scenes). 0 (default): plain MSE.
    regress_shift_px: regress_target "nearest_speed": also match the stream's start offset along its direction of
                     motion, over shifts of -regress_shift_px .. regress_shift_px px in 0.5 px steps (a generated
                     stream sits up to 2.5 px off the prompt's path). 0 (default): the speed only.
    """

    kind: Literal["teacher", "ode", "dmd", "forcing", "regress"] = "dmd"
    teacher_shift: float = 1.0
    text_dropout: float = 0.1
    ode_pairs: int = 256
    ode_substeps: int = 24
    ode_guidance_scale: float = 3.0
    ode_pairs_path: str | None = None
    ode_teacher: Literal["bidirectional", "causal", "world"] = "bidirectional"
    ode_object_weight: float = 0.0
    ode_world_speeds: int = 21
    ode_world_shift_px: float = 2.0
    ode_world_context_sigma: float = 0.5
    ode_attention: Literal["block_causal", "cache"] = "block_causal"
    ode_context: Literal["teacher", "student"] = "teacher"
    ode_prime_fraction: float = 0.0
    ode_prime_chunks: int = 4
    ode_prime_max_start: int = 32
    ode_continue_weight: float = 0.0
    forcing_later_windows: float = 0.0
    regress_context: Literal["video", "own"] = "video"
    regress_context_frames: int = 0
    regress_anchor_weight: float = 0.0
    regress_anchor_frames: int = 0
    regress_target: Literal["video", "nearest_speed"] = "video"
    regress_shift_px: float = 0.0
    regress_object_weight: float = 0.0

    def __post_init__(self) -> None:
        _require(self.teacher_shift > 0, "stage.teacher_shift", f"must be > 0, got {self.teacher_shift}")
        _require(0.0 <= self.text_dropout < 1.0, "stage.text_dropout", f"must lie in [0, 1), got {self.text_dropout}")
        _require(self.ode_pairs >= 1, "stage.ode_pairs", f"must be >= 1, got {self.ode_pairs}")
        _require(self.ode_substeps >= 1, "stage.ode_substeps", f"must be >= 1, got {self.ode_substeps}")
        _require(self.ode_guidance_scale >= 0, "stage.ode_guidance_scale", "must be >= 0")
        _require(0.0 <= self.ode_prime_fraction <= 1.0, "stage.ode_prime_fraction",
                 f"must lie in [0, 1], got {self.ode_prime_fraction}")
        _require(self.ode_prime_chunks >= 1 and self.ode_prime_max_start >= 0, "stage.ode_prime_chunks/max_start",
                 f"need >= 1 and >= 0, got {self.ode_prime_chunks} / {self.ode_prime_max_start}")
        _require(self.ode_prime_fraction == 0 or self.ode_teacher == "causal", "stage.ode_prime_fraction",
                 "priming the pairs needs ode_teacher \"causal\" (a streaming context)")
        _require(self.ode_continue_weight >= 0, "stage.ode_continue_weight",
                 f"must be >= 0, got {self.ode_continue_weight}")
        _require(self.ode_continue_weight == 0 or self.ode_attention == "cache", "stage.ode_continue_weight",
                 "needs ode_attention \"cache\" (the continuation streams through the inference cache)")
        _require(self.regress_context_frames >= 0, "stage.regress_context_frames",
                 f"must be >= 0, got {self.regress_context_frames}")
        _require(self.regress_anchor_weight >= 0, "stage.regress_anchor_weight",
                 f"must be >= 0, got {self.regress_anchor_weight}")
        _require(self.regress_anchor_weight == 0 or self.regress_context_frames > 0, "stage.regress_anchor_weight",
                 "needs regress_context_frames > 0 (it anchors the frames the continuation does not train)")
        _require(self.regress_target == "video" or (self.regress_context_frames == 0 and self.regress_context == "own"),
                 "stage.regress_target", "\"nearest_speed\" regresses a fresh stream: it needs regress_context "
                 f"\"own\" and regress_context_frames 0, got {self.regress_context!r}, {self.regress_context_frames}")
        _require(self.regress_anchor_frames >= 0, "stage.regress_anchor_frames",
                 f"must be >= 0, got {self.regress_anchor_frames}")
        _require(self.regress_shift_px >= 0 and (self.regress_shift_px == 0 or self.regress_target == "nearest_speed"),
                 "stage.regress_shift_px", "must be >= 0 and needs regress_target \"nearest_speed\" (it matches a "
                 f"fresh stream's start), got {self.regress_shift_px} with {self.regress_target!r}")
        _require(self.regress_object_weight >= 0, "stage.regress_object_weight",
                 f"must be >= 0, got {self.regress_object_weight}")
        _require(0.0 <= self.forcing_later_windows <= 1.0, "stage.forcing_later_windows",
                 f"must lie in [0, 1], got {self.forcing_later_windows}")
        _require(self.ode_context == "teacher" or (self.ode_teacher in ("causal", "world")
                                                    and self.ode_attention == "cache"),
                 "stage.ode_context", "\"student\" needs ode_teacher \"causal\" or \"world\" and ode_attention "
                 f"\"cache\" (the student's chunks are a streaming context), got {self.ode_teacher!r} / "
                 f"{self.ode_attention!r}")
        _require(self.ode_object_weight >= 0, "stage.ode_object_weight", f"must be >= 0, got {self.ode_object_weight}")
        _require(self.ode_world_speeds >= 1 and self.ode_world_shift_px > 0 and self.ode_world_context_sigma > 0,
                 "stage.ode_world_speeds/shift_px/context_sigma", f"need >= 1, > 0 and > 0, got "
                 f"{self.ode_world_speeds} / {self.ode_world_shift_px} / {self.ode_world_context_sigma}")


@dataclass(frozen=True)
class DataSection:
    """Training data. `synthetic_world` is the project's own generated world (train/data/synthetic_world.py)."""

    kind: Literal["synthetic_world"] = "synthetic_world"
    height: int = 32
    width: int = 32
    num_frames: int = 8
    max_objects: int = 2
    seed: int = 0
    num_workers: int = 0
    layout: Literal["random", "canonical"] = "random"  # canonical: the prompt fixes the layout (synthetic_world)
    speed_min: float = 0.5  # px/frame: each object's speed is drawn from U[speed_min, speed_max]
    speed_max: float = 1.5
    max_start_frame: int = 0  # a clip is stream frames [s, s + num_frames), s ~ U{0..max_start_frame}
    phase: Literal["random", "fixed"] = "random"  # fixed: movers start at a wall (synthetic_world docstring)

    def __post_init__(self) -> None:
        for name in ("height", "width", "num_frames", "max_objects"):
            _require(getattr(self, name) >= 1, f"data.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _require(0 < self.speed_min <= self.speed_max, "data.speed_min/speed_max",
                 f"need 0 < speed_min <= speed_max, got {self.speed_min}, {self.speed_max}")
        _require(self.max_start_frame >= 0, "data.max_start_frame", f"must be >= 0, got {self.max_start_frame}")


@dataclass(frozen=True)
class OptimSection:
    """AdamW settings (SPEC 3): generator lr 2e-6, critic lr 4e-7, betas (0, 0.999), weight decay 0.01."""

    lr: float = 2e-6
    critic_lr: float = 4e-7
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(self.critic_lr > 0, "optim.critic_lr", f"must be > 0, got {self.critic_lr}")
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "optim.betas",
                 f"must be two values in [0, 1), got {self.betas}")
        _require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "optim.max_grad_norm",
                 f"must be > 0 or null, got {self.max_grad_norm}")


@dataclass(frozen=True)
class DMDSection:
    """Distribution-matching distillation (SPEC 3). Timesteps are in [0, num_train_timesteps].

    score: how teacher and critic score the student's rollout: "bidirectional" (the whole noised clip at once,
           the release's Wan teacher) or "causal" (a causal teacher from stage forcing: each noised chunk on the
           rollout's clean earlier chunks through the inference cache, so DMD matches every chunk's
           distribution given the student's own past; needs rollout.score_frames 0).
    """

    guidance_scale: float = 3.0
    min_t: float = 20.0
    max_t: float = 980.0
    critic_updates_per_generator: int = 5
    score: Literal["bidirectional", "causal"] = "bidirectional"

    def __post_init__(self) -> None:
        _require(self.guidance_scale >= 0, "dmd.guidance_scale", f"must be >= 0, got {self.guidance_scale}")
        # The upper bound is sampler.num_train_timesteps, checked by TrainConfig (it sees both sections).
        _require(0 <= self.min_t < self.max_t, "dmd.min_t/max_t",
                 f"need 0 <= min_t < max_t, got {self.min_t}, {self.max_t}")
        _require(self.critic_updates_per_generator >= 1, "dmd.critic_updates_per_generator",
                 f"must be >= 1, got {self.critic_updates_per_generator}")


@dataclass(frozen=True)
class RolloutSection:
    """Self-Forcing rollout of the student (SPEC 3) and the cache's sink during training.

    num_frames:   the longest rollout (21 in the release: 7 chunks against a 9-frame window, so chunks 3..6
                  evict in training); a multiple of cache.chunk_frames.
    cache:        the streaming cache, an `rfrt.cache.CachePolicy` (sink / window / chunk frames, sink_ema_alpha,
                  rope_rule, sink_precision): what the exported model streams with at inference.
    score_frames: 0: the teacher, critic and reward see the whole rollout. Otherwise a window of this many frames
                  (a multiple of cache.chunk_frames): each iteration draws its start chunk uniformly (shared by
                  ranks), rolls out only up to the window's end and scores that window (train.stages.dmd).
    sink_ema_during_training: False (the public trainer, SPEC 3): a static sink, chunk 0's clean K/V for the
                  whole rollout (the cache's sink_ema_alpha replaced by 1); True: the inference EMA sink.
                  Either way a query attends to the sink + the last window_frames - sink_frames frames.
    """

    num_frames: int = 21
    cache: CachePolicy = field(default_factory=CachePolicy)
    sink_ema_during_training: bool = False
    score_frames: int = 0

    def __post_init__(self) -> None:
        chunk = self.cache.chunk_frames
        _require(self.num_frames >= chunk and self.num_frames % chunk == 0, "rollout.num_frames",
                 f"must be a positive multiple of rollout.cache.chunk_frames={chunk}, got {self.num_frames}")
        _require(self.score_frames == 0 or (self.score_frames % chunk == 0 and chunk <= self.score_frames
                                            <= self.num_frames),
                 "rollout.score_frames", f"must be 0 or a multiple of rollout.cache.chunk_frames={chunk} in "
                 f"[{chunk}, num_frames={self.num_frames}], got {self.score_frames}")


@dataclass(frozen=True)
class RewardSection:
    """Reward model for Re-DMD. kind "none" trains plain DMD (weights exp(beta*0) = 1 are not applied).

    beta:        weight exp(beta * r) on each sample's DMD loss (2.0 in the public code).
    weights_dir: directory of user-provided VideoReward weights (kind "videoreward").
    mean, std:   z-scoring statistics for the motion reward (the VLM reward carries its own).
    flow:        optical-flow algorithm of the motion reward.
    The VLM reward's resolution and statistics come from its own weights directory (reward_config.json).
    """

    kind: Literal["motion", "videoreward", "none"] = "motion"
    beta: float = 2.0
    weights_dir: str | None = None
    mean: float = 0.0
    std: float = 1.0
    flow: Literal["farneback", "dis"] = "farneback"

    def __post_init__(self) -> None:
        _require(math.isfinite(self.beta) and self.beta >= 0, "reward.beta", f"must be finite, >= 0, got {self.beta}")
        _require(self.std > 0, "reward.std", f"must be > 0, got {self.std}")
        _require(self.kind != "videoreward" or self.weights_dir is not None, "reward.weights_dir",
                 "kind 'videoreward' needs weights_dir (a local directory; nothing is downloaded)")


@dataclass(frozen=True)
class EMASection:
    """Generator weight EMA (SPEC 3): decay 0.99, starting at step 200. Not the cache's sink EMA."""

    weight_ema_decay: float = 0.99
    start_step: int = 200

    def __post_init__(self) -> None:
        _require(0.0 <= self.weight_ema_decay < 1.0, "ema.weight_ema_decay",
                 f"must lie in [0, 1), got {self.weight_ema_decay}")
        _require(self.start_step >= 0, "ema.start_step", f"must be >= 0, got {self.start_step}")


@dataclass(frozen=True)
class RunSection:
    """Loop bookkeeping. batch_size is per rank and per micro-step; grad_accum micro-steps make one step."""

    steps: int = 600
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    out_dir: str = "runs/default"
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int | None = 3  # the newest N checkpoints are kept; null keeps every one
    bf16: bool = True
    grad_checkpointing: bool = True
    parallel: Literal["ddp", "fsdp"] = "ddp"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            _require(getattr(self, name) >= 1, f"run.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.seed >= 0, "run.seed", f"must be >= 0, got {self.seed}")
        _require(self.keep_checkpoints is None or self.keep_checkpoints >= 1, "run.keep_checkpoints",
                 f"must be >= 1 or null (keep all), got {self.keep_checkpoints}")
        _require(bool(self.out_dir), "run.out_dir", "must be a non-empty path")


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration; every section has defaults matching SPEC 3."""

    model: ModelSection = field(default_factory=ModelSection)
    arch: ArchSection = field(default_factory=ArchSection)
    stage: StageSection = field(default_factory=StageSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    dmd: DMDSection = field(default_factory=DMDSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardSection = field(default_factory=RewardSection)
    ema: EMASection = field(default_factory=EMASection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        n = self.sampler.num_train_timesteps
        _require(self.dmd.max_t <= n, "dmd.min_t/max_t",
                 f"need max_t <= sampler.num_train_timesteps={n}, got {self.dmd.max_t}")
        _require(self.stage.kind != "ode" or self.stage.ode_context == "teacher" or bool(self.model.student_init),
                 "stage.ode_context", "\"student\" needs model.student_init: the student whose chunks the teacher "
                 "continues from")
        d = self.data
        _require(self.stage.kind != "ode" or self.stage.ode_teacher != "world"
                 or (d.phase == "fixed" and d.max_start_frame == 0 and d.layout == "canonical"
                     and bool(self.model.student_init)),
                 "stage.ode_teacher", "\"world\" needs data.phase fixed, data.max_start_frame 0 and data.layout "
                 "canonical (the prompt then leaves only the speed to chance) and model.student_init (the student "
                 f"and its text encoder), got {d.phase!r} / {d.max_start_frame} / {d.layout!r} / "
                 f"{self.model.student_init!r}")


# Keys that belong to another section and are easy to misplace; the error says where they go.
_MISPLACED = {
    ("ema", "sink_ema_alpha"): "sink_ema_alpha is the KV-cache EMA-Sink coefficient: set it in 'rollout.cache', "
                               "not in 'ema' (which holds the generator's weight_ema_decay)",
    ("ema", "alpha"): "'ema' takes weight_ema_decay (generator weight EMA); the cache's EMA-Sink "
                      "coefficient is rollout.cache.sink_ema_alpha",
    ("ema", "decay"): "did you mean weight_ema_decay?",
    ("rollout", "weight_ema_decay"): "weight_ema_decay is the generator weight EMA: set it in 'ema'",
    ("rollout.cache", "weight_ema_decay"): "weight_ema_decay is the generator weight EMA: set it in 'ema'",
    ("run", "lr"): "the learning rate lives in 'optim'",
    ("rollout", "denoising_steps"): "the sampler is its own section: set sampler.denoising_steps",
    ("dmd", "shift"): "the schedule's shift is the sampler's: set sampler.shift",
    ("dmd", "num_train_timesteps"): "the schedule is the sampler's: set sampler.num_train_timesteps",
    **{("rollout", key): f"the streaming cache is an rfrt.cache.CachePolicy: set rollout.cache.{key}"
       for key in ("sink_ema_alpha", "sink_frames", "window_frames", "chunk_frames", "rope_rule",
                   "sink_precision")},
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        _require(value in args, where, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), where, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        _require(len(value) == len(args), where, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        _require(isinstance(value, bool), where, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML (YAML 1.1) reads "2e-6" (no dot) as a string, so accept numeric strings for float fields.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), where,
                 f"expected a number, got {value!r}")
        # No training setting means anything at NaN or infinity (optim.lr: .inf trains NaN from step 1).
        _require(math.isfinite(value), where, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        _require(isinstance(value, str), where, f"expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: Any, section: str) -> T:
    if isinstance(data, cls):
        return data
    _require(isinstance(data, Mapping), section or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            hint = _MISPLACED.get((section, key))
            raise ConfigError(f"unknown key '{key}' in section '{section or '<top level>'}'"
                              + (f": {hint}" if hint else f" (allowed: {', '.join(names)})"))
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}" if section else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section or cls.__name__}: {e}") from e


def load_config(source: str | os.PathLike | Mapping[str, Any] | None, cls: type[T] = TrainConfig) -> T:
    """Build `cls` (a frozen dataclass, by default TrainConfig) from a YAML file path or a mapping.

    Missing keys take their defaults; unknown keys, wrong types and out-of-range values raise ConfigError.
    The section name used in errors is the dotted path ("" at the top level of `cls`).
    """
    if source is None:
        data: Any = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        from train.yaml_load import YamlError, read_yaml

        try:
            data = read_yaml(source)
        except YamlError as err:
            raise ConfigError(str(err)) from None
        data = {} if data is None else data
    return _build(cls, data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists) that `load_config` reads back to an equal config."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {k: (config_to_dict(v) if dataclasses.is_dataclass(v) else plain(v))
            for k, v in ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))}
