"""The embedded default model streaming on the CPU: steady-state chunk latency of `StreamGenerator()` (4
denoising forwards + the context pass + pixel decoding + uint8 conversion), against the video's own frame rate.

"Faster than real time" means chunk_frames / latency > the model's fps; extra_info records both, the
real-time factor, the prompt and the thread count. Skips when no default model is installed.
Run: pytest benchmarks/bench_default_model.py --benchmark-json=benchmarks/results/cpu-default-model.json
"""
from __future__ import annotations

import pytest
import torch

from rfrt.runtime.generator import StreamGenerator
from rfrt.model_dir import default_model_path

PROMPT = "a large red circle moves right on a blue background"
WARM_CHUNKS = 6  # past the filling chunks: every timed chunk folds the sink and attends to the full window


def test_default_model_chunk_latency(benchmark):
    if default_model_path() is None:
        pytest.skip("no default model installed")
    gen = StreamGenerator(device="cpu")
    gen.reset(PROMPT, seed=0)
    for _ in range(WARM_CHUNKS):
        gen.step()
    chunk = benchmark.pedantic(gen.step, rounds=60, warmup_rounds=3)
    frames = chunk.frames.shape[0]
    fps = frames / benchmark.stats.stats.median
    benchmark.extra_info.update(prompt=PROMPT, chunk_frames=frames, video_fps=gen.fps, generated_fps=fps,
                                realtime_factor=fps / gen.fps, threads=torch.get_num_threads(),
                                resolution=f"{gen.height}x{gen.width}")
    assert chunk.frames.dtype == torch.uint8
