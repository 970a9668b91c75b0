"""train.metrics: CSV contents, growing columns, rank-0 only, resume truncation."""

import csv

import pytest
import torch

from train.metrics import MetricsLogger


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_rows_and_new_columns(tmp_path):
    p = tmp_path / "m.csv"
    with MetricsLogger(p, total_steps=3, rank=0, progress=True) as log:
        log.log(0, loss=torch.tensor(0.5), lr=2e-6)
        log.advance()
        log.log(1, loss=0.25, reward=1.5)  # a new column appears mid-run
        log.advance()
    rows = read(p)
    assert [r["step"] for r in rows] == ["0", "1"]
    assert float(rows[0]["loss"]) == 0.5 and float(rows[0]["lr"]) == 2e-6 and rows[0]["reward"] == ""
    assert float(rows[1]["reward"]) == 1.5 and rows[1]["lr"] == ""


def test_only_rank_zero_writes(tmp_path):
    p = tmp_path / "m.csv"
    log = MetricsLogger(p, rank=1)
    log.log(0, loss=1.0)
    log.write("hello")
    log.close()
    assert not p.exists()


def test_resume_drops_rows_of_the_interrupted_stretch(tmp_path):
    p = tmp_path / "m.csv"
    log = MetricsLogger(p, rank=0, progress=False)
    for s in range(5):
        log.log(s, loss=float(s))
    log.close()
    log = MetricsLogger(p, start_step=3, rank=0, progress=False)
    log.log(3, loss=30.0)
    log.close()
    rows = read(p)
    assert [(r["step"], float(r["loss"])) for r in rows] == [("0", 0.0), ("1", 1.0), ("2", 2.0), ("3", 30.0)]


def test_rejects_non_scalars(tmp_path):
    log = MetricsLogger(tmp_path / "m.csv", rank=0, progress=False)
    with pytest.raises(ValueError, match="loss"):
        log.log(0, loss=torch.ones(2))
    with pytest.raises(TypeError, match="name"):
        log.log(0, name="x")
