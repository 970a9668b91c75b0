"""Priming through an engine backend: the exported chunk step driven by ONNX Runtime (the TensorRT code path,
tests/test_generator_engine.py) primes and continues a stream like the torch backend."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")

from rfrt import StreamGenerator  # noqa: E402
from rfrt.engine.onnxruntime import OnnxRuntimeChunkStep  # noqa: E402
from test_generator_engine import POLICY, SIZE, TOL, Counting, onnx_paths  # noqa: E402,F401 - fixture
from test_generator_tiny import one_thread, tiny_model  # noqa: E402,F401 - fixture


@pytest.mark.parametrize("phase", ["any", "steady"])
def test_engine_primes_like_the_torch_backend(onnx_paths, one_thread, phase):
    ref = StreamGenerator(tiny_model(SIZE), device="cpu", cache=POLICY)
    ref.reset("a cat walks on the beach", seed=2)
    chunks = [ref.step() for _ in range(7)]
    context = torch.cat([c.latents for c in chunks[:4]])[:10]  # 3 whole chunks (a fold at chunk 3) + 1 held
    runner = Counting(OnnxRuntimeChunkStep(onnx_paths[phase]))
    gen = StreamGenerator(tiny_model(SIZE), device="cpu", cache=POLICY, backend=runner)
    gen.reset("a cat walks on the beach", seed=2, context=context)
    ref.reset("a cat walks on the beach", seed=2, context=context)
    got = [gen.step().latents for _ in range(3)]
    want = [ref.step().latents for _ in range(3)]
    err = max((a - b).abs().max().item() for a, b in zip(got, want))
    sink = (gen.cache.sink_acc - ref.cache.sink_acc).abs().max().item()
    print(f"{phase} ORT engine primed vs torch backend primed, 3 chunks: max abs {err:.2e}, sink {sink:.2e}")
    assert err <= TOL and sink <= TOL
    # "any" serves every forward: 3 context passes + 3 chunks x 5; "steady" only full-window chunks (>= 2):
    # context chunk 2, then the 3 generated chunks
    assert runner.calls == (3 + 3 * 5 if phase == "any" else 1 + 3 * 5)
