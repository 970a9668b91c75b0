"""The release geometry on a GPU (skipped without one): 2 layers of the Wan2.1-1.3B block, 1560 tokens per
frame (832x480), 12x128 heads, 6 chunks — CUDA-graph replay against eager, the cache against the plain-PyTorch
oracle, and finite outputs. The tiny-shape GPU tests never exercise cuDNN SDPA at head_dim 128 under capture
or the real cache geometry; this does."""
from __future__ import annotations

import pytest
import torch

from cache_harness import max_rel_error, run_pair
from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache, RingCache
from rfrt.fast import RuntimeConfig
from rfrt.generator import StreamGenerator
from rfrt.model_dir import LoadedModel, VideoSpec
from rfrt.models import CausalWanDiT, ModelConfig

pytestmark = pytest.mark.gpu
CHUNKS = 6
CFG = ModelConfig(num_layers=2)  # the 1.3B block: dim 1536, ffn 8960, 12 heads of 128


@pytest.fixture(autouse=True)
def _needs_cuda_build():
    from rfrt import _C

    if not _C.cuda:
        pytest.skip("rfrt._C was built without CUDA kernels")


def _dit() -> CausalWanDiT:
    with torch.device("meta"):
        dit = CausalWanDiT(CFG).to(torch.bfloat16)
    dit = dit.to_empty(device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if p.ndim >= 2:
                p.uniform_(-p[0].numel() ** -0.5, p[0].numel() ** -0.5, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return dit.eval().requires_grad_(False)


def _stream(dit, runtime):
    from benchmarks.bench_speed import _NoDecoder, _Text

    model = LoadedModel(dit=dit, text_encoder=_Text(CFG), decoder=_NoDecoder(CFG.out_dim),
                        video=VideoSpec(480, 832, 16))
    gen = StreamGenerator(model, device="cuda", dtype=torch.bfloat16, runtime=runtime)
    gen.reset("a red ball rolling", seed=0)
    return gen, [gen.step().latents.float() for _ in range(CHUNKS)]


def test_graphs_match_eager_at_the_release_geometry():
    dit = _dit()
    assert dit.blocks[0].self_attn.num_heads == 12 and CFG.head_dim == 128
    _, eager = _stream(dit, RuntimeConfig())
    gen, graphs = _stream(dit, RuntimeConfig(cuda_graphs=True))
    assert gen._cache.layout.tokens_per_frame == 1560 and len(gen._graphs.captured_phases) == 4
    for c, (a, b) in enumerate(zip(graphs, eager)):
        assert bool(a.isfinite().all()), f"chunk {c} not finite"
        assert torch.allclose(a, b, atol=1e-2, rtol=0), f"chunk {c}: max |diff| {(a - b).abs().max().item()}"
    _, bf16mod = _stream(dit, RuntimeConfig(cuda_graphs=True, modulation="bf16"))
    assert all(bool(x.isfinite().all()) for x in bf16mod)


def test_cache_matches_the_oracle_at_the_release_geometry():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    layout = CacheLayout(CachePolicy(), layers=2, heads=12, head_dim=128, grid_h=30, grid_w=52)
    ring = RingCache(layout, device="cuda", debug=True)
    ref = ReferenceCache(layout)
    fast, judge = run_pair(ring, ref, chunks=CHUNKS, layers=2, heads=12, head_dim=128, device="cuda")
    assert all(bool(x.isfinite().all()) for x in fast)
    assert max_rel_error(fast, judge) <= 1e-5
