"""ModelConfig: the architecture of the causal Wan2.1 DiT (SPEC §1) as one frozen, validated value.

It reads both public spellings of the same architecture:
- Wan's original ``config.json`` (``dim``, ``num_heads``, ``in_dim``, ...), as shipped next to
  ``diffusion_pytorch_model.safetensors`` in ``Wan2.1-T2V-1.3B``;
- diffusers' ``transformer/config.json`` (``num_attention_heads``, ``attention_head_dim``, ...).

Only the text-to-video variant is supported: image conditioning (Wan's ``model_type`` i2v/flf2v, diffusers'
``image_dim`` / ``added_kv_proj_dim``), windowed attention and models without q/k norm are refused with a
clear error rather than silently built wrong.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .._checks import positive_int
from ..rope import ROPE_THETA, axis_pairs

# Keys that name the same architecture in both spellings but that rfrt does not need beyond validation.
_WAN_KEYS = {"dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim",
             "patch_size", "eps", "text_len", "model_type", "window_size", "qk_norm", "cross_attn_norm",
             "pos_grid", "rope_theta"}  # rfrt's extensions (ModelConfig), absent from Wan's own configs
_DIFFUSERS_KEYS = {"patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                   "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps",
                   "image_dim", "added_kv_proj_dim", "rope_max_seq_len", "pos_embed_seq_len"}


class ConfigError(ValueError):
    """A model config that is malformed, inconsistent or describes an unsupported Wan variant."""


def _positive_int(name: str, value: Any) -> int:
    return positive_int(f"ModelConfig.{name}", value, ConfigError)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the causal Wan2.1 DiT; the defaults are the Wan2.1-T2V-1.3B release (1,418,996,800
    parameters).

    dim:        hidden size (1536 for 1.3B); num_heads * head_dim.
    ffn_dim:    feed-forward inner size (8960).
    num_heads:  attention heads (12); head_dim = dim // num_heads must be even and >= 6 (3-axis RoPE).
    num_layers: transformer blocks (30).
    in_dim:     latent channels in (16); out_dim: latent channels out (16).
    text_dim:   text-encoder width (4096, umT5-XXL); text_len: text positions attended (512).
    freq_dim:   width of the timestep sinusoid (256).
    patch_size: (pt, ph, pw) patchification of the latent, (1, 2, 2).
    eps:        epsilon of every LayerNorm / RMSNorm (1e-6).
    pos_grid:   (h, w) token grid of an optional learned spatial position embedding added after the patch
                embedding (rfrt's tiny default model). Wan has RoPE only and leaves it None: RoPE attention is
                relative, so a tiny model sees no absolute position and cannot put an object where a prompt
                says (docs/design.md). Fixes the resolution to pos_grid * patch.
    rope_theta: base of the 3-axis RoPE (10000 in Wan, which has no config key for it); every cache takes it
                from here through rfrt.cache.CacheLayout.
    """

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    text_len: int = 512
    pos_grid: tuple[int, int] | None = None
    rope_theta: float = ROPE_THETA

    def __post_init__(self) -> None:
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim",
                     "freq_dim", "text_len"):
            _positive_int(name, getattr(self, name))
        patch = self.patch_size
        if not isinstance(patch, tuple) or len(patch) != 3:
            raise ConfigError(f"ModelConfig.patch_size must be a tuple of 3 positive ints, got {patch!r}")
        for p in patch:
            _positive_int("patch_size[i]", p)
        if self.dim % self.num_heads != 0:
            raise ConfigError(f"ModelConfig.dim {self.dim} is not divisible by num_heads {self.num_heads}")
        try:
            axis_pairs(self.head_dim)
        except ValueError as err:
            raise ConfigError(f"ModelConfig: head_dim {self.head_dim} does not fit 3-axis RoPE: {err}") from None
        grid = self.pos_grid
        if grid is not None and (not isinstance(grid, tuple) or len(grid) != 2
                                 or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
            raise ConfigError(f"ModelConfig.pos_grid must be None or a tuple of 2 positive ints, got {grid!r}")
        if self.freq_dim % 2 != 0:
            raise ConfigError(f"ModelConfig.freq_dim must be even (cos | sin halves), got {self.freq_dim}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps < 1:
            raise ConfigError(f"ModelConfig.eps must be a float in (0, 1), got {self.eps!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 1:
            raise ConfigError(f"ModelConfig.rope_theta must be a number > 1, got {self.rope_theta!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        """Latent elements per token and channel: pt * ph * pw."""
        return math.prod(self.patch_size)

    def tokens_per_frame(self, latent_h: int, latent_w: int) -> int:
        """Tokens of one latent frame of size latent_h x latent_w (1560 for 60 x 104 with patch (1, 2, 2))."""
        ph, pw = self.patch_size[1:]
        if latent_h % ph or latent_w % pw:
            raise ConfigError(f"latent {latent_h}x{latent_w} is not divisible by patch {ph}x{pw}")
        return (latent_h // ph) * (latent_w // pw)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ModelConfig":
        """Build from a Wan or diffusers config mapping; ``_``-prefixed metadata keys are ignored."""
        keys = {k for k in raw if not k.startswith("_")}
        if "num_attention_heads" in keys or "attention_head_dim" in keys:
            return cls._from_diffusers({k: raw[k] for k in keys})
        return cls._from_wan({k: raw[k] for k in keys})

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        """Read a Wan ``config.json`` or a diffusers ``transformer/config.json``."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read model config {path}: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"model config {path} is not a JSON object")
        try:
            return cls.from_dict(raw)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    @classmethod
    def _from_wan(cls, raw: dict[str, Any]) -> "ModelConfig":
        _reject_unknown(raw, _WAN_KEYS, "Wan")
        _require(raw, ("dim", "ffn_dim", "num_heads", "num_layers"), "Wan")
        if raw.get("model_type", "t2v") != "t2v":
            raise ConfigError(f"only the text-to-video Wan model is supported, got model_type "
                              f"{raw['model_type']!r}")
        if list(raw.get("window_size", (-1, -1))) != [-1, -1]:
            raise ConfigError(f"windowed attention is not supported, got window_size {raw['window_size']!r}")
        for flag in ("qk_norm", "cross_attn_norm"):
            if raw.get(flag, True) is not True:
                raise ConfigError(f"{flag}=False is not supported (the released model uses it)")
        kwargs = {k: raw[k] for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim",
                                      "text_dim", "freq_dim", "eps", "text_len", "rope_theta") if k in raw}
        if "patch_size" in raw:
            kwargs["patch_size"] = _patch(raw["patch_size"])
        if raw.get("pos_grid") is not None:
            grid = raw["pos_grid"]
            kwargs["pos_grid"] = tuple(grid) if isinstance(grid, (list, tuple)) else grid
        return cls(**kwargs)

    @classmethod
    def _from_diffusers(cls, raw: dict[str, Any]) -> "ModelConfig":
        _reject_unknown(raw, _DIFFUSERS_KEYS, "diffusers")
        _require(raw, ("num_attention_heads", "attention_head_dim", "ffn_dim", "num_layers"), "diffusers")
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if raw.get(key) is not None:
                raise ConfigError(f"image-conditioned Wan models are not supported ({key}={raw[key]!r})")
        if raw.get("cross_attn_norm", True) is not True:
            raise ConfigError("cross_attn_norm=False is not supported (the released model uses it)")
        if raw.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
            raise ConfigError(f"qk_norm {raw['qk_norm']!r} is not supported, need 'rms_norm_across_heads'")
        heads = _positive_int("num_attention_heads", raw["num_attention_heads"])
        head_dim = _positive_int("attention_head_dim", raw["attention_head_dim"])
        kwargs: dict[str, Any] = {"dim": heads * head_dim, "num_heads": heads}
        renames = {"in_channels": "in_dim", "out_channels": "out_dim", "text_dim": "text_dim",
                   "freq_dim": "freq_dim", "ffn_dim": "ffn_dim", "num_layers": "num_layers", "eps": "eps"}
        for src, dst in renames.items():
            if raw.get(src) is not None:
                kwargs[dst] = raw[src]
        if "out_dim" not in kwargs and "in_dim" in kwargs:
            kwargs["out_dim"] = kwargs["in_dim"]  # diffusers: out_channels None means in_channels
        if "patch_size" in raw:
            kwargs["patch_size"] = _patch(raw["patch_size"])
        return cls(**kwargs)


def _reject_unknown(raw: Mapping[str, Any], known: set[str], flavour: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown keys in {flavour} model config: {unknown}")


def _require(raw: Mapping[str, Any], keys: tuple[str, ...], flavour: str) -> None:
    # These have no default shared by every Wan size, so a config without them is ambiguous.
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ConfigError(f"{flavour} model config lacks required keys {missing}")


def _patch(value: Any) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"patch_size must be a list of 3 ints, got {value!r}")
    return tuple(value)  # type: ignore[return-value]
