"""Per-chunk latency of StreamGenerator (RingCache) against the plain-PyTorch SPEC §2 loop (ReferenceCache),
and flatness: per-chunk time at chunk ~1000 against chunk ~10.

CPU suite on a tiny fp32 config (the runtime's Python and cache overheads dominate at this size; the DiT itself
is shared by both sides). Run: pytest benchmarks/bench_generator.py --benchmark-json=benchmarks/results/<name>.json
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F

from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache
from rfrt.decoders import PixelDecoder
from rfrt.runtime.generator import StreamGenerator
from rfrt.model_dir import LoadedModel, VideoSpec
from rfrt.models import CausalWanDiT, ModelConfig
from rfrt.sampling import SamplerConfig, warped_sigmas, warped_timesteps

# name -> (DiT config kwargs, pixels per side)
CONFIGS = {"cpu-tiny": (dict(dim=64, ffn_dim=128, num_heads=4, num_layers=4, in_dim=3, out_dim=3, text_dim=32,
                             freq_dim=32, text_len=16), 16)}
WARM_CHUNKS = 6  # past the filling chunks: every timed chunk folds the sink


class _Text:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.randn(len(prompts), 8, self.dim, generator=torch.Generator().manual_seed(0))


def _model(name: str) -> LoadedModel:
    kwargs, size = CONFIGS[name]
    torch.manual_seed(0)
    dit = CausalWanDiT(ModelConfig(**kwargs)).eval().requires_grad_(False)
    return LoadedModel(dit=dit, text_encoder=_Text(kwargs["text_dim"]), decoder=PixelDecoder(),
                       video=VideoSpec(size, size, 16))


class _ReferenceLoop:
    """SPEC §2.1 sampling over the ReferenceCache oracle (fp32 compute), one chunk per call."""

    def __init__(self, model: LoadedModel, policy: CachePolicy, size: int) -> None:
        cfg = model.dit.config
        self.dit, self.latent = model.dit, (1, policy.chunk_frames, cfg.in_dim, size, size)
        self.text = F.pad(model.text_encoder.encode(["x"]), (0, 0, 0, cfg.text_len - 8))
        self.ctx = self.dit.cross_kv(self.text)
        grid = size // cfg.patch_size[1]
        self.cache = ReferenceCache(CacheLayout.for_model(cfg, policy, grid, grid), compute_dtype=torch.float32)
        self.steps = list(zip(warped_timesteps(SamplerConfig()).tolist(), warped_sigmas(SamplerConfig()).tolist()))
        self.noise = torch.Generator().manual_seed(0)
        self.frames = policy.chunk_frames

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        draws = [torch.randn(self.latent, generator=self.noise) for _ in self.steps]
        self.cache.begin_chunk()
        x = draws[0]
        for i, (t, sigma) in enumerate(self.steps):
            x0 = x - sigma * self.dit(x, torch.full((1, self.frames), t), self.ctx, self.cache)
            if i + 1 < len(self.steps):
                nxt = self.steps[i + 1][1]
                x = (1 - nxt) * x0 + nxt * draws[i + 1]
        self.dit(x0, torch.zeros(1, self.frames), self.ctx, self.cache)
        return x0


def _info(benchmark, name: str, impl: str, **extra) -> None:
    kwargs, size = CONFIGS[name]
    benchmark.extra_info.update(config=name, impl=impl, dit=kwargs, pixels=size, dtype="float32",
                                policy=dataclasses.asdict(CachePolicy()) | {"tokens_per_frame": (size // 2) ** 2},
                                threads=torch.get_num_threads(), **extra)


@pytest.mark.parametrize("impl", ["stream-ring", "reference-loop"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cpu_chunk_latency(benchmark, name, impl):
    model = _model(name)
    if impl == "stream-ring":
        runner = StreamGenerator(model, device="cpu")
        runner.reset("x", seed=0)
    else:
        runner = _ReferenceLoop(model, CachePolicy(), CONFIGS[name][1])
    for _ in range(WARM_CHUNKS):
        runner.step()
    _info(benchmark, name, impl, reference=f"test_cpu_chunk_latency[{name}-reference-loop]")
    benchmark.pedantic(runner.step, rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cpu_flatness_chunk_1000_vs_10(benchmark, name):
    """Times chunks ~1000 (the benchmark rounds) and records chunks 10..19 beside them: a cache that grows or
    re-rotates with stream length would make the late chunks slower."""
    gen = StreamGenerator(_model(name), device="cpu")
    gen.reset("x", seed=0)
    for _ in range(10):
        gen.step()
    early = []
    for _ in range(10):
        start = time.perf_counter()
        gen.step()
        early.append(time.perf_counter() - start)
    while gen.chunk_index < 995:
        gen.step()
    early_median = sorted(early)[len(early) // 2]
    _info(benchmark, name, "stream-ring", early_chunks="10-19", early_median_s=early_median, late_chunks="995-1004")
    benchmark.pedantic(gen.step, rounds=10, iterations=1)
    late_median = benchmark.stats.stats.median
    benchmark.extra_info["late_over_early"] = late_median / early_median
    assert gen.chunk_index == 1005
