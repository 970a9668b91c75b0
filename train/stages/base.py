"""The one trainer skeleton every stage subclasses: resume, the step loop, metrics, checkpoints, export.

A stage implements `build()` (models, optimisers, data), `train_step(step) -> metrics`, `state()` (every
stateful object a checkpoint must hold) and `export(directory)`. The skeleton owns nothing stage-specific,
so teacher, ODE and DMD training share the same resume and logging behaviour. Every rank calls state()'s
state_dict()s and export() (gathering an FSDP-sharded model is a collective); rank 0 alone writes files.

Exact resume: a checkpoint holds every object of `state()` plus the RNG states (rank 0's in the checkpoint,
each other rank's beside it, with its own `rank_local` objects: its data position), so a run of 2 + 2 steps
equals one of 4 steps bit for bit on the same machine.
"""
from __future__ import annotations

import abc
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rfrt.checks import NonFiniteError
from rfrt.model_dir import ModelDirError, verify_model_dir
from train.checkpoint import (checkpoint_path, latest_checkpoint, load_rank_rng, prune_checkpoints,
                              remove_orphans, resume, save_rank_rng, save_states)
from train.config import TrainConfig, config_to_dict
from train.metrics import MetricsLogger
from train.stages.common import DistInfo, barrier, broadcast_int
from train.stages.parallel import check_fsdp_backend


class StageTrainer(abc.ABC):
    """Skeleton of a training stage. `run()` trains to cfg.run.steps (resuming from out_dir) and exports."""

    # Names in state() whose state is each rank's own (every rank reads its own shard of the data).
    rank_local: tuple[str, ...] = ("data",)

    def __init__(self, cfg: TrainConfig, info: DistInfo | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.info = info or DistInfo()
        self.out_dir = Path(cfg.run.out_dir)
        self.progress = progress
        check_fsdp_backend(cfg, self.info.world_size)  # fsdp over ranks needs a process group it runs on
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
        """Write the stage's product as a model directory (train.stages.common.save_model_dir: atomic, with
        this run's config as its manifest). Called on every rank: gather the weights there, write them on
        rank 0 only."""

    def _resume(self) -> int:
        if self.info.is_main:
            for orphan in remove_orphans(self.out_dir):  # a kill mid-write: as large as a checkpoint, never read
                print(f"removed {orphan}, left by a checkpoint write that was interrupted", file=sys.stderr)
        barrier(self.info)
        ck = latest_checkpoint(self.out_dir)
        if ck is None:
            return 0
        state = self.state()
        local = {name: state[name] for name in self.rank_local if name in state}
        other_rank = self.info.world_size > 1 and not self.info.is_main
        info = resume(ck, state, map_location=self.info.device, skip=tuple(local) if other_rank else ())
        if other_rank:
            load_rank_rng(ck, self.info.rank, local)
        return info.step

    def _save(self, step: int) -> None:
        path = checkpoint_path(self.out_dir, step)
        states = {name: obj.state_dict() for name, obj in self.state().items()}  # every rank: see module doc
        if self.info.is_main:
            save_states(path, step, states, extra={"config": config_to_dict(self.cfg)})
        if self.info.world_size > 1:
            save_rank_rng(path, self.info.rank, {name: states[name] for name in self.rank_local if name in states})
        barrier(self.info)
        if self.info.is_main:  # after the barrier: every rank's file of the new checkpoint is on disk
            prune_checkpoints(self.out_dir, self.cfg.run.keep_checkpoints)

    def _non_finite(self, metrics: dict[str, float]) -> dict[str, float]:
        """The step's non-finite metrics (loss, grad_norm ...); with several ranks, any rank's count for all,
        so that every rank stops at the same step instead of waiting in the next collective."""
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if self.info.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([int(bool(bad))], dtype=torch.long, device=self.info.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and not bad:
                bad = {"another rank's metrics": math.nan}
        return bad

    def _diverged(self, step: int, bad: dict[str, float]) -> NonFiniteError:
        last = latest_checkpoint(self.out_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        return NonFiniteError(
            f"step {step}: non-finite {', '.join(f'{k} = {v}' for k, v in bad.items())}; training stopped before "
            f"writing a checkpoint or an export, and {kept}. The run diverged: lower optim.lr / "
            f"optim.critic_lr (now {self.cfg.optim.lr:g} / {self.cfg.optim.critic_lr:g}) or set "
            "optim.max_grad_norm, then rerun (it resumes from that checkpoint)")

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
                bad = self._non_finite(last)  # the metrics are host floats already: no extra sync
                if bad or step % run.log_every == 0 or step + 1 == run.steps:
                    log.log(step, **last)
                if bad:
                    raise self._diverged(step, bad)
                log.advance()
                if (step + 1) % run.checkpoint_every == 0 or step + 1 == run.steps:
                    self._save(step + 1)
        # Also export when a finished run's export is missing or incomplete (a run stopped early with a lower
        # run.steps, or one killed while exporting by an older writer): re-running resumes at the last
        # checkpoint and only exports. Rank 0 decides for all: the others must join its export's gathers.
        export_dir = self.out_dir / "export"
        export = start < run.steps
        if not export and self.info.is_main:
            try:
                verify_model_dir(export_dir)
            except ModelDirError as err:
                print(f"{export_dir} is not a complete export ({err}): exporting it again", file=sys.stderr)
                export = True
        if broadcast_int(int(export), self.info):
            self.export(export_dir)
        barrier(self.info)
        return last
