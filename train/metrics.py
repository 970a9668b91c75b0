"""Rank-0 metrics: a CSV file of per-step scalars and a tqdm progress bar.

Named metrics.py (not logging.py) so that it can never shadow the standard library's `logging`.
Every rank may call the logger; only rank 0 writes or draws. On resume, rows at or after the resumed step are
dropped (they belong to the interrupted stretch and will be logged again), so a resumed run's CSV has each
step once.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import torch


def current_rank() -> int:
    """Global rank: torch.distributed when initialised, else $RANK, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _scalar(name: str, v: Any) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"metric {name!r} must be a number, got {type(v).__name__}")
    return float(v)


class MetricsLogger:
    """CSV + tqdm logger. `log(step, loss=..., reward=...)`; columns grow as new metric names appear.

    path:        CSV file (e.g. <out_dir>/metrics.csv).
    total_steps: length of the progress bar; start_step: where a resumed run starts (drops later rows).
    rank:        defaults to `current_rank()`; loggers on ranks != 0 do nothing.
    """

    def __init__(self, path: str | os.PathLike, total_steps: int | None = None, start_step: int = 0,
                 rank: int | None = None, progress: bool = True):
        self.path = Path(path)
        self.enabled = (current_rank() if rank is None else rank) == 0
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, str]] = []
        self._bar = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or ["step"])
                self.rows = [r for r in reader if int(float(r["step"])) < start_step]
        self._rewrite()
        if progress:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)

    def _rewrite(self) -> None:
        # Rewrite through a temp file so a crash mid-write never leaves a truncated log.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def log(self, step: int, **metrics: Any) -> None:
        """Record scalar metrics (numbers or one-element tensors) for `step`; no-op off rank 0."""
        if not self.enabled:
            return
        values = {k: _scalar(k, v) for k, v in metrics.items()}
        row = {"step": str(int(step)), **{k: repr(v) if math.isfinite(v) else str(v) for k, v in values.items()}}
        new = [k for k in values if k not in self.columns]
        self.rows.append(row)
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by n steps (call once per optimiser step)."""
        if self._bar is not None:
            self._bar.update(n)

    def write(self, message: str) -> None:
        """Print a line on rank 0 without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
