"""rfrt.model_dir.write_model_dir: the one model-directory writer. Atomic replace, refusal of non-finite
weights, and verify_model_dir finding what a cut-short write leaves."""
from __future__ import annotations

import json

import pytest
import torch

from rfrt.cache import CachePolicy
from rfrt.model_dir import ModelDirError, VideoSpec, load_model_dir, verify_model_dir, write_model_dir
from rfrt.models import CausalWanDiT, ModelConfig
from rfrt.sampling import SamplerConfig
from rfrt.text_vocab import VocabTextEncoder

CFG = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=3, out_dim=3, text_dim=16, freq_dim=32,
                  text_len=8)
CACHE = CachePolicy(window_frames=12, sink_ema_alpha=0.5, rope_rule="absolute")
SAMPLER = SamplerConfig(denoising_steps=(1000, 300), shift=3.0)


def _parts(seed=0):
    torch.manual_seed(seed)
    return CausalWanDiT(CFG), VocabTextEncoder(["a", "red", "ball"], 16, 8, 1)


def _write(path, dit, text, **kw):
    return write_model_dir(path, dit_config=dit.config, dit_weights=kw.pop("weights", dit.state_dict()),
                           text_encoder=text, cache=CACHE, sampler=SAMPLER, video=VideoSpec(8, 16, 12), **kw)


def test_written_directory_loads_with_its_manifest(tmp_path):
    dit, text = _parts()
    out = _write(tmp_path / "m", dit, text)
    verify_model_dir(out)
    loaded = load_model_dir(out)
    assert (loaded.cache, loaded.sampler, loaded.video) == (CACHE, SAMPLER, VideoSpec(8, 16, 12))
    assert all(torch.equal(v, loaded.dit.state_dict()[k]) for k, v in dit.state_dict().items())
    assert loaded.text_encoder.vocab == text.vocab
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directory left behind


def test_replace_is_atomic_and_non_finite_weights_are_refused(tmp_path, monkeypatch):
    dit, text = _parts()
    out = _write(tmp_path / "m", dit, text)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = dict(dit.state_dict())
    bad["head.head.weight"] = bad["head.head.weight"].clone().fill_(float("nan"))
    with pytest.raises(ModelDirError, match=r"1 of \d+ DiT tensors hold NaN or inf.*nothing was written"):
        _write(out, dit, text, weights=bad)

    def killed(self, directory):  # the writer dies half way (after the DiT, before the text encoder)
        raise KeyboardInterrupt

    monkeypatch.setattr(VocabTextEncoder, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(out, *_parts(seed=1))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous directory, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    monkeypatch.undo()
    new_dit, new_text = _parts(seed=1)
    _write(out, new_dit, new_text)  # a complete write replaces it
    assert torch.equal(load_model_dir(out).dit.head.head.weight, new_dit.head.head.weight)


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "dit/model.safetensors").write_bytes((d / "dit/model.safetensors").read_bytes()[:100]),
     "unreadable"),
    (lambda d: (d / "text_encoder/vocab.json").unlink(), "lacks vocab.json"),
    (lambda d: (d / "rfrt.json").unlink(), "neither rfrt.json"),
    (lambda d: (d / "rfrt.json").write_text(json.dumps({"format": "rfrt-model/1"})), "missing keys"),
])
def test_verify_finds_what_a_cut_short_write_leaves(tmp_path, damage, match):
    out = _write(tmp_path / "m", *_parts())
    damage(out)
    with pytest.raises(ModelDirError, match=match):
        verify_model_dir(out)
