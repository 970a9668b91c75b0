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

from train.config import load_config  # noqa: E402
from train.stages import build_stage  # noqa: E402
from train.stages.common import setup_distributed  # noqa: E402


def _override(data: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or "." not in key:
        raise SystemExit(f"--set expects section.key=value, got {assignment!r}")
    section, name = key.split(".", 1)
    data.setdefault(section, {})[name] = yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help="YAML training config (train/configs/*.yaml)")
    ap.add_argument("--set", action="append", default=[], help="override: section.key=value (repeatable)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs still go to metrics.csv)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.config, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    for assignment in args.set:
        _override(data, assignment)
    cfg = load_config(data)
    info = setup_distributed()
    trainer = build_stage(cfg, info, progress=not args.no_progress)
    last = trainer.run()
    if info.is_main:
        print("final:", {k: round(v, 6) for k, v in last.items()}, flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
