"""Launch one training stage: `python -m train.launch --config train/configs/X.yaml [--set section.key=value]`.

Run from the repository root (`train` is a repo-level package next to the installed `rfrt`). Under
`torchrun --nproc_per_node N -m train.launch ...` every process joins one process group (gloo on CPU,
nccl on CUDA) and gradients are averaged over ranks; a plain `python` run is one CPU/GPU process. Runs resume
from the latest checkpoint in run.out_dir, so re-running the same command continues an interrupted run.
"""
from __future__ import annotations

import argparse
import sys

import torch
import yaml

from train.config import ConfigError, TrainConfig, load_config
from train.stages import build_stage
from train.stages.common import setup_distributed
from train.yaml_load import YamlError, read_yaml


def _override(data: dict, assignment: str) -> None:
    """Apply `section.key=value` (or a deeper path, e.g. rollout.cache.window_frames=12); value is YAML."""
    key, sep, value = assignment.partition("=")
    path = key.split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    node = data
    for name in path[:-1]:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {name} is not a section")
    node[path[-1]] = yaml.safe_load(value)


def _config(args) -> TrainConfig:
    data = read_yaml(args.config)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{args.config}: the top level must be a mapping of sections (run:, optim:, ...), "
                          f"got a {type(data).__name__}")
    for assignment in args.set:
        _override(data, assignment)
    return load_config(data)


def _one_line(err: BaseException) -> str:
    """PyYAML's messages span lines ('in "<file>", line 3, column 1'): one line for one mistake."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help="YAML training config (train/configs/*.yaml)")
    ap.add_argument("--set", action="append", default=[], help="override: section.key=value (repeatable)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs still go to metrics.csv)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = _config(args)
    except (ConfigError, YamlError) as err:  # the user's config: one message, no traceback, usage status
        print(f"train.launch: error: {_one_line(err)}", file=sys.stderr)
        return 2
    info = setup_distributed()
    try:
        trainer = build_stage(cfg, info, progress=not args.no_progress)
        last = trainer.run()
    except (ValueError, OSError) as err:  # config-dependent failures (missing teacher, diverged run, disk)
        print(f"train.launch: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 1
    if info.is_main:
        print("final:", {k: round(v, 6) for k, v in last.items()}, flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
