"""Continuation weights (manifest "continuation", rfrt.runtime.weights): a primed stream runs on them, a fresh
stream on the model's own, each exactly as a model that has only that set; the model directory writes, reads,
verifies and refuses them like the DiT's weights."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rfrt.generator import StreamGenerator
from rfrt.model_dir import ModelDirError, load_model_dir, read_manifest, verify_model_dir
from test_generator_oracle import max_rel
from test_generator_tiny import one_thread, tiny_dit, tiny_model  # noqa: F401 - fixture
from test_model_dir_write import _parts, _write

PROMPT = "a cat walks on the beach"


def _chunks(gen, prompt, seed, n, context=None):
    gen.reset(prompt, seed=seed, context=context)
    return [gen.step().latents for _ in range(n)]


def test_a_primed_stream_runs_on_the_continuation_weights_and_a_fresh_one_on_the_streams(one_thread):  # noqa: F811
    base, other = tiny_model(), tiny_model(seed=1)  # `other` has the continuation weights as its only set
    both = dataclasses.replace(tiny_model(), continuation=tiny_dit(seed=1).state_dict())
    gen, plain, cont = (StreamGenerator(m, device="cpu") for m in (both, base, other))
    context = torch.cat(_chunks(plain, PROMPT, 3, 4))[:10]  # 3 whole chunks and a held frame

    fresh = _chunks(gen, PROMPT, 5, 4)
    assert max_rel(fresh, _chunks(plain, PROMPT, 5, 4)) <= 1e-6
    primed = _chunks(gen, PROMPT, 5, 4, context)
    assert gen.primed.weights == "continuation"
    assert max_rel(primed, _chunks(cont, PROMPT, 5, 4, context)) <= 1e-6
    assert max_rel(primed, _chunks(plain, PROMPT, 5, 4, context)) > 1e-3  # the two sets differ
    gen.set_prompt("a dog runs", recache=True)  # the cross K/V of a new prompt come from the set in use
    cont.reset(PROMPT, seed=5, context=context)
    [cont.step() for _ in range(4)]
    cont.set_prompt("a dog runs", recache=True)
    assert max_rel([gen.step().latents], [cont.step().latents]) <= 1e-6
    # back to a fresh stream: the stream's weights again, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(_chunks(gen, PROMPT, 5, 4), fresh))
    assert all(torch.equal(t, base.dit.state_dict()[k]) for k, t in gen.dit.state_dict().items())

    off = StreamGenerator(both, device="cpu", continuation_weights=False)
    assert max_rel(_chunks(off, PROMPT, 5, 4, context), _chunks(plain, PROMPT, 5, 4, context)) <= 1e-6
    assert off.primed.weights == "stream"
    with pytest.raises(ValueError, match="do not match the DiT"):
        StreamGenerator(dataclasses.replace(tiny_model(), continuation={"x": torch.zeros(1)}), device="cpu")


def test_model_directory_carries_continuation_weights(tmp_path):
    dit, text = _parts()
    second = _parts(seed=1)[0].state_dict()
    out = _write(tmp_path / "m", dit, text, continuation_weights=second)
    verify_model_dir(out)
    manifest = read_manifest(out)
    assert manifest.continuation_weights == out / "continuation" / "model.safetensors"
    loaded = load_model_dir(out)
    assert loaded.continuation.keys() == second.keys()
    assert all(torch.equal(loaded.continuation[k], v) for k, v in second.items())
    assert all(torch.equal(loaded.dit.state_dict()[k], v) for k, v in dit.state_dict().items())
    assert load_model_dir(out, checkpoint=out / "dit" / "model.safetensors").continuation is None  # another DiT
    assert load_model_dir(_write(tmp_path / "one", dit, text)).continuation is None

    bad = dict(second)
    bad["head.head.weight"] = bad["head.head.weight"].clone().fill_(float("inf"))
    with pytest.raises(ModelDirError, match="continuation tensors hold NaN or inf.*nothing was written"):
        _write(tmp_path / "bad", dit, text, continuation_weights=bad)
    assert not (tmp_path / "bad").exists()
    from safetensors.torch import save_file

    save_file({k: v for k, v in second.items() if k != "head.head.weight"}, str(out / "continuation" /
                                                                                "model.safetensors"))
    with pytest.raises(ModelDirError, match="continuation/model.safetensors: tensors do not match"):
        verify_model_dir(out)
    raw = json.loads((out / "rfrt.json").read_text())
    raw["continuation"] = {"weights": "nowhere.safetensors"}
    (out / "rfrt.json").write_text(json.dumps(raw))
    with pytest.raises(ModelDirError, match="continuation weights .*nowhere.safetensors.* does not exist"):
        read_manifest(out)
    raw["continuation"] = {"weights": "x", "config": "y"}
    (out / "rfrt.json").write_text(json.dumps(raw))
    with pytest.raises(ModelDirError, match=r"continuation: unknown keys \['config'\]"):
        read_manifest(out)
