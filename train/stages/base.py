"""The one trainer skeleton every stage subclasses: resume, the step loop, metrics, checkpoints, export.

A stage implements `build()` (models, optimisers, data), `train_step(step) -> metrics`, `state()` (every
stateful object a checkpoint must hold) and `export(directory)`. The skeleton owns nothing stage-specific,
so teacher, ODE and DMD training share the same resume and logging behaviour.

Exact resume: a checkpoint holds every object of `state()` plus the RNG states (rank 0's in the checkpoint,
each other rank's beside it), so a run of 2 + 2 steps equals one of 4 steps bit for bit on the same machine.
"""
from __future__ import annotations

import abc
import time
from pathlib import Path
from typing import Any

import torch

from train.checkpoint import (checkpoint_path, latest_checkpoint, load_rank_rng, resume, save_checkpoint,
                              save_rank_rng)
from train.config import TrainConfig, config_to_dict
from train.metrics import MetricsLogger
from train.stages.common import DistInfo, barrier, check_parallel


class StageTrainer(abc.ABC):
    """Skeleton of a training stage. `run()` trains to cfg.run.steps (resuming from out_dir) and exports."""

    def __init__(self, cfg: TrainConfig, info: DistInfo | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.info = info or DistInfo()
        self.out_dir = Path(cfg.run.out_dir)
        self.progress = progress
        check_parallel(cfg, self.info)
        # Model init and data order depend on the seed only, so every rank builds identical weights.
        torch.manual_seed(cfg.run.seed + 1000 * self.info.rank)
        self.build()

    @abc.abstractmethod
    def build(self) -> None:
        """Create models, optimisers and data iterators."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Name -> object with state_dict()/load_state_dict(): everything exact resume needs."""

    @abc.abstractmethod
    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step (all its accumulation micro-steps). Returns scalar metrics."""

    @abc.abstractmethod
    def export(self, directory: Path) -> None:
        """Write the stage's product as a model directory (see train.stages.common)."""

    def _resume(self) -> int:
        ck = latest_checkpoint(self.out_dir)
        if ck is None:
            return 0
        info = resume(ck, self.state(), map_location=self.info.device)
        if self.info.world_size > 1 and not self.info.is_main:
            load_rank_rng(ck, self.info.rank)
        return info.step

    def _save(self, step: int) -> None:
        path = checkpoint_path(self.out_dir, step)
        if self.info.is_main:
            save_checkpoint(path, step, self.state(), extra={"config": config_to_dict(self.cfg)})
        if self.info.world_size > 1:
            save_rank_rng(path, self.info.rank)
        barrier(self.info)

    def run(self) -> dict[str, float]:
        """Train from the latest checkpoint (or step 0) to cfg.run.steps; export to <out_dir>/export.

        Returns the last step's metrics (empty when there was nothing left to do).
        """
        run = self.cfg.run
        start = self._resume()
        last: dict[str, float] = {}
        t0 = time.perf_counter()
        with MetricsLogger(self.out_dir / "metrics.csv", total_steps=run.steps, start_step=start,
                           rank=self.info.rank, progress=self.progress) as log:
            for step in range(start, run.steps):
                last = self.train_step(step)
                last["wall_s"] = time.perf_counter() - t0
                if step % run.log_every == 0 or step + 1 == run.steps:
                    log.log(step, **last)
                log.advance()
                if (step + 1) % run.checkpoint_every == 0 or step + 1 == run.steps:
                    self._save(step + 1)
        # Also export when a finished run's export is missing (e.g. after stopping a run early with a lower
        # run.steps: re-running resumes at the last checkpoint and only exports).
        if self.info.is_main and (start < run.steps or not (self.out_dir / "export").is_dir()):
            self.export(self.out_dir / "export")
        barrier(self.info)
        return last
