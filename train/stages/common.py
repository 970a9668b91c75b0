"""What every stage shares: distributed setup, model building / loading / export, and the loop helpers.

Weights move between stages as *model directories*, the runtime's own `rfrt-model/1` format written and read
by `rfrt.model_dir` (rfrt.json, dit/, text_encoder/): every stage's export is a model StreamGenerator can
load, its manifest carrying the cache policy, sampler and video size the run was configured with. The writer
is atomic and refuses non-finite weights (see rfrt.model_dir.write_model_dir).

Gradients of data-parallel ranks are averaged by `allreduce_grads` once per optimiser step instead of through
DistributedDataParallel: a Self-Forcing rollout calls the generator many times (chunks x steps, with a
stateful KV cache) before one backward, which DDP's reducer (one forward per backward) does not model. One
all-reduce after the accumulation micro-steps is exactly DDP's averaging, and it works with gloo and nccl.
With run.parallel=fsdp the trained modules are sharded instead (train.stages.parallel) and FSDP averages their
gradients itself in each backward; `allreduce_grads` then has nothing left to do for them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from rfrt.model_dir import ModelDirError, VideoSpec, read_manifest, write_model_dir
from rfrt.models import CausalWanDiT, ModelConfig, load_model
from rfrt.text_vocab import VocabTextEncoder
from train.config import ArchSection, TrainConfig
from train.data.synthetic_world import SyntheticWorldDataset
from train.stages.parallel import as_float, local_grad_params


@dataclass(frozen=True)
class DistInfo:
    """rank / world_size of this process and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, nccl on CUDA), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(rank, world, device)


def allreduce_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average .grad over ranks (DDP semantics). Parameters without a gradient count as zero. FSDP-sharded
    parameters (DTensors) are skipped: their gradients were reduce-scattered, averaged, in backward."""
    if info.world_size == 1:
        return
    for p in local_grad_params(params):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(info.world_size)


def broadcast_int(value: int, info: DistInfo) -> int:
    """Rank 0's `value` on every rank."""
    if info.world_size == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def autocast(cfg: TrainConfig, info: DistInfo):
    """bf16 autocast when run.bf16 (on CPU this is slow: tiny configs turn it off)."""
    device_type = "cuda" if info.device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.run.bf16)


def checkpointed(fn, use: bool, *args):
    """fn(*args), recomputed in backward when `use` (only for stateless attention backends: a stateful cache
    would be read again in a later state during the recomputation)."""
    if use and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def make_optimizer(params, lr: float, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)


def optimizer_step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], cfg: TrainConfig,
                   info: DistInfo) -> float:
    """Average gradients over ranks, clip (optim.max_grad_norm), step, zero. Returns the gradient norm (over
    the whole model also when sharded: clip_grad_norm_ reduces the shards' norms)."""
    allreduce_grads(params, info)
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return as_float(norm)


# ---------------------------------------------------------------------------------------------- models

def dit_config(arch: ArchSection, channels: int = 3, frame_size: tuple[int, int] | None = None) -> ModelConfig:
    """The DiT of `arch` over `channels`-channel latents (3: the pixel decoder's RGB frames) of `frame_size`
    (H, W; needed when arch.position_embedding fixes the token grid)."""
    grid = None
    if arch.position_embedding:
        if frame_size is None:
            raise ValueError("arch.position_embedding needs the frame size (H, W) of the data")
        grid = (frame_size[0] // arch.patch_size[1], frame_size[1] // arch.patch_size[2])
    return ModelConfig(dim=arch.dim, ffn_dim=arch.ffn_dim, num_heads=arch.num_heads, num_layers=arch.num_layers,
                       in_dim=channels, out_dim=channels, text_dim=arch.text_dim, freq_dim=arch.freq_dim,
                       patch_size=tuple(arch.patch_size), text_len=arch.max_words, pos_grid=grid)


def init_dit(cfg: ModelConfig, seed: int) -> CausalWanDiT:
    """A fresh DiT, deterministic per seed (independent of the global RNG stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CausalWanDiT(cfg)


def save_model_dir(directory: str | Path, cfg: TrainConfig, dit: CausalWanDiT, text: VocabTextEncoder,
                   state: dict[str, torch.Tensor] | None = None,
                   text_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Export a stage's DiT and text encoder as an rfrt-model/1 directory whose manifest is this run's config:
    rollout.cache (the inference cache policy), sampler, and the data's height x width. `state` overrides the
    DiT's weights (e.g. the generator's EMA shadow, or the gathered weights of a sharded DiT); `text_state` the
    text encoder's (the gathered weights of a sharded encoder)."""
    return write_model_dir(directory, dit_config=dit.config, dit_weights=dit.state_dict() if state is None else state,
                           text_encoder=text if text_state is None else unsharded_text(text, text_state),
                           cache=cfg.rollout.cache, sampler=cfg.sampler,
                           video=VideoSpec(height=cfg.data.height, width=cfg.data.width))


def unsharded_text(text: VocabTextEncoder, state: dict[str, torch.Tensor]) -> VocabTextEncoder:
    """A plain VocabTextEncoder like `text` holding `state` (VocabTextEncoder.save writes its own state_dict,
    which for a sharded encoder would be the local shards)."""
    c = text.config
    with torch.random.fork_rng(devices=[]):  # the throwaway random init must not move the training RNG
        plain = VocabTextEncoder(text.vocab, c.dim, c.max_words, c.layers, c.heads)
    plain.load_state_dict(state)
    return plain


def _manifest(directory: str | Path | None, role: str, what: str):
    if directory is None:
        raise ValueError(f"{role} is not set: this stage needs the {what} of a trained model directory")
    try:
        return read_manifest(directory)
    except ModelDirError as err:
        raise FileNotFoundError(f"{role}={directory!s}: {err} (train the earlier stage first; rerunning it "
                                "re-exports an incomplete export)") from None


def load_dit(directory: str | Path | None, role: str) -> CausalWanDiT:
    """The DiT of a model directory in fp32 on the CPU (trainable); `role` (e.g. "model.teacher") names the
    config key in errors."""
    m = _manifest(directory, role, "weights")
    config = ModelConfig.from_json(m.dit_config) if m.dit_config is not None else None
    return load_model(m.dit_weights, config=config, dtype=torch.float32)


def load_text(directory: str | Path | None, role: str) -> VocabTextEncoder:
    """The vocab text encoder of a model directory."""
    m = _manifest(directory, role, "text encoder")
    if m.text_encoder.kind != "vocab":
        raise ValueError(f"{role}={directory!s}: training uses a vocab text encoder, this directory has "
                         f"{m.text_encoder.kind!r}")
    return VocabTextEncoder.load(m.text_encoder.path)


class Batches:
    """Batches of (video [B, T, 3, H, W], prompts) from a SyntheticWorldDataset, resumable exactly."""

    def __init__(self, dataset: SyntheticWorldDataset, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self._it = None

    def next(self, device: str) -> tuple[torch.Tensor, list[str]]:
        if self._it is None:
            self._it = iter(self.dataset)
        items = [next(self._it) for _ in range(self.batch_size)]
        return torch.stack([v for v, _ in items]).to(device), [p for _, p in items]

    def last_indices(self) -> list[int]:
        """The world indices of the batch `next` returned last (single-process loading, as here)."""
        d = self.dataset
        return [d.rank + k * d.world_size for k in range(d.position - self.batch_size, d.position)]

    def state_dict(self) -> dict[str, int]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.dataset.load_state_dict(state)
        self._it = None  # restart the stream at the restored position


def frozen(m: torch.nn.Module) -> torch.nn.Module:
    m.requires_grad_(False)
    return m.eval()


def accumulate(micro, accum: int) -> float:
    """Run `accum` micro-batches: micro() -> loss, each loss / accum backpropagated; returns the mean loss."""
    total = 0.0
    for _ in range(accum):
        loss = micro()
        (loss / accum).backward()
        total += loss.item() / accum
    return total
