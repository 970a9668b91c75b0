"""Training: config errors are one message (exit 2, no traceback), duplicate YAML keys and non-finite
hyper-parameters are refused, and a non-finite loss stops the run keeping the last good checkpoint (issue #14)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train import launch
from train.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "train" / "configs" / "tiny_test.yaml"


def _launch(tmp_path, config, *sets):
    args = ["--config", str(config), "--no-progress", "--threads", "1", "--set", f"run.out_dir={tmp_path / 'run'}"]
    for s in sets:
        args += ["--set", s]
    return launch.main(args)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.launch: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_duplicate_yaml_keys_are_an_error(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(TINY.read_text() + "\nrun: {steps: 3}\n")
    assert _launch(tmp_path, cfg) == 2
    _one_line_error(capsys, "dup.yaml", "duplicate key 'run'")
    cfg.write_text("run:\n  steps: 2\n  steps: 3\n")
    assert _launch(tmp_path, cfg) == 2
    _one_line_error(capsys, "duplicate key 'steps' (first at line 2)", "line 3")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sets, needles", [
    (["optim.lr=.inf"], ["optim.lr", "finite", "inf"]),
    (["optim.critic_lr=-.inf"], ["optim.critic_lr"]),
    (["optim.lr=.nan"], ["optim.lr"]),
    (["optim.lrr=1"], ["unknown key 'lrr'"]),
    (["run.steps=abc"], ["run.steps"]),
])
def test_bad_values_are_one_message(tmp_path, capsys, sets, needles):
    assert _launch(tmp_path, TINY, *sets) == 2
    _one_line_error(capsys, *needles)
    assert not (tmp_path / "run").exists()


def test_unreadable_configs_are_one_message(tmp_path, capsys):
    assert _launch(tmp_path, tmp_path / "missing.yaml") == 2
    _one_line_error(capsys, "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert _launch(tmp_path, listed) == 2
    _one_line_error(capsys, "list.yaml", "mapping")
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("run:\n\tsteps: 2\n")
    assert _launch(tmp_path, tabs) == 2
    _one_line_error(capsys, "tabs.yaml", "line 2")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # A finite but absurd learning rate: step 0 is finite, its update overflows the weights, step 1's loss is NaN.
    rc = _launch(tmp_path, TINY, "optim.lr=1e30", "run.steps=6", "run.checkpoint_every=1")
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "step 1" in err and "non-finite" in err and "step_00000001.pt" in err, err
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step_00000001.pt"  # nothing written after the bad step
    assert not (run / "export").exists()
    states = torch.load(latest_checkpoint(run), weights_only=True)["states"]
    assert states["dit"]  # the teacher stage's DiT
    for name, tensor in states["dit"].items():
        assert torch.isfinite(tensor).all(), name


def test_resume_removes_orphans_and_retention_prunes(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    orphan = run / "checkpoints" / ".step_00000003.pt.abc123.tmp"
    orphan.write_bytes(b"x" * 100)
    assert _launch(tmp_path, TINY, "run.steps=6", "run.checkpoint_every=1", "run.keep_checkpoints=2") == 0
    assert not orphan.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000005.pt", "step_00000006.pt"]
