"""Reward models for Re-DMD: one interface (`RewardModel`), a weight-free motion reward and VideoReward.

Heavy dependencies (OpenCV, transformers) are imported only when a reward that needs them is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import RewardModel, check_unit_frames, to_unit_range

if TYPE_CHECKING:
    from train.config import RewardSection


def build_reward(cfg: "RewardSection", device: str = "cpu") -> RewardModel | None:
    """The reward model a `train.config.RewardSection` asks for, or None for kind "none" (plain DMD)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "motion":
        from .motion import MotionReward
        return MotionReward(mean=cfg.mean, std=cfg.std, method=cfg.flow)
    if cfg.kind == "videoreward":
        from .video_reward import VideoRewardModel
        return VideoRewardModel.from_pretrained(cfg.weights_dir, device=device)
    raise ValueError(f"unknown reward kind {cfg.kind!r}")


__all__ = ["RewardModel", "build_reward", "check_unit_frames", "to_unit_range"]
