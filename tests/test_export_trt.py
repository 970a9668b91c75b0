"""TensorRT engine builder and runner: everything checkable without TensorRT (CLI, errors, profile shapes)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from export.build_engine import (EngineBuildConfig, _shape_arg, check_build, has_explicit_quantization,  # noqa: E402
                                 main, onnx_input_shapes)
from rfrt.engine.interface import MASK_INPUT, STEP_INPUTS, STEP_OUTPUTS, check_interface  # noqa: E402
from rfrt.engine.tensorrt import (TENSORRT_INSTALL_HINT, TensorRTChunkStep, TensorRTUnavailable,  # noqa: E402
                                  import_tensorrt, torch_dtype)

REPO = Path(__file__).resolve().parents[1]
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_no_trt = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot run")


def _graph(path, dynamic=False, qdq=False):
    """A small ONNX: y = x * s + w with a static or dynamic first dim of x, optionally through Q/DQ."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch" if dynamic else 2, 3])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    nodes, src = [], "x"
    if qdq:
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
        nodes += [helper.make_node("QuantizeLinear", ["x", "scale"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "scale"], ["xd"])]
        src, inits = "xd", [w, scale]
    else:
        inits = [w]
    nodes.append(helper.make_node("Add", [src, "w"], ["y"]))
    # An initializer also listed as a graph input (older exporters do this) is not an engine input.
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])
    model = helper.make_model(helper.make_graph(nodes, "g", [x, s, w_in], [y], inits))
    onnx.save(model, str(path))
    return path


def test_help_works_without_tensorrt_or_pythonpath():
    out = subprocess.run([sys.executable, str(REPO / "export" / "build_engine.py"), "--help"], capture_output=True,
                         text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps the description
    assert "--precision" in text and "pip install tensorrt" in text


def test_profile_shapes_come_from_the_onnx(tmp_path):
    static = _graph(tmp_path / "s.onnx")
    assert onnx_input_shapes(static) == {"x": (2, 3), "s": (2,)}
    dynamic = _graph(tmp_path / "d.onnx", dynamic=True)
    with pytest.raises(ValueError, match="'x' has a dynamic shape"):
        onnx_input_shapes(dynamic)
    assert onnx_input_shapes(dynamic, (("x", (5, 3)),))["x"] == (5, 3)
    with pytest.raises(ValueError, match="does not fit"):
        onnx_input_shapes(dynamic, (("x", (5, 4)),))
    with pytest.raises(ValueError, match="does not fit"):
        onnx_input_shapes(dynamic, (("x", (5,)),))
    with pytest.raises(ValueError, match="does not have"):
        onnx_input_shapes(static, (("z", (1,)),))


def test_fp8_needs_explicit_quantization(tmp_path):
    plain, qdq = _graph(tmp_path / "p.onnx"), _graph(tmp_path / "q.onnx", qdq=True)
    assert not has_explicit_quantization(plain) and has_explicit_quantization(qdq)
    with pytest.raises(ValueError, match="QuantizeLinear"):
        check_build(EngineBuildConfig(plain, tmp_path / "e.plan", fp8=True))
    assert check_build(EngineBuildConfig(qdq, tmp_path / "e.plan", fp8=True)) == {"x": (2, 3), "s": (2,)}


def test_build_config_validation(tmp_path):
    good = _graph(tmp_path / "g.onnx")
    with pytest.raises(ValueError, match="precision"):
        EngineBuildConfig(good, tmp_path / "e", precision="int4")
    with pytest.raises(ValueError, match="workspace"):
        EngineBuildConfig(good, tmp_path / "e", workspace_gib=0)
    with pytest.raises(ValueError, match="optimization_level"):
        EngineBuildConfig(good, tmp_path / "e", optimization_level=7)
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        EngineBuildConfig(tmp_path / "missing.onnx", tmp_path / "e")
    with pytest.raises(ValueError, match="twice"):
        EngineBuildConfig(good, tmp_path / "e", shapes=(("x", (2, 3)), ("x", (2, 3))))
    assert _shape_arg("kv=2x30x1X14040x12x128") == ("kv", (2, 30, 1, 14040, 12, 128))
    for bad in ("kv", "=2x3", "kv=2xa"):
        with pytest.raises(Exception, match="NAME="):
            _shape_arg(bad)


def test_cli_check_only_and_bad_arguments(tmp_path, capsys):
    onnx_path = _graph(tmp_path / "d.onnx", dynamic=True)
    assert main([str(onnx_path), "--out", str(tmp_path / "e"), "--check-only", "--shape", "x=4x3"]) == 0
    assert "profile x: 4x3" in capsys.readouterr().out
    assert main([str(onnx_path), "--out", str(tmp_path / "e"), "--check-only"]) == 2
    assert "--shape x=" in capsys.readouterr().err


@needs_no_trt
def test_cli_says_what_to_install_without_tensorrt(tmp_path, capsys):
    assert main([str(_graph(tmp_path / "s.onnx")), "--out", str(tmp_path / "e.plan")]) == 3
    assert "pip install tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "e.plan").exists()


@needs_no_trt
def test_runner_imports_tensorrt_lazily_with_a_clear_error(tmp_path):
    assert "tensorrt" not in sys.modules  # importing rfrt.engine.tensorrt did not import it
    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        import_tensorrt()
    with pytest.raises(FileNotFoundError, match="build_engine"):
        TensorRTChunkStep(tmp_path / "none.plan")
    plan = tmp_path / "e.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(TensorRTUnavailable) as err:
        TensorRTChunkStep(plan)
    assert str(err.value) == TENSORRT_INSTALL_HINT


def test_engine_interface_check():
    kv, acc = (2, 2, 1, 36, 2, 16), (2, 2, 1, 12, 2, 16)
    inputs = {n: (1,) for n in STEP_INPUTS} | {"kv": kv, "sink_acc": acc}
    outputs = {"flow": (1, 2, 4, 4, 6), "kv_out": kv, "sink_acc_out": acc}
    assert check_interface(inputs, outputs) is False
    assert check_interface(inputs | {MASK_INPUT: (1,)}, outputs) is True
    with pytest.raises(ValueError, match=r"missing \['fold'\]"):
        check_interface({k: v for k, v in inputs.items() if k != "fold"}, outputs)
    with pytest.raises(ValueError, match="dynamic"):
        check_interface(inputs | {"x": (-1, 3)}, outputs)
    with pytest.raises(ValueError, match="cache outputs"):
        check_interface(inputs, outputs | {"kv_out": acc})
    assert set(STEP_OUTPUTS) == set(outputs)
    assert torch_dtype("FLOAT") is torch.float32 and torch_dtype("BF16") is torch.bfloat16
    with pytest.raises(TypeError, match="FP8"):
        torch_dtype("FP8")
