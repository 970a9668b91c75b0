"""The reward interface of Re-DMD: raw scores per video, z-scored with the model's own statistics.

Frames are float in [0, 1], [B, T, 3, H, W]. The public Reward Forcing code fed [-1, 1] pixels to a model that
expects [0, 1] (SPEC 3); `check_unit_frames` rejects negative values loudly so that bug cannot come back.
Rewards never receive gradient: `__call__` runs under no_grad and returns detached tensors.
"""

from __future__ import annotations

import abc
import math
from typing import Sequence

import torch

# A decoder's output may overshoot [0, 1] by rounding; anything beyond this is a range bug, not noise.
_RANGE_TOLERANCE = 1e-3


def check_unit_frames(frames: torch.Tensor) -> None:
    """Validate a video batch [B, T, 3, H, W], floating point, values in [0, 1] (small tolerance)."""
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise TypeError(f"frames must be floating point in [0, 1], got {frames.dtype}")
    lo, hi = frames.min().item(), frames.max().item()
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"frames must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; "
                         "convert [-1, 1] videos with (x + 1) / 2 first")


def to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """Map a [-1, 1] video (decoder / synthetic-world output) to [0, 1], clamped. Any shape."""
    return ((video.float() + 1.0) * 0.5).clamp(0.0, 1.0)


class RewardModel(abc.ABC):
    """Base class: `score` gives raw rewards [B]; calling the object gives z-scored, detached rewards [B]."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"z-score statistics need a finite mean and std > 0, got mean={mean}, std={std}")
        self.mean, self.std = float(mean), float(std)

    @abc.abstractmethod
    def score(self, frames: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Raw rewards [B] (float32, CPU or the model's device) of frames [B, T, 3, H, W] in [0, 1]."""

    def zscore(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw - mean) / std, elementwise."""
        return (raw - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """z-scored rewards [B], detached (the reward model receives no gradient)."""
        return self.zscore(self.score(frames.detach(), prompts)).detach()
