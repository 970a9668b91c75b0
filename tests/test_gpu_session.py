"""benchmarks/gpu_session.sh is tested on the CPU before a GPU ever sees it: the dry run (tiny shapes, CPU
build) must pass every stage, stay within the files the device tool returns, and end with the summary."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_dry_run_passes_every_stage(tmp_path):
    import sys

    env = dict(os.environ, RFRT_GPU_DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable, RFRT_COMMIT="test",
               RFRT_BUILD_JOBS="2")
    run = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8, files  # the device tool returns at most 8 files
    assert set(files) == {"summary.txt", "build.log", "probe.jsonl", "probe.log", "tests.log", "sanitizer.log",
                          "profile.txt"}
    summary = (tmp_path / "summary.txt").read_text()
    assert run.stdout.rstrip().endswith(summary.rstrip())  # the table is what the output tail shows
    stages = {line.split()[0]: line.split()[1] for line in summary.splitlines()[2:9] if line.strip()}
    assert stages == {s: "ok" for s in ("build", "stream", "micro", "kernels", "tests", "sanitize", "profile")}, \
        summary
    records = [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    names = {r["name"] for r in records}
    for want in ("graphs-bf16mod", "graphs-fp32mod", "eager-fp32mod", "reference-loop", "sdpa-keys216",
                 "rfrt-cache_write-qkv", "device-vs-cpu-float32", "error-flag", "chunk-by-category-ms"):
        assert want in names, (want, sorted(names))
    eager = next(r for r in records if r["name"] == "eager-fp32mod")
    assert eager["max_abs_graphs_vs_eager"] == 0.0 and eager["finite"]
    assert all(r.get("ok", True) for r in records if r["stage"] == "kernels")
    assert "commit test" in summary
