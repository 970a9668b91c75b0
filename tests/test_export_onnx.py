"""ONNX export of the chunk forward: checker, static shapes, ONNX Runtime parity against the RingCache runtime."""
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from export.export_onnx import (ExportSpec, export_chunk_step, main, max_rel_error, ort_session, run_ort,  # noqa: E402
                                tiny_model, verify_stream)
from rfrt.cache import CachePolicy  # noqa: E402
from rfrt.cache.functional import step_controls  # noqa: E402
from rfrt.engine.interface import STEP_INPUTS, STEP_OUTPUTS  # noqa: E402

LATENT_H, LATENT_W = 4, 6  # 2 x 3 tokens per frame with patch (1, 2, 2)
# A visible EMA (alpha 0.9, not 0.999) so a fold mistake cannot hide under the tolerance.
POLICY = CachePolicy(sink_frames=2, window_frames=6, chunk_frames=2, sink_ema_alpha=0.9)
TOL = 1e-4


@pytest.fixture(scope="module")
def steady(tmp_path_factory):
    model = tiny_model(0)
    spec = ExportSpec(batch=1, latent_h=LATENT_H, latent_w=LATENT_W, policy=POLICY, phase="steady")
    path = export_chunk_step(model, spec, tmp_path_factory.mktemp("onnx") / "steady.onnx")
    return model, spec, path, ort_session(path)


def test_graph_has_static_shapes_and_the_documented_interface(steady):
    model, spec, path, _ = steady
    graph = onnx.load(str(path)).graph
    assert tuple(i.name for i in graph.input) == STEP_INPUTS
    assert tuple(o.name for o in graph.output) == STEP_OUTPUTS
    layout, cfg = spec.layout(model.config), model.config
    want = {"x": (1, 2, cfg.in_dim, LATENT_H, LATENT_W), "t": (1, 2), "kv": layout.kv_shape(),
            "sink_acc": layout.sink_acc_shape(), "slots": (2,), "rope_cos": (3, 2, layout.time_pairs), "fold": (2,),
            "cross_kv": (2, cfg.num_layers, 1, cfg.text_len, cfg.num_heads, cfg.head_dim)}
    shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in graph.input}
    for name, shape in want.items():
        assert shapes[name] == shape, name
    # Every dimension is a number: no symbolic (dynamic) axis anywhere in the interface.
    for value in list(graph.input) + list(graph.output):
        assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), value.name


def test_ort_stream_matches_ring_cache_and_pytorch(steady):
    # Chunks 2, 3, 4 (4 forwards each): one full-window chunk without a fold, then two chunks that fold;
    # the graph's cache outputs are fed back as its next inputs.
    model, spec, _, session = steady
    text = torch.randn(1, model.config.text_len, model.config.text_dim, generator=torch.Generator().manual_seed(3))
    worst = verify_stream(model, spec, session, text, chunks=3, forwards=(1000.0, 937.5, 625.0, 0.0))
    print("steady ORT parity (max rel):", worst)
    assert max(worst.values()) <= TOL, worst


def test_ort_detects_a_wrong_fold(steady):
    # The parity check can fail: the first forward of a folding chunk run without its EMA coefficients.
    model, spec, _, session = steady
    layout = spec.layout(model.config)
    from export.export_onnx import example_inputs
    inputs = example_inputs(model, spec)
    good = run_ort(session, inputs)
    inputs["fold"] = step_controls(layout, POLICY.ring_chunks + 1, first_forward=False).fold
    bad = run_ort(session, inputs)
    assert max_rel_error(bad[0], good[0]) > 1e-3
    assert max_rel_error(bad[2], good[2]) > 1e-3


def test_cli_exports_the_any_phase_graph_and_verifies_it(tmp_path, capsys):
    # Phase "any" (key mask input) from an empty cache: filling chunks 0-2, then folds at 3 and 4.
    out = tmp_path / "any.onnx"
    assert main(["--tiny-random", "1", "--out", str(out), "--phase", "any", "--verify", "--sink-frames", "2",
                 "--window-frames", "6", "--chunk-frames", "2", "--sink-ema-alpha", "0.9"]) == 0
    report = capsys.readouterr().out
    print(report)
    assert "checker passed" in report and "max relative error" in report
    assert "valid_tokens" in [i.name for i in onnx.load(str(out)).graph.input]


def test_spec_validation():
    with pytest.raises(ValueError, match="phase"):
        ExportSpec(batch=1, latent_h=4, latent_w=6, policy=POLICY, phase="filling")
    with pytest.raises(ValueError, match="batch"):
        ExportSpec(batch=0, latent_h=4, latent_w=6, policy=POLICY)
    with pytest.raises(TypeError, match="CachePolicy"):
        ExportSpec(batch=1, latent_h=4, latent_w=6, policy={"sink_frames": 2})
    spec = ExportSpec(batch=1, latent_h=7, latent_w=6, policy=POLICY)
    with pytest.raises(ValueError, match="not divisible by patch"):
        spec.layout(tiny_model(0).config)
    assert ExportSpec(batch=1, latent_h=8, latent_w=6, policy=POLICY).layout(tiny_model(0).config).grid_h == 4
    with pytest.raises(SystemExit):
        main(["--out", "x.onnx"])  # neither --checkpoint nor --tiny-random


def test_position_embedded_model_exports_with_parity(tmp_path):
    # The default model's architecture: a learned spatial position embedding (ModelConfig.pos_grid).
    import dataclasses

    from export.export_onnx import tiny_config
    from rfrt.models import CausalWanDiT

    torch.manual_seed(1)
    model = CausalWanDiT(dataclasses.replace(tiny_config(), pos_grid=(LATENT_H // 2, LATENT_W // 2))).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    spec = ExportSpec(batch=1, latent_h=LATENT_H, latent_w=LATENT_W, policy=POLICY, phase="steady")
    session = ort_session(export_chunk_step(model, spec, tmp_path / "pos.onnx"))
    text = torch.randn(1, model.config.text_len, model.config.text_dim, generator=torch.Generator().manual_seed(3))
    worst = verify_stream(model, spec, session, text, chunks=2, forwards=(1000.0, 625.0, 0.0))
    assert max(worst.values()) <= TOL, worst
