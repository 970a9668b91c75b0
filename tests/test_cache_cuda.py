"""CUDA kernels against the oracle, and under compute-sanitizer. Skipped without a CUDA device."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from cache_harness import max_rel_error, run_pair
from rfrt.cache import CacheLayout, CachePolicy, ReferenceCache, RingCache

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda_build():
    from rfrt import _C

    if not _C.cuda:
        pytest.skip("rfrt._C was built without CUDA kernels")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _pair(attention, dtype, sink_precision="fp32", grid=(4, 6), heads=4, head_dim=128):
    policy = CachePolicy(sink_ema_alpha=0.9, sink_precision=sink_precision)
    layout = CacheLayout(policy, layers=2, heads=heads, head_dim=head_dim, grid_h=grid[0], grid_w=grid[1])
    ring = RingCache(layout, dtype=dtype, device="cuda", attention=attention)
    ref = ReferenceCache(layout)
    return policy, ring, ref


@pytest.mark.parametrize("attention", ["sdpa", "core"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_ring_matches_oracle_fp32(attention, head_dim):
    policy, ring, ref = _pair(attention, torch.float32, head_dim=head_dim)
    fast, judge = run_pair(ring, ref, chunks=16, layers=2, heads=4, head_dim=head_dim, device="cuda")
    assert max_rel_error(fast, judge) <= 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "core"])
def test_cuda_ring_bf16_within_torch_bf16_error(attention):
    policy, ring, ref = _pair(attention, torch.bfloat16)
    fast, exact = run_pair(ring, ref, chunks=16, layers=2, heads=4, head_dim=128, dtype=torch.bfloat16,
                           judge_dtype=torch.float32, device="cuda")
    _, torch_bf16, ref2 = _pair(attention, torch.bfloat16)
    torch_ref = ReferenceCache(CacheLayout(policy, layers=2, heads=4, head_dim=128, grid_h=4, grid_w=6),
                               compute_dtype=torch.bfloat16)
    theirs, exact2 = run_pair(torch_ref, ref2, chunks=16, layers=2, heads=4, head_dim=128,
                              dtype=torch.bfloat16, judge_dtype=torch.float32)
    assert max_rel_error(fast, exact) <= 3.0 * max_rel_error(theirs, exact2)


def test_cuda_matches_cpu_kernels_bitwise_on_the_cache():
    """The same stream on CPU and CUDA leaves (nearly) the same cache: same math, same positions."""
    policy = CachePolicy(sink_ema_alpha=0.9)
    layout = CacheLayout(policy, layers=2, heads=4, head_dim=128, grid_h=4, grid_w=6)
    cpu, gpu = RingCache(layout), RingCache(layout, device="cuda")
    run_pair(gpu, cpu, chunks=8, layers=2, heads=4, head_dim=128, device="cuda")
    torch.testing.assert_close(gpu.kv.cpu(), cpu.kv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu.sink_acc.cpu(), cpu.sink_acc, rtol=1e-5, atol=1e-5)


SANITIZE = r"""
import torch, sys
sys.path.insert(0, {tests!r})
from cache_harness import run_pair
from rfrt.cache import CacheLayout, CachePolicy, RingCache
policy = CachePolicy(sink_ema_alpha=0.9)
layout = CacheLayout(policy, layers=2, heads=2, head_dim=64, grid_h=4, grid_w=6)
for dtype in (torch.float32, torch.bfloat16):
    for attention in ("sdpa", "core"):
        run_pair(RingCache(layout, device="cuda", attention=attention, dtype=dtype), RingCache(layout, dtype=dtype),
                 chunks=6, layers=2, heads=2, head_dim=64, dtype=dtype, device="cuda")
torch.cuda.synchronize()
print("sanitized run ok")
"""


# racecheck only checks shared memory, which these kernels do not use: initcheck (reads of unwritten memory) does.
@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
def test_kernels_under_compute_sanitizer(tool, tmp_path):
    exe = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(exe):
        pytest.skip("compute-sanitizer not installed")
    script = tmp_path / "sanitize.py"
    script.write_text(SANITIZE.format(tests=os.path.dirname(__file__)))
    # Only rfrt's kernels are checked (their mangled names contain "rfrt"): torch's own kernels are out of scope
    # and slow under the tool. memcheck cannot see out-of-bounds accesses inside torch's caching allocator's
    # segments, so the allocator is turned off.
    cmd = [exe, f"--tool={tool}", "--error-exitcode=7", "--kernel-name", "kns=rfrt", sys.executable, str(script)]
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    report = tmp_path / f"{tool}.log"
    report.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "ERROR SUMMARY: 0 errors" in done.stdout + done.stderr


def test_error_flag_and_capture_guard_on_gpu():
    """A corrupted device cursor sets the flag (nothing written); the pinned upload refuses graph capture."""
    layout = CacheLayout(CachePolicy(), layers=2, heads=2, head_dim=64, grid_h=4, grid_w=6)
    ring = RingCache(layout, device="cuda")
    ring.begin_chunk()
    ring.cursors[0].fill_(layout.window_tokens)
    x = torch.randn(1, layout.chunk_tokens, 2, 64, device="cuda")
    ring(0, x, x, x)
    with pytest.raises(RuntimeError, match="out-of-range device cursor"):
        ring.check()
    assert ring.kv.abs().sum().item() == 0
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="while a CUDA graph is being captured"):
        with torch.cuda.graph(graph):
            ring.begin_chunk()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_launch_on_the_tensors_gpu_not_the_current_one():
    layout = CacheLayout(CachePolicy(), layers=2, heads=2, head_dim=64, grid_h=4, grid_w=6)
    cpu, gpu = RingCache(layout), RingCache(layout, device="cuda:1")
    with torch.cuda.device(0):
        run_pair(gpu, cpu, chunks=4, layers=2, heads=2, head_dim=64, device="cuda:1")
    torch.testing.assert_close(gpu.kv.cpu(), cpu.kv, rtol=1e-5, atol=1e-5)
