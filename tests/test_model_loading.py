"""Every checkpoint layout of SPEC §1.1 loads with identical values; bad checkpoints give clear errors.

Layouts are written here with the plain writers (safetensors, torch.save, diffusers' save_pretrained), under
deliberately uninformative file names: the loader must detect the format from contents.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from model_harness import randomize
from rfrt.models.attention import FullAttention
from rfrt.models.config import ModelConfig
from rfrt.models.dit import CausalWanDiT
from rfrt.models.loading import CheckpointError, load_model, read_checkpoint
from safetensors.torch import save_file

# dim 128 = one head of the Wan head_dim, so the architecture is also inferable from shapes alone.
CFG = ModelConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, in_dim=4, out_dim=4, text_dim=8, freq_dim=8,
                  text_len=16)
WAN_JSON = {"_class_name": "WanModel", "dim": 128, "ffn_dim": 64, "num_heads": 1, "num_layers": 2, "in_dim": 4,
            "out_dim": 4, "text_dim": 8, "freq_dim": 8, "text_len": 16, "model_type": "t2v",
            "patch_size": [1, 2, 2], "eps": 1e-6}


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in CausalWanDiT(CFG).state_dict().items()}


def _assert_loaded(model: CausalWanDiT, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_wan_directory_single_file(tmp_path):
    state = _state()
    save_file(state, tmp_path / "weights-a.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(WAN_JSON))
    model = load_model(tmp_path)
    assert model.config == CFG
    _assert_loaded(model, state)


def test_wan_directory_sharded_with_index(tmp_path):
    state = _state()
    names = sorted(state)
    shards = {"s1.safetensors": names[::2], "s2.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (tmp_path / "x.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(WAN_JSON))
    _assert_loaded(load_model(tmp_path), state)


def test_bare_safetensors_infers_architecture_from_shapes(tmp_path):
    state = _state()
    save_file(state, tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt")
    assert model.config == ModelConfig(**{**CFG.__dict__, "text_len": 512})  # text_len is not in the shapes
    _assert_loaded(model, state)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip-mmap", "legacy"])
def test_reward_forcing_flat_model_prefix(tmp_path, zipfile):
    state = _state()
    torch.save({f"model.{k}": v for k, v in state.items()}, tmp_path / "a.ckpt",
               _use_new_zipfile_serialization=zipfile)
    _assert_loaded(load_model(tmp_path / "a.ckpt", config=CFG), state)


@pytest.mark.parametrize("use_ema", [False, True])
def test_self_forcing_dict_with_fsdp_prefixes(tmp_path, use_ema):
    gen, ema, critic = _state(1), _state(2), _state(3)

    def fsdp(sd):  # FSDP wraps the root and every block
        return {f"model._fsdp_wrapped_module.{k}".replace("blocks.0.", "blocks.0._fsdp_wrapped_module."): v
                for k, v in sd.items()}

    torch.save({"generator": fsdp(gen), "generator_ema": {f"model.{k}": v for k, v in ema.items()},
                "critic": {f"model.{k}": v for k, v in critic.items()}}, tmp_path / "b.bin")
    model = load_model(tmp_path / "b.bin", use_ema=use_ema, config=CFG)
    _assert_loaded(model, ema if use_ema else gen)


def test_diffusers_pipeline_directory_matches_diffusers_outputs(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                          out_channels=4, text_dim=8, freq_dim=8, ffn_dim=40, num_layers=2).eval()
    randomize(ref)
    ref.save_pretrained(tmp_path / "transformer")
    (tmp_path / "vae").mkdir()
    model = load_model(tmp_path).eval()
    assert (model.config.dim, model.config.num_heads, model.config.num_layers) == (32, 2, 2)
    x, t, text = torch.randn(1, 2, 4, 4, 4), torch.tensor([[900.0, 250.5]]), torch.randn(1, 512, 8)
    with torch.no_grad():
        ours = model(x, t, text, FullAttention())
        theirs = ref(x.transpose(1, 2), t.repeat_interleave(4, dim=1), text, return_dict=False)[0].transpose(1, 2)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-5


def test_dtype_and_meta_construction(tmp_path):
    state = _state()
    save_file(state, tmp_path / "w.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(WAN_JSON))
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.head.head.weight, state["head.head.weight"].bfloat16())


# --- bad checkpoints -----------------------------------------------------------------------------------


def test_truncated_safetensors(tmp_path):
    save_file(_state(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_model(tmp_path / "w.safetensors", config=CFG)


def test_truncated_torch_pickle(tmp_path):
    torch.save({f"model.{k}": v for k, v in _state().items()}, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"w\.pt.*corrupt or truncated"):
        load_model(tmp_path / "w.pt", config=CFG)


def test_mismatches_are_reported_together(tmp_path):
    state = _state()
    state["blocks.1.ffn.0.weight"] = torch.zeros(65, 128)
    del state["blocks.0.norm3.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "w.safetensors", config=CFG)
    msg = str(err.value)
    assert "1 missing: ['blocks.0.norm3.bias']" in msg
    assert "1 unexpected: ['blocks.0.extra.weight']" in msg
    assert "1 mis-shaped" in msg and "(65, 128)" in msg and "(64, 128)" in msg


def test_unknown_formats(tmp_path):
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_model(tmp_path / "other.safetensors", config=CFG)
    torch.save({"optimizer": {"step": 3}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_model(tmp_path / "opt.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_model(tmp_path / "notes.txt")
    torch.save({f"model.{k}": v for k, v in _state().items()}, tmp_path / "flat.pt")
    with pytest.raises(CheckpointError, match="use_ema"):
        read_checkpoint(tmp_path / "flat.pt", use_ema=True)


class _Exploit:
    """Unpickling this would create a directory: proof of arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model.patch_embedding.weight": torch.zeros(1), "x": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt.*os\.makedirs"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_shard_and_bad_config_name_the_file(tmp_path):
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        load_model(tmp_path)
    other = tmp_path / "d"
    other.mkdir()
    save_file(_state(), other / "w.safetensors")
    (other / "config.json").write_text(json.dumps({**WAN_JSON, "num_heads": 3}))
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(other)


def test_partial_checkpoint_without_config_says_what_is_missing(tmp_path):
    state = _state()
    del state["head.head.weight"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"cannot infer the architecture.*head\.head\.weight"):
        load_model(tmp_path / "w.safetensors")
