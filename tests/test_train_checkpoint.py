"""train.checkpoint: bit-exact resume, atomic writes, weight EMA against its closed form."""

import os
import random

import numpy as np
import pytest
import torch

from train import checkpoint as ck


class ToyData:
    """An iterator whose position is part of the checkpoint; each batch depends on the position only."""

    def __init__(self, seed: int):
        self.seed, self.pos = seed, 0

    def next(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.pos)
        self.pos += 1
        return torch.randn(4, 6, generator=g), torch.randn(4, 2, generator=g)

    def state_dict(self):
        return {"seed": self.seed, "pos": self.pos}

    def load_state_dict(self, s):
        self.seed, self.pos = s["seed"], s["pos"]


def build(init_seed: int):
    torch.manual_seed(init_seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.0, 0.999), weight_decay=0.01)
    ema = ck.WeightEMA(model, weight_ema_decay=0.9, start_step=1)
    return model, opt, ema, ToyData(seed=5)


def train_step(step, model, opt, ema, data):
    x, y = data.next()
    # Draw from every global RNG so that each one must be restored for the runs to match.
    scale = 1.0 + float(np.random.rand()) + random.random()
    noise = torch.randn_like(y) * 0.1
    loss = ((model(x) - y - noise) ** 2).mean() * scale
    opt.zero_grad()
    loss.backward()
    opt.step()
    ema.update(model, step)


def seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def test_resume_is_bit_exact(tmp_path):
    seed_all(0)
    model, opt, ema, data = build(1)
    seed_all(0)
    for step in range(4):
        train_step(step, model, opt, ema, data)
    straight = [p.detach().clone() for p in model.parameters()]
    straight_ema = {k: v.clone() for k, v in ema.shadow.items()}

    seed_all(0)
    model, opt, ema, data = build(1)
    seed_all(0)
    for step in range(2):
        train_step(step, model, opt, ema, data)
    path = ck.checkpoint_path(tmp_path, 2)
    objs = {"generator": model, "generator_optim": opt, "ema": ema, "data": data}
    ck.save_checkpoint(path, 2, objs, extra={"note": "x"})

    # Fresh objects with a different init, scrambled RNGs: everything must come from the checkpoint.
    seed_all(123)
    model, opt, ema, data = build(99)
    _ = torch.randn(100), np.random.rand(7), random.random()
    info = ck.resume(path, {"generator": model, "generator_optim": opt, "ema": ema, "data": data})
    assert info.step == 2 and info.extra == {"note": "x"} and data.pos == 2
    for step in range(info.step, 4):
        train_step(step, model, opt, ema, data)
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b)
    for k, v in ema.shadow.items():
        assert torch.equal(straight_ema[k], v)


def test_resume_detects_missing_rng_effect(tmp_path):
    """Guard that the exact-resume test can fail: without the RNG restore the runs diverge."""
    seed_all(0)
    model, opt, ema, data = build(1)
    path = tmp_path / "c.pt"
    ck.save_checkpoint(path, 0, {"m": model, "o": opt, "e": ema, "d": data})
    train_step(0, model, opt, ema, data)
    ref = [p.detach().clone() for p in model.parameters()]
    model2, opt2, ema2, data2 = build(7)
    torch.manual_seed(42)
    ck.resume(path, {"m": model2, "o": opt2, "e": ema2, "d": data2}, restore_rng=False)
    train_step(0, model2, opt2, ema2, data2)
    assert not all(torch.equal(a, b) for a, b in zip(ref, model2.parameters()))


def test_strict_names(tmp_path):
    model, opt, ema, data = build(1)
    path = tmp_path / "c.pt"
    ck.save_checkpoint(path, 3, {"generator": model})
    with pytest.raises(KeyError, match="critic"):
        ck.resume(path, {"generator": model, "critic": model})


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step_00000001.pt"
    ck.atomic_torch_save({"v": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ck.atomic_torch_save({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"].item() == 1
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind
    ck.atomic_torch_save({"v": torch.tensor(3)}, ck.checkpoint_path(tmp_path, 12))
    assert ck.latest_checkpoint(tmp_path).name == "step_00000012.pt"
    assert ck.latest_checkpoint(tmp_path / "nowhere") is None


def test_rank_rng_roundtrip(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.manual_seed(3)
    np.random.seed(3)
    ck.save_rank_rng(path, rank=1)
    a = torch.rand(3), np.random.rand(3)
    torch.manual_seed(8)
    ck.load_rank_rng(path, rank=1)
    b = torch.rand(3), np.random.rand(3)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_rank_file_holds_rank_local_state(tmp_path):
    """Each rank's data position travels in its rank file (rank 0's alone is in the checkpoint)."""
    path = tmp_path / "step_00000001.pt"
    lin = torch.nn.Linear(2, 2)
    ck.save_rank_rng(path, rank=1, states={"data": lin.state_dict()})
    other = torch.nn.Linear(2, 2)
    ck.load_rank_rng(path, rank=1, objects={"data": other})
    assert all(torch.equal(a, b) for a, b in zip(lin.state_dict().values(), other.state_dict().values()))
    with pytest.raises(KeyError, match=r"no rank-local state for \['optim'\]"):
        ck.load_rank_rng(path, rank=1, objects={"optim": other})
    # a rank file of the older layout (the RNG states alone) still restores the RNG
    ck.atomic_torch_save(ck.capture_rng_state(), ck.rank_rng_path(path, 2))
    a = torch.rand(3)
    ck.load_rank_rng(path, rank=2)
    assert torch.equal(torch.rand(3), a)


def test_weight_ema_closed_form():
    lin = torch.nn.Linear(1, 1, bias=False)
    ema = ck.WeightEMA(lin, weight_ema_decay=0.5, start_step=2)
    values = [1.0, 2.0, 4.0, 8.0]  # weights after steps 0..3
    for step, v in enumerate(values):
        with torch.no_grad():
            lin.weight.fill_(v)
        ema.update(lin, step)
        if step == 1:
            assert ema.shadow["weight"].item() == 2.0  # before start_step the shadow tracks the weights
    # step 2: 0.5*2 + 0.5*4 = 3; step 3: 0.5*3 + 0.5*8 = 5.5
    assert ema.shadow["weight"].item() == pytest.approx(5.5)
    assert ema.ema_model(lin).weight.item() == pytest.approx(5.5) and lin.weight.item() == 8.0
    with pytest.raises(ValueError):
        ck.WeightEMA(lin, weight_ema_decay=1.0)


# ---- housekeeping (issue #14): orphaned temp files, retention, file mode ----

def test_orphaned_temp_files_are_removed_and_nothing_else(tmp_path):
    d = tmp_path / "checkpoints"
    ck.atomic_torch_save({"v": torch.tensor(1)}, ck.checkpoint_path(tmp_path, 455))
    orphan = d / ".step_00000462.pt.fkv8x2a2.tmp"  # the name a kill mid-write left in the reliability probe
    orphan.write_bytes(b"x" * 1000)
    rank_orphan = d / ".step_00000462.rng_rank1.pt.ab12cd.tmp"
    rank_orphan.write_bytes(b"x")
    keep = [d / "notes.tmp", d / ".hidden", d / "step_00000462.pt.tmp"]  # not atomic_torch_save's names
    for p in keep:
        p.write_bytes(b"user")
    assert sorted(ck.remove_orphans(tmp_path)) == sorted([orphan, rank_orphan])
    assert sorted(p.name for p in d.iterdir()) == sorted([p.name for p in keep] + ["step_00000455.pt"])
    assert ck.remove_orphans(tmp_path / "nowhere") == []


def test_prune_keeps_the_last_n_with_their_rank_files(tmp_path):
    for step in (2, 4, 6, 8, 10):
        ck.atomic_torch_save({"v": torch.tensor(step)}, ck.checkpoint_path(tmp_path, step))
        ck.save_rank_rng(ck.checkpoint_path(tmp_path, step), rank=1)
    assert ck.prune_checkpoints(tmp_path, None) == []
    removed = ck.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000008.pt", "step_00000008.rng_rank1.pt", "step_00000010.pt", "step_00000010.rng_rank1.pt"]
    assert ck.latest_checkpoint(tmp_path).name == "step_00000010.pt"
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="keep must be a positive int or None"):
            ck.prune_checkpoints(tmp_path, bad)


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = ck.atomic_torch_save({"v": torch.tensor(1)}, ck.checkpoint_path(tmp_path, 1))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
