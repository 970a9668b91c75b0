"""run.parallel=fsdp: shard the trained modules with FSDP2, and move their full (unsharded) state in and out.

Sharding (`fully_shard`, torch.distributed.fsdp): every rank builds the same full weights from the seed, then
each trained DiT is sharded per transformer block, then at the root; a trained text encoder per layer, then
at the root. Frozen modules (the teacher in the ODE and DMD stages, the text encoder after stage 1) stay
whole on every rank. FSDP reduce-scatters (averages over ranks) each parameter's gradient in backward, so
`allreduce_grads` skips sharded parameters; clipping and the optimiser work on the local shards (the
gradient norm is global).
This works with nccl on GPUs and, verified by tests/test_train_fsdp.py, with gloo on CPU.

The DiT needs two things beyond "per block, then root", both because `CausalWanDiT.cross_kv` runs outside
any block's forward (it projects the text through every block's cross-attention k/v once per prompt batch,
and the rollout reuses that CrossKV for every chunk):
  * each block's cross_attn.k / .v / .norm_k form their own FSDP unit, gathered by their own module calls;
  * cross_kv is registered as a forward method of the root (FSDP gathers the root's parameters around it),
    and a forward pre-hook turns raw text into CrossKV *before* the root's own pre-forward: otherwise
    forward(raw text) would call cross_kv nested inside itself and reshard the root mid-forward.
Every unit, the root included, reshards after forward: a no-grad rollout must not leave gathered copies
behind that an optimiser step would make stale.
FSDP warns once per unit that it "returned a view tensor" (heads() reshapes): harmless here, as nothing
modifies a module output in place (tests/test_train_fsdp.py checks fsdp against ddp).

Checkpoints and exports hold full state dicts in exactly the layout of a single-process / DDP run
(`module.state_dict()`, `optimizer.state_dict()` with integer parameter ids), so a checkpoint can resume
under any run.parallel. `get_*_state_dict(full_state_dict=True, cpu_offload=True)` gathers them (every rank
takes part; rank 0 gets the tensors, in CPU memory), `set_*_state_dict(full_state_dict=True)` shards them back.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from rfrt.models import CausalWanDiT, CrossKV
from rfrt.text_vocab import VocabTextEncoder
from train.config import ConfigError, TrainConfig

# Backends FSDP2's collectives (all-gather, reduce-scatter) run on; gloo is verified by the CPU tests.
FSDP_BACKENDS = ("nccl", "gloo")

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


def fsdp_enabled(cfg: TrainConfig, world_size: int) -> bool:
    """Shard with FSDP: run.parallel=fsdp over several ranks (one process has nothing to shard: it trains
    unsharded, exactly like ddp on one process)."""
    return cfg.run.parallel == "fsdp" and world_size > 1


def check_fsdp_backend(cfg: TrainConfig, world_size: int) -> None:
    """FSDP needs an initialised process group whose backend runs its collectives."""
    if not fsdp_enabled(cfg, world_size):
        return
    backend = dist.get_backend() if dist.is_initialized() else "none (no process group initialised)"
    if backend not in FSDP_BACKENDS:
        raise ConfigError(f"run.parallel=fsdp needs a torch.distributed process group with backend nccl (GPUs) "
                          f"or gloo (CPU); this one's backend is {backend}. Launch with torchrun, or use "
                          "run.parallel=ddp")


def device_mesh(device: str) -> DeviceMesh:
    """The 1-D mesh of all ranks (the default process group) on `device`'s type."""
    return init_device_mesh(torch.device(device).type, (dist.get_world_size(),))


# ---------------------------------------------------------------------------------------------- sharding

def _cross_kv_first(module: CausalWanDiT, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook (runs before FSDP's): raw text -> CrossKV through the FSDP-registered cross_kv."""
    if len(args) > 2 and not isinstance(args[2], CrossKV):
        args = (*args[:2], module.cross_kv(args[2]), *args[3:])
    elif "text" in kwargs and not isinstance(kwargs["text"], CrossKV):
        kwargs = {**kwargs, "text": module.cross_kv(kwargs["text"])}
    return args, kwargs


def shard_dit(model: CausalWanDiT, mesh: DeviceMesh) -> CausalWanDiT:
    """Shard a trained DiT in place: cross-attention k/v units, then each block, then the root."""
    for block in model.blocks:
        ca = block.cross_attn
        fully_shard([ca.k, ca.v, ca.norm_k], mesh=mesh, reshard_after_forward=True)
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    register_fsdp_forward_method(model, "cross_kv")
    model.register_forward_pre_hook(_cross_kv_first, prepend=True, with_kwargs=True)
    return model


def shard_text(model: VocabTextEncoder, mesh: DeviceMesh) -> VocabTextEncoder:
    """Shard a trained text encoder in place: each layer, then the root (encode() goes through forward)."""
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def shard_trained(module: torch.nn.Module, cfg: TrainConfig, world_size: int, device: str) -> torch.nn.Module:
    """`module` sharded for training when FSDP is on (before its optimiser is built), else unchanged."""
    if not fsdp_enabled(cfg, world_size):
        return module
    mesh = device_mesh(device)
    if isinstance(module, CausalWanDiT):
        return shard_dit(module, mesh)
    if isinstance(module, VocabTextEncoder):
        return shard_text(module, mesh)
    raise TypeError(f"no FSDP sharding plan for {type(module).__name__}")


def is_sharded(module: torch.nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in module.modules())


def local_grad_params(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters whose gradients still need averaging over ranks (FSDP already reduced its DTensors')."""
    return [p for p in params if not isinstance(p, DTensor)]


def as_float(t: torch.Tensor) -> float:
    """A scalar tensor as float; a DTensor scalar (e.g. clip_grad_norm_ over shards) is replicated."""
    return float(t.full_tensor() if isinstance(t, DTensor) else t)


# ---------------------------------------------------------------------------------------------- full state

def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's unsharded state dict. Sharded: every rank must call it; rank 0 gets the tensors (CPU)."""
    if not is_sharded(module):
        return module.state_dict()
    return get_model_state_dict(module, options=_GATHER)


def _param_names(module: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Name of each optimiser parameter in optimizer.state_dict()'s integer-id order."""
    names = {id(p): n for n, p in module.named_parameters()}
    missing = [i for i, p in enumerate(p for g in opt.param_groups for p in g["params"]) if id(p) not in names]
    if missing:
        raise ValueError(f"optimiser parameters {missing[:5]} are not parameters of the given module")
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def ids_to_names(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """optimizer.state_dict() layout (integer ids) -> torch.distributed.checkpoint's (parameter names)."""
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def names_to_ids(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Inverse of `ids_to_names`."""
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


class FullModelState:
    """Checkpoint view of a sharded module: full state dict out (gathered), full state dict in (re-sharded)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.module)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.module, state, options=_SCATTER)


class FullOptimizerState:
    """Checkpoint view of the optimiser of a sharded module (`module` holds all its parameters), in the
    integer-id layout of optimizer.state_dict()."""

    def __init__(self, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        self.module, self.opt = module, opt
        self.names = _param_names(module, opt)

    def state_dict(self) -> dict[str, Any]:
        # An optimiser that has not stepped holds no tensors: its own state_dict is already the full one.
        # (get_optimizer_state_dict would first fill it by a zero-lr step, which counts as Adam's step 1.)
        if not self.opt.state:
            return self.opt.state_dict()
        full = get_optimizer_state_dict(self.module, self.opt, options=_GATHER)
        return names_to_ids(full, self.names) if full else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state["state"]:  # see state_dict
            self.opt.load_state_dict(state)
            return
        set_optimizer_state_dict(self.module, self.opt, ids_to_names(state, self.names), options=_SCATTER)


def model_state(module: torch.nn.Module) -> Any:
    """What a stage's state() lists for `module`: the module itself, or its full-state view when sharded."""
    return FullModelState(module) if is_sharded(module) else module


def optimizer_state(module: torch.nn.Module, opt: torch.optim.Optimizer) -> Any:
    """What a stage's state() lists for `opt` (the optimiser of `module`'s parameters)."""
    return FullOptimizerState(module, opt) if is_sharded(module) else opt
