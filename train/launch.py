"""Launch one training stage: `python train/launch.py --config train/configs/X.yaml [--set section.key=value]`.

Under `torchrun --nproc_per_node N train/launch.py ...` every process joins one process group (gloo on CPU,
nccl on CUDA) and gradients are averaged over ranks; a plain `python` run is one CPU/GPU process. Runs resume
from the latest checkpoint in run.out_dir, so re-running the same command continues an interrupted run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# Runnable from a source checkout: appended, never prepended, so an installed rfrt (with its compiled core)
# wins over the source tree, also in the subprocesses of whoever imports this module.
for _p in (_ROOT, _ROOT / "python"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

import torch  # noqa: E402
import yaml  # noqa: E402

from train.config import ConfigError, TrainConfig, load_config  # noqa: E402
from train.yaml_load import YamlError, read_yaml  # noqa: E402
from train.stages import build_stage  # noqa: E402
from train.stages.common import setup_distributed  # noqa: E402


def _override(data: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or "." not in key:
        raise SystemExit(f"--set expects section.key=value, got {assignment!r}")
    section, name = key.split(".", 1)
    node = data.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"--set {assignment!r}: {section} is not a section")
    node[name] = yaml.safe_load(value)


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
