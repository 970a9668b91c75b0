"""Non-finite weights and latents are refused with the tensor / step / module named (issue #14, item 7), and the
argument rules shared by the CLI, the API and serve (seed, dtype, device, model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rfrt import cli
from rfrt.checks import FiniteWatch, NonFiniteError, check_seed
from rfrt.devices import default_device as resolve_device, resolve_dtype
from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_dit, tiny_model, write_model_dir  # noqa: F401

SIZE = 16


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model"), size=SIZE)


def _poisoned(tmp_path, name, index, value, fmt="pt"):
    state = {k: v.clone().contiguous() for k, v in tiny_dit().state_dict().items()}
    state[name].view(-1)[index] = value
    path = tmp_path / f"poisoned.{fmt}"
    torch.save(state, path) if fmt == "pt" else save_file(state, str(path))
    return path


@pytest.mark.parametrize("name, value, fmt", [("head.head.weight", float("nan"), "pt"),
                                              ("patch_embedding.weight", float("inf"), "safetensors"),
                                              ("blocks.1.ffn.0.bias", -float("inf"), "pt")])
def test_one_non_finite_weight_is_refused_on_load(model_root, tmp_path, name, value, fmt):
    path = _poisoned(tmp_path, name, 3, value, fmt)
    with pytest.raises(NonFiniteError, match=rf"{path}: tensor '{name}' .* has 1 non-finite value"):
        StreamGenerator(model_root, checkpoint=path, device="cpu")


def test_a_cast_that_overflows_is_refused(model_root, tmp_path):
    path = _poisoned(tmp_path, "blocks.0.ffn.2.weight", 0, 1e6)  # finite in fp32, inf in fp16
    StreamGenerator(model_root, checkpoint=path, device="cpu")  # fp32: accepted
    with pytest.raises(NonFiniteError, match="blocks.0.ffn.2.weight"):
        StreamGenerator(model_root, checkpoint=path, device="cpu", dtype=torch.float16)


def test_cli_refuses_a_nan_checkpoint_and_writes_nothing(model_root, tmp_path, capsys):
    path = _poisoned(tmp_path, "head.head.weight", 0, float("nan"))
    out = tmp_path / "black.mp4"
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--checkpoint", str(path), "--chunks", "2",
                     "--device", "cpu", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "NonFiniteError" in err and "'head.head.weight'" in err, err
    assert not out.exists()


def test_first_chunk_names_the_module_that_overflowed(one_thread):  # noqa: F811
    model = tiny_model(SIZE)
    with torch.no_grad():  # finite weights whose product overflows fp32 in block 1's feed-forward
        model.dit.blocks[1].ffn[0].weight.mul_(1e20)
        model.dit.blocks[1].ffn[2].weight.mul_(1e20)
    gen = StreamGenerator(model, device="cpu")
    gen.reset("a cat", seed=0)
    with pytest.raises(NonFiniteError, match=r"first in module 'blocks\.1\.ffn\.2' during denoising step 1 of 4"):
        gen.step()


def test_first_chunk_watch_costs_nothing_when_finite(one_thread):  # noqa: F811
    """A healthy stream is the same with the watch as without (the hooks only record)."""
    a, b = StreamGenerator(tiny_model(SIZE), device="cpu"), StreamGenerator(tiny_model(SIZE), device="cpu")
    a.reset("a cat", seed=5)
    b.reset("a cat", seed=5)
    first = a.step().latents
    with torch.no_grad():  # b's chunk 0 by the plain loop, no watch
        b._chunk = 1
        plain = b.step().latents
    assert torch.equal(first, plain)
    assert not a.dit._forward_hooks and not any(m._forward_hooks for m in a.dit.modules())  # hooks removed


def test_finite_watch_reports_the_first_module_in_execution_order():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        net[2].weight.fill_(float("inf"))
    with FiniteWatch(net) as watch:
        net(torch.ones(1, 2))
        net(torch.ones(1, 2))
    assert watch.first_bad() == (0, "2")


# ---- one rule for seeds, dtypes, devices and models ----

def test_seed_rule():
    assert check_seed(3) == 3 and check_seed(np.int64(7)) == 7 and type(check_seed(np.uint8(1))) is int
    assert check_seed(2**63 - 1) == 2**63 - 1
    for bad in (-1, 2**63, 2**64, 10**30, -(2**63) - 1):
        with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.2\*\*63-1"):
            check_seed(bad)
    for bad in (1.5, True, "3", None, np.float64(2.0)):
        with pytest.raises(ValueError, match="seed must be an integer"):
            check_seed(bad)


def test_api_seed_dtype_and_model_rules(one_thread):  # noqa: F811
    gen = StreamGenerator(tiny_model(SIZE), device="cpu", dtype="float32")
    assert gen.dtype == torch.float32
    gen.reset("a cat", seed=np.int64(3))
    a = gen.step().latents
    gen.reset("a cat", seed=3)
    assert torch.equal(a, gen.step().latents)  # a numpy seed is the same seed
    with pytest.raises(ValueError, match=r"0\.\.2\*\*63-1"):
        gen.reset("a cat", seed=-1)  # torch would alias it to 2**64-1
    with pytest.raises(ValueError, match="dtype 'float33' is not one of"):
        StreamGenerator(tiny_model(SIZE), device="cpu", dtype="float33")
    with pytest.raises(TypeError, match="model must be a model directory path, a LoadedModel or None"):
        StreamGenerator(123, device="cpu")
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16 and resolve_dtype(None, "cpu") is torch.float32
    with pytest.raises(ValueError, match="floating point"):
        resolve_dtype(torch.int8, "cpu")


def test_device_rule():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'bogus' is not a device"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was asked for, but"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="'cuda:1' was asked for"):
            StreamGenerator(tiny_model(SIZE), device="cuda:1")
    else:  # pragma: no cover - GPU machines
        with pytest.raises(ValueError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")

