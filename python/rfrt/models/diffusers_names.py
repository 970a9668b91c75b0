"""Parameter-name map between diffusers' ``WanTransformer3DModel`` and Wan's original names (used by rfrt).

Facts from diffusers' ``transformer_wan.py``: attention modules are ``attn1`` (self) / ``attn2`` (cross)
with ``to_q/to_k/to_v/to_out.0``; diffusers' ``norm2`` is the affine LayerNorm before cross-attention (Wan's
``norm3``; diffusers' non-affine ``norm1``/``norm3`` carry no parameters); ``ffn.net.0.proj`` / ``ffn.net.2``
are the FFN Linears; per-block ``scale_shift_table`` is Wan's ``modulation`` and the top-level one the
head's; ``proj_out`` is ``head.head``; the time / text MLPs live under ``condition_embedder``. Shapes are
identical on both sides, so the map is a pure rename.
"""
from __future__ import annotations

import re

# Non-block names: diffusers -> Wan.
_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
_TOP_PARAMS = {"scale_shift_table": "head.modulation"}

# Names inside blocks.N: diffusers -> Wan.
_BLOCK = {
    "scale_shift_table": "modulation",
    "norm2.weight": "norm3.weight",
    "norm2.bias": "norm3.bias",
    "ffn.net.0.proj.weight": "ffn.0.weight",
    "ffn.net.0.proj.bias": "ffn.0.bias",
    "ffn.net.2.weight": "ffn.2.weight",
    "ffn.net.2.bias": "ffn.2.bias",
}
for _src, _dst in (("attn1", "self_attn"), ("attn2", "cross_attn")):
    for _a, _b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"),
                   ("norm_q", "norm_q"), ("norm_k", "norm_k")):
        for _p in ("weight", "bias"):
            _BLOCK[f"{_src}.{_a}.{_p}"] = f"{_dst}.{_b}.{_p}"

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_TOP_INV = {v: k for k, v in _TOP.items()}
_TOP_PARAMS_INV = {v: k for k, v in _TOP_PARAMS.items()}

# Names that only occur in diffusers' layout: one of them marks a state dict as diffusers-named.
DIFFUSERS_MARKERS = ("condition_embedder.", "proj_out.", "scale_shift_table", ".attn1.", ".attn2.")


def is_diffusers_key(name: str) -> bool:
    return any(m in name or name.startswith(m) for m in DIFFUSERS_MARKERS)


def _rename(name: str, top: dict[str, str], top_params: dict[str, str], block: dict[str, str]) -> str | None:
    if name in top_params:
        return top_params[name]
    m = _BLOCK_RE.match(name)
    if m:
        inner = block.get(m.group(2))
        return None if inner is None else f"blocks.{m.group(1)}.{inner}"
    module, _, param = name.rpartition(".")
    if module in top and param in ("weight", "bias"):
        return f"{top[module]}.{param}"
    return None


def diffusers_to_wan(name: str) -> str | None:
    """Wan name of a diffusers parameter name, or None if it has no counterpart."""
    return _rename(name, _TOP, _TOP_PARAMS, _BLOCK)


def wan_to_diffusers(name: str) -> str | None:
    """diffusers name of a Wan / rfrt parameter name, or None if it has no counterpart."""
    return _rename(name, _TOP_INV, _TOP_PARAMS_INV, _BLOCK_INV)
