"""Live viewer under load: generation speed of `rfrt serve` with 20 viewers against none (target: within 10 %).

The server runs in its own process on the tiny model of tests/test_generator_tiny.py, unpaced, one thread;
20 WebSocket viewers in this process; phases of 0 and 20 viewers alternate REPS times so that load from other
processes hits both alike (tests/test_serve_load.py's `load_phases`, which also checks that every viewer gets
its frames). The timed quantity is the server's own per-chunk step time, so the benchmark round is one run of
the phases and the figures are in extra_info: median step seconds alone / watched and their ratio.
Run: pytest benchmarks/bench_serve_load.py --benchmark-json=benchmarks/results/<name>.json
"""
from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the load harness and tiny model

pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")
pytest.importorskip("psutil")

import test_serve_load as harness  # noqa: E402

REPS = 4
TARGET = 1.10  # watched / alone per-chunk step time


def test_twenty_viewers_keep_generation_speed(benchmark, tmp_path):
    with harness.serve_tiny_model(tmp_path) as (proc, port):
        res = benchmark.pedantic(lambda: asyncio.run(harness.load_phases(port, proc.pid, REPS)), rounds=1,
                                 iterations=1)
    res["stalled"].close()
    base, loaded = statistics.median(res["alone"]), statistics.median(res["watched"])
    benchmark.extra_info.update(config="tiny model, 32x32, unpaced, 1 thread", viewers=harness.VIEWERS, reps=REPS,
                                phase_s=harness.PHASE_S, alone_step_s=base, watched_step_s=loaded,
                                ratio=loaded / base, chunks_alone=len(res["alone"]),
                                chunks_watched=len(res["watched"]), target=TARGET)
    assert loaded <= base * TARGET, f"generation slowed by viewers: {base:.4f} s -> {loaded:.4f} s per chunk"
