"""The DMD stage under `torchrun --nproc_per_node 2` (gloo on CPU).

Run as a test, this file prepares a tiny teacher and ODE student in one process, then launches itself under
torchrun as the worker: each rank trains the Re-DMD stage for 2 steps and dumps its exit steps and weights.
Checks: the run succeeds, every rollout's exit step is the same on both ranks, and the gradient averaging
keeps the two replicas' student and critic weights identical although each rank saw different prompts/noise.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _torchrun() -> str | None:
    sibling = Path(sys.executable).parent / "torchrun"
    return str(sibling) if sibling.is_file() else shutil.which("torchrun")


def _worker(root: Path) -> None:
    from test_train_stages import dmd_sections, make_cfg
    from train.stages import build_stage
    from train.stages.common import setup_distributed

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    info = setup_distributed()
    trainer = build_stage(make_cfg(root / "dmd", **dmd_sections(root)), info, progress=False)
    metrics = trainer.run()
    torch.save({"exit_steps": trainer.exit_steps, "student": trainer.student.state_dict(),
                "critic": trainer.critic.state_dict(), "metrics": metrics,
                "first_noise_draw": torch.randn(3)}, root / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(_torchrun() is None, reason="torchrun is not installed")
def test_dmd_stage_two_ranks_gloo(tmp_path):
    from test_train_stages import run_stage

    torch.set_num_threads(1)
    run_stage(tmp_path / "teacher", stage={"kind": "teacher"})
    run_stage(tmp_path / "ode", stage={"kind": "ode"}, model={"teacher": str(tmp_path / "teacher/export")})
    # the child imports what this process imports: the installed rfrt (with its compiled core), not the source
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": "1"}
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", str(Path(__file__)), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["exit_steps"]) == 6 and r0["exit_steps"] == r1["exit_steps"]
    for name in ("student", "critic"):
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), f"{name}.{k} differs between ranks"
    assert not torch.equal(r0["first_noise_draw"], r1["first_noise_draw"])  # ranks draw different noise
    assert all(torch.isfinite(torch.tensor(v)) for v in r0["metrics"].values())
    assert (tmp_path / "dmd/export/dit/model.safetensors").is_file()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
