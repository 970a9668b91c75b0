"""The README's benchmark command must collect every benchmarks/bench_*.py suite.

pytest's default python_files is test_*.py, under which `pytest benchmarks/` silently collected nothing and
wrote an empty --benchmark-json (found in the GPU-readiness review). This runs the README command's
collection in a subprocess, from the repository root, exactly as a user would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"`(python -m pytest benchmarks/[^`]*)`", text)
    assert m, "README.md no longer states the benchmark command"
    return m.group(1).split()


def test_readme_benchmark_command_collects_every_suite(tmp_path):
    cmd = _readme_command()
    # Collect only, and point the JSON at a scratch file: the command is checked, not run.
    args = [a for a in cmd[3:] if not a.startswith("--benchmark-json")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    suites = {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert suites, "no benchmark suites found"
    missing = suites - collected
    assert not missing, f"the README benchmark command does not collect {sorted(missing)}"
