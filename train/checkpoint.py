"""Atomic checkpoints, exact resume, and the generator's weight EMA.

A checkpoint holds the state_dict of every stateful object the loop owns (generator, critic, their
optimisers, the weight EMA, the data iterator...), the step, and the RNG states of python, numpy, torch CPU
and every CUDA device. Restoring all of them makes a resumed run continue bit for bit like an uninterrupted
one (given deterministic kernels). The public trainer never saved with its shipped config (SPEC 3); here a
write either fully lands or leaves the previous file untouched: temp file in the same directory, fsync,
os.replace, then fsync of the directory so the rename itself survives a crash. Housekeeping: the temp files a
kill mid-write leaves are removed at the next start (`remove_orphans`), `prune_checkpoints` keeps the last N
(run.keep_checkpoints), and files get the umask's mode (0644 usually; `FILE_MODE`), not mkstemp's 0600.

With several ranks, each rank's RNG and data position differ: rank 0 writes the checkpoint, and every rank
writes its own RNG state and rank-local state dicts beside it with `save_rank_rng` / restores them with
`load_rank_rng`. State dicts of FSDP-sharded objects
are the full (gathered) ones, so a checkpoint has the same layout whatever run.parallel wrote it.
"""

from __future__ import annotations

import copy
import os
import random
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

FORMAT_VERSION = 1
# Checkpoint files get the mode a new file would (0666 less the umask: 0644 under the usual 022), not
# mkstemp's 0600.
FILE_MODE = 0o666
_CHECKPOINT = re.compile(r"step_(\d+)\.pt")
# atomic_torch_save's temp files: .<name>.<random>.tmp; a kill mid-write leaves one behind.
_TEMP = re.compile(r"\.step_\d+(\.rng_rank\d+)?\.pt\..+\.tmp")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


# ---------------------------------------------------------------------------------------------- RNG states

def capture_rng_state() -> dict[str, Any]:
    """Snapshot of python, numpy (global), torch CPU and all CUDA RNGs, as tensors / plain python values.

    numpy's state is converted to tensors so the checkpoint loads with torch.load(weights_only=True).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    # torch.cuda.is_initialized avoids creating a CUDA context just to save an RNG nobody used.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`. CUDA states are restored only where CUDA is present."""
    random.setstate(_as_python_rng(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise RuntimeError(f"checkpoint holds {len(state['cuda'])} CUDA RNG states but "
                               f"{torch.cuda.device_count()} devices are visible")
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_rng(s: Any) -> tuple:
    # Serialisation may turn the inner tuples into lists; random.setstate needs tuples.
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


# ---------------------------------------------------------------------------------------------- atomic IO

def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically: readers see the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new `.<name>.<random>.tmp` beside `path`, created with FILE_MODE: the kernel applies the umask
    (tempfile.mkstemp's 0600 would hide checkpoints from the user's group; os.umask is not thread-safe)."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp
        except FileExistsError:
            continue


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. platforms where directories cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- checkpoints

@dataclass(frozen=True)
class ResumeInfo:
    """What `resume` hands back besides the objects it restored in place."""

    step: int
    extra: dict[str, Any]


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    """Canonical file name of the checkpoint at `step`: <out_dir>/checkpoints/step_00000100.pt."""
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}.pt"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint under <out_dir>/checkpoints, or None (temp files are ignored)."""
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return None
    found = _checkpoints(d)
    return found[-1][1] if found else None


def _checkpoints(d: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)))


def remove_orphans(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files that a kill during a checkpoint write left in <out_dir>/checkpoints (each one
    is as large as a checkpoint). Call on rank 0 before training starts, when no write is in flight."""
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return []
    orphans = [p for p in d.iterdir() if _TEMP.fullmatch(p.name) and p.is_file()]
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans


def prune_checkpoints(out_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Keep the `keep` highest-step checkpoints (with their per-rank RNG files) and delete the older ones;
    None keeps every checkpoint. Returns the deleted checkpoint paths."""
    if keep is None:
        return []
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return []
    old = [p for _, p in _checkpoints(d)[:-keep]]
    for p in old:
        for rank_file in d.glob(f"{p.stem}.rng_rank*.pt"):
            rank_file.unlink(missing_ok=True)
        p.unlink(missing_ok=True)  # the checkpoint last: a kill here leaves it loadable, never a lone RNG file
    return old


def save_checkpoint(path: str | os.PathLike, step: int, objects: Mapping[str, Stateful],
                    extra: Mapping[str, Any] | None = None, include_rng: bool = True) -> Path:
    """Atomically write step, every object's state_dict, the RNG states and `extra` to `path`.

    objects: e.g. {"generator": m, "critic": c, "generator_optim": o, "ema": WeightEMA, "data": dataset};
    anything with state_dict()/load_state_dict(). Call it on rank 0 only (see `save_rank_rng` for the rest).
    """
    return save_states(path, step, {name: obj.state_dict() for name, obj in objects.items()}, extra, include_rng)


def save_states(path: str | os.PathLike, step: int, states: Mapping[str, Any],
                extra: Mapping[str, Any] | None = None, include_rng: bool = True) -> Path:
    """`save_checkpoint` with the state dicts already taken: with FSDP-sharded models every rank takes part
    in gathering them, and rank 0 then writes them here."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    payload = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "states": dict(states),
        "rng": capture_rng_state() if include_rng else None,
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def resume(path: str | os.PathLike, objects: Mapping[str, Stateful], map_location: str | torch.device = "cpu",
           restore_rng: bool = True, strict: bool = True, skip: tuple[str, ...] = ()) -> ResumeInfo:
    """Load a checkpoint written by `save_checkpoint` into `objects` (in place) and restore the RNG states.

    strict: every name in `objects` must be in the checkpoint and vice versa (a missing critic or optimiser
    state would silently break exact resume otherwise).
    skip: names not loaded here (a rank other than 0 restores its rank-local objects from its rank file).
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {payload.get('format_version')!r}")
    states = payload["states"]
    if strict and set(states) != set(objects):
        raise KeyError(f"{path}: checkpoint holds {sorted(states)}, caller passed {sorted(objects)}")
    for name, obj in objects.items():
        if name in states and name not in skip:
            obj.load_state_dict(states[name])
    if restore_rng:
        if payload["rng"] is None:
            raise ValueError(f"{path}: saved without RNG states; pass restore_rng=False to load anyway")
        restore_rng_state(payload["rng"])
    return ResumeInfo(step=payload["step"], extra=payload["extra"])


def rank_rng_path(checkpoint: str | os.PathLike, rank: int) -> Path:
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.rng_rank{rank}.pt")


def save_rank_rng(checkpoint: str | os.PathLike, rank: int, states: Mapping[str, Any] | None = None) -> Path:
    """Each rank's own RNG states, and the state dicts of its rank-local objects (e.g. its data position),
    written atomically beside the (rank-0) checkpoint."""
    payload = {"rng": capture_rng_state(), "states": dict(states or {})}
    return atomic_torch_save(payload, rank_rng_path(checkpoint, rank))


def load_rank_rng(checkpoint: str | os.PathLike, rank: int, objects: Mapping[str, Stateful] | None = None) -> None:
    """Restore what `save_rank_rng` wrote for `rank` into `objects` (in place) and the RNG states."""
    path = rank_rng_path(checkpoint, rank)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "rng" not in payload:  # an older rank file: the RNG states alone
        payload = {"rng": payload, "states": {}}
    missing = sorted(set(objects or {}) - set(payload["states"]))
    if missing:
        raise KeyError(f"{path}: holds no rank-local state for {missing} (each rank needs its own to resume)")
    for name, obj in (objects or {}).items():
        obj.load_state_dict(payload["states"][name])
    restore_rng_state(payload["rng"])


# ---------------------------------------------------------------------------------------------- weight EMA

class WeightEMA:
    """EMA of the generator's weights: shadow <- d * shadow + (1 - d) * param (d = weight_ema_decay).

    Before `start_step` the shadow simply tracks the weights (the public trainer creates its EMA at that step
    from the current weights, which is the same thing). Kept in fp32 whatever the model's dtype, so a decay
    of 0.99 is not lost to bf16 rounding. Not to be confused with the KV cache's sink EMA (sink_ema_alpha).

    On an FSDP-sharded model the shadow is sharded like the parameters (DTensors: each rank averages its own
    shard, no communication); state_dict / full_shadow gather it (every rank must call them) and
    load_state_dict takes the full tensors and keeps each rank's shard.
    """

    def __init__(self, model: torch.nn.Module, weight_ema_decay: float = 0.99, start_step: int = 200):
        if not 0.0 <= weight_ema_decay < 1.0:
            raise ValueError(f"weight_ema_decay must lie in [0, 1), got {weight_ema_decay}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.decay = float(weight_ema_decay)
        self.start_step = int(start_step)
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Call once after each generator optimiser step; `step` is the step just completed."""
        params = dict(model.named_parameters())
        if params.keys() != self.shadow.keys():
            raise KeyError("model parameters differ from the ones the EMA was built with")
        for n, p in params.items():
            if step < self.start_step:
                self.shadow[n].copy_(p.detach())
            else:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the EMA weights into `model` (e.g. a separate inference copy)."""
        for n, p in model.named_parameters():
            p.copy_(self.shadow[n].to(p.dtype))

    def ema_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of `model` holding the EMA weights."""
        m = copy.deepcopy(model)
        self.copy_to(m)
        return m

    def full_shadow(self) -> dict[str, torch.Tensor]:
        """The shadow as full tensors (gathered, on CPU, when sharded; the shadow itself otherwise)."""
        return {n: v.full_tensor().cpu() if isinstance(v, DTensor) else v for n, v in self.shadow.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "start_step": self.start_step, "shadow": self.full_shadow()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["shadow"].keys() != self.shadow.keys():
            raise KeyError("EMA state holds different parameter names than this model")
        self.decay, self.start_step = float(state["decay"]), int(state["start_step"])
        for n, v in state["shadow"].items():
            s = self.shadow[n]
            if isinstance(s, DTensor):  # every rank holds the full tensor: keep its own shard, no communication
                v = distribute_tensor(v.to(s.device), s.device_mesh, s.placements, src_data_rank=None)
            s.copy_(v)
