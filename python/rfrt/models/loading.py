"""Load the DiT from every public checkpoint layout of SPEC §1.1, safely and without doubling memory.

Layouts (detected from contents, never from file names):
- Wan original: a directory with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (no prefix), or
  shards listed by a ``*.safetensors.index.json``; or a bare safetensors file.
- Reward Forcing: a flat torch pickle state dict with ``model.``-prefixed keys.
- Self-Forcing: a torch pickle ``{generator, generator_ema, critic}``; ``use_ema`` picks the generator.
- diffusers: a pipeline directory with ``transformer/`` (or that directory itself), diffusers names
  (``blocks.N.attn1.to_q``, ``scale_shift_table``, ...), renamed by ``diffusers_names``.
Wrapper prefixes (FSDP ``_fsdp_wrapped_module.``, activation checkpointing, torch.compile) are stripped.

Safety: only safetensors or ``torch.load(weights_only=True)``; a pickle that needs arbitrary code is refused.
Memory: the module is built on the meta device and the loaded tensors are assigned into it
(``load_state_dict(assign=True)``); zip pickles are memory-mapped, so a same-dtype CPU load copies nothing.
Architecture: ``config.json`` when present, otherwise tensor shapes (head_dim assumed 128, as in every Wan
release; pass ``config=`` to override).
"""
from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rfrt.checks import check_finite

from .config import ConfigError, ModelConfig
from .diffusers_names import diffusers_to_wan, is_diffusers_key
from .dit import CausalWanDiT

WAN_HEAD_DIM = 128  # every Wan2.1 release; the head count is not recoverable from tensor shapes
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_SHOW = 5


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is unsafe, or does not match the model."""


def load_model(path: str | Path, *, use_ema: bool = False, config: ModelConfig | None = None,
               dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> CausalWanDiT:
    """Build the DiT from a checkpoint file or directory (any layout above).

    use_ema: for Self-Forcing dicts, load ``generator_ema`` instead of ``generator``.
    config:  architecture override; default is config.json, else inferred from shapes.
    dtype:   parameter dtype; default the checkpoint's (``patch_embedding.weight``).
    """
    state, file_config = read_checkpoint(path, use_ema=use_ema)
    cfg = config or file_config or infer_config(state, path)
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    check_state_dict(model, state, path)
    dtype = dtype or state["patch_embedding.weight"].dtype
    if not dtype.is_floating_point:
        raise CheckpointError(f"{path}: parameter dtype must be floating point, got {dtype}")
    # Convert one tensor at a time, dropping the source as we go, so peak memory stays ~one model. Each tensor
    # is checked for NaN / infinity in the target dtype (a cast to fp16 can overflow): one NaN in the DiT makes
    # every frame black, silently.
    for name in list(state):
        state[name] = state[name].to(device=device, dtype=dtype)
        check_finite(name, state[name], path)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def read_checkpoint(path: str | Path, *, use_ema: bool = False) -> tuple[dict[str, torch.Tensor],
                                                                          ModelConfig | None]:
    """Read a checkpoint into a Wan-named state dict plus its config.json (None when there is none)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    config = None
    if path.is_dir():
        if (path / "transformer").is_dir():
            path = path / "transformer"  # diffusers pipeline: the DiT lives in transformer/
        if (path / "config.json").is_file():
            try:
                config = ModelConfig.from_json(path / "config.json")
            except ConfigError as err:
                raise CheckpointError(str(err)) from None
        raw = _read_directory(path)
    else:
        raw = _read_file(path)
    state = _select_generator(raw, path, use_ema)
    return normalize_names(state, path), config


def normalize_names(state: Mapping[str, torch.Tensor], source: str | Path = "state dict") -> dict[str, torch.Tensor]:
    """Strip wrapper and ``model.`` prefixes and map diffusers names onto Wan's. Unmappable keys are kept
    unchanged so that validation reports them as unexpected."""
    names = {}
    for key in state:
        clean = key
        for wrapper in _WRAPPERS:
            clean = clean.replace(wrapper, "")
        names[key] = clean
    if names and all(n.startswith("model.") for n in names.values()):
        names = {k: n[len("model."):] for k, n in names.items()}
    if any(is_diffusers_key(n) for n in names.values()):
        names = {k: diffusers_to_wan(n) or n for k, n in names.items()}
    out: dict[str, torch.Tensor] = {}
    for key, name in names.items():
        if name in out:
            raise CheckpointError(f"{source}: two checkpoint keys map to the same parameter {name!r}")
        out[name] = state[key]
    return out


def infer_config(state: Mapping[str, torch.Tensor], source: str | Path = "state dict") -> ModelConfig:
    """Architecture from tensor shapes of a Wan-named state dict (num_heads = dim // 128)."""
    needed = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
              "blocks.0.ffn.0.weight", "head.head.weight")
    missing = [k for k in needed if k not in state]
    if len(missing) == len(needed):
        _unknown_format(state, source, f"lacks {missing}")
    if missing:
        raise CheckpointError(f"{source}: cannot infer the architecture from tensor shapes, it lacks {missing}; "
                              "provide config.json or pass config=ModelConfig(...)")
    pe = state["patch_embedding.weight"]
    if pe.dim() != 5:
        raise CheckpointError(f"{source}: patch_embedding.weight has shape {tuple(pe.shape)}, expected 5-D")
    dim, in_dim, *patch = pe.shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if dim % WAN_HEAD_DIM:
        raise CheckpointError(f"{source}: dim {dim} is not a multiple of {WAN_HEAD_DIM}; the head count cannot "
                              "be inferred, pass config=ModelConfig(...) or provide config.json")
    try:
        return ModelConfig(dim=dim, ffn_dim=state["blocks.0.ffn.0.weight"].shape[0], num_heads=dim // WAN_HEAD_DIM,
                           num_layers=layers, in_dim=in_dim,
                           out_dim=state["head.head.weight"].shape[0] // math.prod(patch),
                           text_dim=state["text_embedding.0.weight"].shape[1],
                           freq_dim=state["time_embedding.0.weight"].shape[1], patch_size=tuple(patch))
    except ConfigError as err:
        raise CheckpointError(f"{source}: inferred architecture is invalid: {err}") from None


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise ONE CheckpointError listing missing, unexpected and mis-shaped keys (first few, with counts)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not expected.keys() & state.keys():
        _unknown_format(state, source, "has none of the DiT's parameter names")
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
                    for k in expected.keys() & state.keys() if tuple(state[k].shape) != expected[k])
    problems = [f"{len(items)} {label}: {items[:_SHOW]}{' ...' if len(items) > _SHOW else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
                if items]
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))


def _unknown_format(state: Mapping[str, torch.Tensor], source: str | Path, why: str) -> None:
    keys = list(state)[:_SHOW]
    raise CheckpointError(f"unknown checkpoint format in {source}: it {why} (its {len(state)} keys start "
                          f"{keys}); expected a Wan, Reward Forcing, Self-Forcing or diffusers Wan DiT")


def _select_generator(raw: object, source: Path, use_ema: bool) -> Mapping[str, torch.Tensor]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"unknown checkpoint format in {source}: top level is {type(raw).__name__}, "
                              "expected a state dict")
    if "generator" in raw or "generator_ema" in raw:  # Self-Forcing training checkpoint
        key = "generator_ema" if use_ema else "generator"
        if key not in raw:
            raise CheckpointError(f"{source}: Self-Forcing checkpoint has no {key!r} (keys {sorted(raw)})")
        raw = raw[key]
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{source}: {key!r} is {type(raw).__name__}, expected a state dict")
    elif use_ema:
        raise CheckpointError(f"{source}: use_ema=True but the checkpoint is not a Self-Forcing "
                              "{generator, generator_ema} dict")
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"unknown checkpoint format in {source}: {len(bad)} entries are not tensors "
                              f"({bad[:_SHOW]}); expected a flat state dict or a Self-Forcing dict")
    return raw


def _read_file(path: Path) -> object:
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic[:4] == b"PK\x03\x04" or magic[:1] == b"\x80":  # torch zip archive / legacy pickle stream
        return _torch_load(path, mmap=magic[:4] == b"PK\x03\x04")
    if len(magic) == 8:
        return _read_safetensors(path)
    raise CheckpointError(f"{path} is neither safetensors nor a torch checkpoint (file too short)")


def _torch_load(path: Path, mmap: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # Keep torch's line naming the rejected global; drop its advice to retry with weights_only=False.
        detail = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln), "")
        raise CheckpointError(f"refusing to load {path}: it is a pickle that needs arbitrary code to load, "
                              f"which rfrt never runs ({detail or 'rejected by weights_only=True'}). Convert it "
                              "to safetensors or a plain tensor state dict in a trusted environment.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read torch checkpoint {path} (corrupt or truncated?): {err}") from None


def _read_safetensors(path: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            keys = fh.keys() if names is None else names
            missing = sorted(set(keys) - set(fh.keys()))
            if missing:
                raise CheckpointError(f"{path} lacks {len(missing)} tensors its index lists: {missing[:_SHOW]}")
            return {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors (corrupt, truncated or not a checkpoint): "
                              f"{err}") from None


def _read_directory(path: Path) -> dict[str, torch.Tensor]:
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path} holds several shard indexes {[p.name for p in indexes]}; point at one")
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"cannot read shard index {indexes[0]}: {err!r}") from None
        by_file: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(file, []).append(name)
        state: dict[str, torch.Tensor] = {}
        for file, names in by_file.items():
            if not (path / file).is_file():
                raise CheckpointError(f"shard {path / file} listed in {indexes[0].name} is missing")
            state.update(_read_safetensors(path / file, names))
        return state
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        found = [p.name for p in files]
        raise CheckpointError(f"{path}: expected one safetensors file or a shard index, found {found}")
    return _read_safetensors(files[0])
