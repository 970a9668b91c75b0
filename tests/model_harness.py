"""Helpers shared by the model tests: modules with every parameter random."""
from __future__ import annotations

import torch
from rfrt.models.config import ModelConfig
from rfrt.models.dit import CausalWanDiT


def randomize(module: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter ~ N(0, scale^2), in place (a fresh DiT has zero adaLN tables and gates, so it would hide
    whole code paths); seeded by the caller's torch.manual_seed."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


def random_dit(cfg: ModelConfig, seed: int = 0) -> CausalWanDiT:
    """A CausalWanDiT of `cfg` in eval mode with every parameter random."""
    torch.manual_seed(seed)
    return randomize(CausalWanDiT(cfg).eval())
