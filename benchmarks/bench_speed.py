"""Streaming speed of StreamGenerator's fast paths (CUDA graphs, FP8, overlapped decode) beside the plain
PyTorch SPEC §2 loop, with the numbers issue 4 asks for.

Per configuration: steady-state chunk latency and FPS (DiT only, then with each decoder), first-chunk latency,
peak memory, achieved DiT TFLOP/s from the config-derived cost model (rfrt.fast.cost, SPEC §2.4) against the
bf16 matmul rate measured on the same device in the same run, and the reference loop (ReferenceCache backend,
concatenate + fp64 RoPE re-application + einsum attention) for the speed-up ratio. Every benchmark records its
config in extra_info; fps = output frames per chunk / median chunk time.

- GPU suite (test_gpu_*, skipped without CUDA): Wan2.1-T2V-1.3B shape with random bf16 weights (built on the
  meta device, materialised on the GPU), 832x480, release cache; TAEHV with random weights; the Wan2.1 VAE with
  its real configuration and random weights (needs diffusers; skipped without it).
- CPU suite (test_cpu_*): the same code on a tiny fp32 config, so the suite itself runs on every machine.
Run: pytest benchmarks/bench_speed.py --benchmark-json=benchmarks/results/<name>.json  (-k gpu / -k cpu)
The reference loop's attention materialises the scores (einsum), where the public code uses FlashAttention:
its ratio includes that, on top of the data movement of SPEC §2.3.
"""
from __future__ import annotations

import dataclasses
import gc
import os

import pytest
import torch
import torch.nn.functional as F

from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache
from rfrt.decoders import StreamingDecoder, TAEHVConfig, TAEHVDecoder, TAEHVNet
from rfrt.fast import RuntimeConfig
from rfrt.fast.cost import chunk_flop
from rfrt.fast.fp8 import swap_dit_linears
from rfrt.runtime.generator import StreamGenerator
from rfrt.model_dir import LoadedModel, VideoSpec
from rfrt.models import CausalWanDiT, ModelConfig
from rfrt.sampling import SamplerConfig, warped_sigmas, warped_timesteps


@dataclasses.dataclass(frozen=True)
class SpeedConfig:
    """One benchmarked shape: DiT config, output size, device and dtype, decoder sizes, timing rounds."""

    dit: ModelConfig
    height: int
    width: int
    device: str
    dtype: torch.dtype
    taehv: TAEHVConfig
    wan_vae: dict
    rounds: int
    warm_chunks: int = 5  # past the filling chunks, so the steady graph is captured and replayed


CONFIGS = {
    "gpu-wan1.3b-832x480": SpeedConfig(ModelConfig(), 480, 832, "cuda", torch.bfloat16, TAEHVConfig(), {},
                                       rounds=int(os.environ.get("RFRT_BENCH_ROUNDS", "8"))),
    "cpu-tiny": SpeedConfig(ModelConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=4, out_dim=4,
                                        text_dim=32, freq_dim=32, text_len=16), 32, 32, "cpu", torch.float32,
                            TAEHVConfig(latent_channels=4, channels=(16, 16, 8, 8)),
                            dict(base_dim=8, z_dim=4, num_res_blocks=1, latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4), rounds=3),
}
GPU, CPU = "gpu-wan1.3b-832x480", "cpu-tiny"
SWITCHES = [(g, f) for g in (False, True) for f in (False, True)]  # (cuda_graphs, fp8)


class _Text:
    """Random text states (the text encoder is not what is timed)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    def encode(self, prompts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(len(prompts[0]))
        return torch.randn(len(prompts), self.cfg.text_len, self.cfg.text_dim, generator=g)


class _NoDecoder(StreamingDecoder):
    """DiT-only runs: everything but the decode (emits one 1x1 black frame per output frame)."""

    def __init__(self, channels: int, spatial: int = 8, temporal: int = 4) -> None:
        super().__init__()
        self._c, self._s, self._t = channels, spatial, temporal

    temporal_upsample = property(lambda self: self._t)
    spatial_upsample = property(lambda self: self._s)
    latent_channels = property(lambda self: self._c)

    def _reset_state(self) -> None:
        pass

    def _decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self.frames_for(latents.shape[1], self.latent_frames_seen)
        return torch.zeros(latents.shape[0], frames, 3, 1, 1, device=latents.device)


_DITS: dict = {}


def _random_dit(name: str, fp8: bool) -> CausalWanDiT:
    """The config's DiT with random weights (meta -> device, so the 1.3B model is never built on the CPU);
    the FP8 variant is a second copy with its block linears swapped. Cached per (config, fp8)."""
    key = (name, fp8)
    if key not in _DITS:
        sc = CONFIGS[name]
        with torch.device("meta"):
            dit = CausalWanDiT(sc.dit).to(sc.dtype)
        dit = dit.to_empty(device=sc.device)
        g = torch.Generator(device=sc.device).manual_seed(0)
        with torch.no_grad():
            for pname, p in dit.named_parameters():
                if p.ndim >= 2:  # nn.Linear-like init keeps activations O(1) through 30 blocks
                    bound = p[0].numel() ** -0.5
                    p.uniform_(-bound, bound, generator=g)
                elif "norm" in pname and pname.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=g)
        dit = dit.eval().requires_grad_(False)
        if fp8:
            swap_dit_linears(dit)
        _DITS[key] = dit
    return _DITS[key]


def _decoder(name: str, kind: str) -> StreamingDecoder:
    sc = CONFIGS[name]
    torch.manual_seed(0)
    if kind == "none":
        return _NoDecoder(sc.dit.out_dim)
    if kind == "taehv":
        return TAEHVDecoder(TAEHVNet(sc.taehv).to(sc.device, sc.dtype))
    pytest.importorskip("diffusers")
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

    from rfrt.decoders import WanVAEDecoder

    return WanVAEDecoder(AutoencoderKLWan(**sc.wan_vae), device=sc.device, dtype=sc.dtype)


def _generator(name: str, decoder: str, graphs: bool, fp8: bool, overlap: bool = False) -> StreamGenerator:
    sc = CONFIGS[name]
    model = LoadedModel(dit=_random_dit(name, fp8), text_encoder=_Text(sc.dit), decoder=_decoder(name, decoder),
                        video=VideoSpec(sc.height, sc.width, 16))
    runtime = RuntimeConfig(cuda_graphs=graphs, fp8=fp8, overlap_decode=overlap)
    return StreamGenerator(model, device=sc.device, dtype=sc.dtype, runtime=runtime)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _record(benchmark, name: str, gen, impl: str, frames_per_chunk: int, key_frames: int | None = None,
            **extra) -> None:
    """Config, derived rates and peak memory into extra_info (after the timed rounds). key_frames: frames the
    timed chunk attends to (default the full window, the steady state)."""
    sc = CONFIGS[name]
    median = benchmark.stats.stats.median
    flop = chunk_flop(sc.dit, gen.layout, key_frames=key_frames)
    info = dict(config=name, impl=impl, dit=dataclasses.asdict(sc.dit), height=sc.height, width=sc.width,
                dtype=str(sc.dtype), policy=dataclasses.asdict(gen.policy), frames_per_chunk=frames_per_chunk,
                fps=frames_per_chunk / median, dit_tflop_per_chunk=flop / 1e12,
                dit_tflops_achieved=flop / median / 1e12, **extra)
    if sc.device == "cuda":
        info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        peak = _matmul_peak()
        info["bf16_matmul_peak_tflops"] = peak
        info["fraction_of_matmul_peak"] = info["dit_tflops_achieved"] / peak
    benchmark.extra_info.update(info)


_PEAK: list[float] = []


def _matmul_peak(n: int = 8192, reps: int = 20) -> float:
    """bf16 dense matmul rate of this device, TFLOP/s: median over `reps` timed n^3 products (random data)."""
    if not _PEAK:
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        _PEAK.append(2 * n ** 3 / sorted(times)[reps // 2] / 1e12)
    return _PEAK[0]


# ---- the measurements, shared by both suites ----
def steady_chunk(benchmark, name: str, decoder: str, graphs: bool, fp8: bool, overlap: bool) -> None:
    _free()
    sc = CONFIGS[name]
    gen = _generator(name, decoder, graphs, fp8, overlap)
    gen.reset("a red ball rolling", seed=0)
    for _ in range(sc.warm_chunks):
        gen.step()
    benchmark.pedantic(gen.step, rounds=sc.rounds, iterations=1, warmup_rounds=1)
    per_chunk = gen.decoder.frames_for(gen.plan.latent_shape[1], start=3)  # a later chunk's frame count
    extra = {"graphs": graphs, "fp8": fp8, "overlap_decode": overlap, "decoder": decoder}
    if decoder == "none":  # conftest turns this into speedup_vs_reference in the saved JSON
        extra["reference"] = f"test_{name[:3]}_reference_loop[{name}]"
    _record(benchmark, name, gen, "stream", per_chunk, **extra)
    if gen.runtime.overlap_decode:
        gen.decoder.close()


def first_chunk(benchmark, name: str, graphs: bool, fp8: bool) -> None:
    """reset() -> first chunk's frames, on a generator that already ran one stream (graphs captured, kernels
    loaded): what a user waits for when a new stream starts."""
    _free()
    gen = _generator(name, "none", graphs, fp8)

    def start():
        gen.reset("a red ball rolling", seed=1)
        return gen.step()

    benchmark.pedantic(start, rounds=max(2, CONFIGS[name].rounds // 2), iterations=1, warmup_rounds=1)
    _record(benchmark, name, gen, "stream-first-chunk", gen.decoder.frames_for(gen.plan.latent_shape[1]),
            key_frames=gen.policy.valid_frames(0), graphs=graphs, fp8=fp8, decoder="none")


def first_chunk_cold(benchmark, name: str, graphs: bool, warmup: bool) -> None:
    """reset() -> first chunk's frames on a freshly built generator (construction not timed): "cold" pays for
    the cache, the SDPA plans, the graph captures of the first phase and the lazy kernel loads; with warmup()
    called at construction (not timed) all of that is done before the prompt arrives."""
    _free()

    def fresh():
        gen = _generator(name, "none", graphs, False)
        if warmup:
            gen.warmup()
        return (gen,), {}

    def start(gen):
        gen.reset("a red ball rolling", seed=1)
        out = gen.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    benchmark.pedantic(start, setup=fresh, rounds=max(2, CONFIGS[name].rounds // 2), iterations=1)
    benchmark.extra_info.update(config=name, impl="stream-first-chunk-cold", graphs=graphs, warmup=warmup,
                                decoder="none")


class _ReferenceLoop:
    """SPEC §2.1 sampling over the ReferenceCache oracle in the model dtype, one chunk per step()."""

    def __init__(self, name: str) -> None:
        sc = CONFIGS[name]
        cfg = sc.dit
        self.dit = _random_dit(name, False)
        s = 8  # decoder stride of the Wan family
        grid = (sc.height // s // cfg.patch_size[1], sc.width // s // cfg.patch_size[2])
        self.policy = CachePolicy()
        self.shape = (1, self.policy.chunk_frames, cfg.in_dim, sc.height // s, sc.width // s)
        text = _Text(cfg).encode(["a red ball rolling"]).to(sc.device, sc.dtype)
        self.ctx = self.dit.cross_kv(F.pad(text, (0, 0, 0, cfg.text_len - text.shape[1])))
        self.cache = ReferenceCache(CacheLayout.for_model(cfg, self.policy, *grid), compute_dtype=sc.dtype)
        self.steps = list(zip(warped_timesteps(SamplerConfig()).tolist(), warped_sigmas(SamplerConfig()).tolist()))
        self.noise = torch.Generator(device=sc.device).manual_seed(0)
        self.sc = sc

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        sc, frames = self.sc, self.policy.chunk_frames
        draws = [torch.randn(self.shape, generator=self.noise, device=sc.device) for _ in self.steps]
        self.cache.begin_chunk()
        x = draws[0].to(sc.dtype)
        for i, (t, sigma) in enumerate(self.steps):
            flow = self.dit(x, torch.full((1, frames), t, device=sc.device), self.ctx, self.cache)
            x0 = (x.double() - sigma * flow.double()).to(sc.dtype)
            if i + 1 < len(self.steps):
                nxt = self.steps[i + 1][1]
                x = ((1 - nxt) * x0.float() + nxt * draws[i + 1]).to(sc.dtype)
        self.dit(x0, torch.zeros(1, frames, device=sc.device), self.ctx, self.cache)
        return x0.cpu()  # the frames leave the device, as in every other benchmark


def reference_loop(benchmark, name: str) -> None:
    _free()
    loop = _ReferenceLoop(name)
    for _ in range(CONFIGS[name].warm_chunks):
        loop.step()
    benchmark.pedantic(loop.step, rounds=max(2, CONFIGS[name].rounds // 2), iterations=1, warmup_rounds=1)
    _record(benchmark, name, loop, "reference-loop", 4 * loop.policy.chunk_frames, decoder="none")


# ---- GPU suite ----
@pytest.mark.parametrize("graphs,fp8", SWITCHES)
def test_gpu_dit_only(benchmark, cuda_only, graphs, fp8):
    steady_chunk(benchmark, GPU, "none", graphs, fp8, False)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("graphs,fp8", SWITCHES)
@pytest.mark.parametrize("decoder", ["taehv", "wan-vae"])
def test_gpu_with_decoder(benchmark, cuda_only, decoder, graphs, fp8, overlap):
    steady_chunk(benchmark, GPU, decoder, graphs, fp8, overlap)


@pytest.mark.parametrize("graphs,fp8", SWITCHES)
def test_gpu_first_chunk(benchmark, cuda_only, graphs, fp8):
    first_chunk(benchmark, GPU, graphs, fp8)


@pytest.mark.parametrize("warmup", [False, True])
def test_gpu_first_chunk_cold(benchmark, cuda_only, warmup):
    first_chunk_cold(benchmark, GPU, True, warmup)


@pytest.mark.parametrize("name", [GPU])
def test_gpu_reference_loop(benchmark, cuda_only, name):
    reference_loop(benchmark, name)


# ---- CPU suite: the same code on the tiny config ----
@pytest.mark.parametrize("graphs,fp8", SWITCHES)
def test_cpu_dit_only(benchmark, graphs, fp8):
    steady_chunk(benchmark, CPU, "none", graphs, fp8, False)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("decoder", ["taehv", "wan-vae"])
def test_cpu_with_decoder(benchmark, decoder, overlap):
    steady_chunk(benchmark, CPU, decoder, True, False, overlap)


def test_cpu_first_chunk(benchmark):
    first_chunk(benchmark, CPU, True, False)


@pytest.mark.parametrize("warmup", [False, True])
def test_cpu_first_chunk_cold(benchmark, warmup):
    first_chunk_cold(benchmark, CPU, True, warmup)


@pytest.mark.parametrize("name", [CPU])
def test_cpu_reference_loop(benchmark, name):
    reference_loop(benchmark, name)
