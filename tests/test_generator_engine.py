"""StreamGenerator's engine backends: the TensorRT path driven by ONNX Runtime on the CPU, and its errors.

TensorRT cannot run here (no GPU, no package), so the generator's engine code path (rfrt.engine.EngineForward
feeding a ChunkStepRunner) is driven by OnnxRuntimeChunkStep over the exported graph of the generator's own
DiT; TensorRTChunkStep differs from it only in how the runner moves tensors (tests/test_export_trt.py).
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from export.export_onnx import ExportSpec, export_chunk_step  # noqa: E402
from rfrt.engine.onnxruntime import OnnxRuntimeChunkStep  # noqa: E402
from rfrt import StreamGenerator  # noqa: E402
from rfrt.cache import CachePolicy  # noqa: E402
from rfrt.cache.functional import CacheLayout, StepControls  # noqa: E402
from rfrt.engine.stream import EngineForward, TorchChunkStep  # noqa: E402
from rfrt.fast.config import RuntimeConfig  # noqa: E402
from rfrt.engine.tensorrt import TENSORRT_INSTALL_HINT, TensorRTUnavailable  # noqa: E402
from test_generator_tiny import one_thread, tiny_dit, tiny_model  # noqa: E402, F401 - fixture

SIZE = 8  # px; pixel decoder, patch 2 -> 4x4 tokens per frame
# The release layout (sink 3, window 9, chunks of 3: the window fills at chunk 2, folds from chunk 3) with a
# visible EMA (0.9, not 0.999), so a fold mistake cannot hide under the tolerance.
POLICY = CachePolicy(sink_frames=3, window_frames=9, chunk_frames=3, sink_ema_alpha=0.9)
TOL = 1e-4
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def onnx_paths(tmp_path_factory):
    """The tiny generator DiT's chunk step, exported in both phases (a few seconds each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engine")
    paths = {phase: export_chunk_step(tiny_dit(), ExportSpec(batch=1, latent_h=SIZE, latent_w=SIZE, policy=POLICY,
                                                              phase=phase), root / f"{phase}.onnx")
             for phase in ("any", "steady")}
    torch.set_num_threads(before)
    return paths


class Counting:
    """A runner wrapper counting the forwards it serves; `tamper` may rewrite the controls."""

    def __init__(self, runner, tamper=None) -> None:
        self.runner, self.tamper, self.calls = runner, tamper, 0
        self.masked, self.input_shapes, self.input_dtypes = runner.masked, runner.input_shapes, runner.input_dtypes

    def __call__(self, x, t, cross_kv, kv, sink_acc, controls):
        self.calls += 1
        if self.tamper is not None:
            controls = self.tamper(controls)
        return self.runner(x, t, cross_kv, kv, sink_acc, controls)


def _generator(backend="torch", **kwargs) -> StreamGenerator:
    return StreamGenerator(tiny_model(SIZE), device="cpu", cache=POLICY, backend=backend, **kwargs)


def _run(gen: StreamGenerator, chunks: int = 7) -> list:
    """7 chunks: filling 0-1, full window 2, folds from 3; a prompt switch at 3, a re-cache switch at 5."""
    gen.reset("a cat", seed=3)
    out = []
    for c in range(chunks):
        if c == 3:
            gen.set_prompt("a dog")
        if c == 5:
            gen.set_prompt("a red car", recache=True)
        out.append(gen.step())
    return out


def _worst(a: list, b: list) -> dict[str, float]:
    return {"video": max((x.video - y.video).abs().max().item() for x, y in zip(a, b)),
            "latents": max((x.latents - y.latents).abs().max().item() for x, y in zip(a, b)),
            "frames": max((x.frames.int() - y.frames.int()).abs().max().item() for x, y in zip(a, b))}


@pytest.mark.parametrize("phase", ["any", "steady"])
def test_ort_engine_backend_matches_torch_backend(phase, onnx_paths, one_thread):
    runner = Counting(OnnxRuntimeChunkStep(onnx_paths[phase]))
    gen, ref = _generator(runner), _generator()
    got, want = _run(gen), _run(ref)
    worst = _worst(got, want)
    # The cache state itself (the engine's outputs fed back 37 times) against the RingCache's buffers.
    worst["kv"] = (gen.cache.kv - ref.cache.kv).abs().max().item()
    worst["sink_acc"] = (gen.cache.sink_acc - ref.cache.sink_acc).abs().max().item()
    print(f"{phase} ORT backend vs torch backend, max abs over 7 chunks: {worst}")
    assert isinstance(gen.cache, EngineForward)
    assert max(worst[k] for k in ("video", "latents", "kv", "sink_acc")) <= TOL and worst["frames"] <= 1, worst
    # The engine really served the forwards: 7 chunks x 5 (+ 2 re-cache replays) for "any"; a steady graph only
    # chunks >= 2 (the filling chunks and the replays, which start a new stream, run in PyTorch).
    assert runner.calls == (7 * 5 + 2 if phase == "any" else 5 * 5)


def test_a_dropped_sink_fold_is_visible(onnx_paths, one_thread):
    # The parity above can fail: the same engine with every fold replaced by (1, 0) diverges once chunks fold.
    def no_fold(c: StepControls) -> StepControls:
        return StepControls(c.slots, c.rope_cos, c.rope_sin, torch.tensor([1.0, 0.0]), c.valid_tokens)

    got = _run(_generator(Counting(OnnxRuntimeChunkStep(onnx_paths["any"]), tamper=no_fold)), chunks=5)
    want = _run(_generator(), chunks=5)
    assert _worst(got[:3], want[:3])["latents"] <= TOL  # no chunk folds before chunk 3
    assert _worst(got[3:], want[3:])["latents"] > 1e-3


def test_engine_shapes_are_checked_at_load(onnx_paths):
    runner = OnnxRuntimeChunkStep(onnx_paths["any"])
    with pytest.raises(ValueError, match=r"x \(1, 3, 3, 8, 8\) \(needs \(1, 3, 3, 16, 16\)\).*--latent-height 16"):
        StreamGenerator(tiny_model(SIZE), device="cpu", cache=POLICY, height=16, width=16, backend=runner)
    wider = CachePolicy(sink_frames=3, window_frames=12, chunk_frames=3, sink_ema_alpha=0.9)
    with pytest.raises(ValueError, match=r"kv .* \(needs \(2, 2, 1, 192, 2, 16\)\).*--window-frames 12"):
        StreamGenerator(tiny_model(SIZE), device="cpu", cache=wider, backend=runner)


def test_backend_argument_errors(tmp_path, onnx_paths):
    engine = tmp_path / "chunk.plan"
    engine.write_bytes(b"not an engine")
    runner = OnnxRuntimeChunkStep(onnx_paths["any"])
    cases = [
        (dict(backend="onnx"), ValueError, "backend must be one of"),
        (dict(backend="tensorrt"), ValueError, "needs engine=PATH"),
        (dict(backend="torch", engine=engine), ValueError, "engine= is the TensorRT engine"),
        (dict(backend="tensorrt", engine=tmp_path / "missing.plan"), FileNotFoundError, "missing.plan does not exist"),
        (dict(backend="tensorrt", engine=engine), ValueError, "runs on an NVIDIA GPU.*device is cpu"),
        (dict(backend=object()), TypeError, "not a chunk-step runner"),
        (dict(backend=runner, engine=engine), ValueError, "its own engine"),
        (dict(backend=runner, runtime=RuntimeConfig(cuda_graphs=True)), ValueError, "cuda_graphs / fp8"),
    ]
    for kwargs, error, why in cases:
        with pytest.raises(error, match=why):
            StreamGenerator(tiny_model(SIZE), device="cpu", **kwargs)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot run")
def test_missing_tensorrt_says_what_to_install(tmp_path):
    engine = tmp_path / "chunk.plan"
    engine.write_bytes(b"not an engine")
    with pytest.raises(TensorRTUnavailable) as err:  # raised before the model loads
        StreamGenerator(tiny_model(SIZE), device="cuda", backend="tensorrt", engine=engine)
    assert str(err.value) == TENSORRT_INSTALL_HINT


def test_ort_runner_and_step_cache_validation(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxRuntimeChunkStep(tmp_path / "none.onnx")
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])),
              str(path))
    with pytest.raises(ValueError, match="not the chunk step's"):
        OnnxRuntimeChunkStep(path)
    layout = CacheLayout(POLICY, layers=2, batch=1, heads=2, head_dim=16, grid_h=4, grid_w=4)
    torch_step = TorchChunkStep(tiny_dit(), layout)
    steady = Counting(torch_step)
    steady.masked = False
    with pytest.raises(ValueError, match="filling"):
        EngineForward(steady, layout, "cpu")
    cache = EngineForward(torch_step, layout, "cpu")
    with pytest.raises(RuntimeError, match="begin_chunk"):
        cache(torch.zeros(1, 3, 3, SIZE, SIZE), torch.zeros(1, 3))
    cache.begin_chunk()
    with pytest.raises(RuntimeError, match="set_text"):
        cache(torch.zeros(1, 3, 3, SIZE, SIZE), torch.zeros(1, 3))
