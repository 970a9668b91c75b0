"""Training stages on one skeleton (base.StageTrainer): teacher, ODE init, teacher forcing, DMD / Re-DMD, regress."""
from __future__ import annotations

from train.config import TrainConfig
from train.stages.base import StageTrainer
from train.stages.common import DistInfo


def build_stage(cfg: TrainConfig, info: DistInfo | None = None, progress: bool = True) -> StageTrainer:
    """The trainer of cfg.stage.kind (imported lazily: each stage pulls in only what it needs)."""
    kind = cfg.stage.kind
    if kind == "teacher":
        from train.stages.teacher import TeacherTrainer
        return TeacherTrainer(cfg, info, progress)
    if kind == "ode":
        from train.stages.ode import ODETrainer
        return ODETrainer(cfg, info, progress)
    if kind == "dmd":
        from train.stages.dmd import DMDTrainer
        return DMDTrainer(cfg, info, progress)
    if kind == "forcing":
        from train.stages.forcing import ForcingTrainer
        return ForcingTrainer(cfg, info, progress)
    if kind == "regress":
        from train.stages.regress import RegressTrainer
        return RegressTrainer(cfg, info, progress)
    raise ValueError(f"unknown stage.kind {kind!r}")


__all__ = ["StageTrainer", "build_stage"]
