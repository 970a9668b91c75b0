"""`python -m train.launch` from the repository root: `train` imports without any sys.path edit, --set takes
dotted paths into the composed sections, and the export is a model directory the generator loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_module_launch_with_nested_override(tmp_path):
    import rfrt

    # Only rfrt's own location on the path (as after `pip install`); train comes from the working directory.
    env = {**os.environ, "PYTHONPATH": str(Path(rfrt.__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train.launch", "--config", "train/configs/tiny_test.yaml", "--no-progress",
           "--threads", "1", "--set", f"run.out_dir={tmp_path / 'run'}", "--set", "run.steps=1",
           "--set", "run.checkpoint_every=1", "--set", "stage.kind=teacher",
           "--set", "rollout.cache.sink_ema_alpha=0.25", "--set", "sampler.denoising_steps=[1000, 400]"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final:" in proc.stdout
    manifest = json.loads((tmp_path / "run/export/rfrt.json").read_text())
    assert manifest["cache"]["sink_ema_alpha"] == 0.25 and manifest["sampler"]["denoising_steps"] == [1000, 400]
    bad = subprocess.run(cmd[:-2] + ["--set", "rollout.window_frames=9"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "rollout.cache.window_frames" in bad.stderr
