"""Loading a checkpoint needs about one model's worth of RAM, not two (meta build + assign, mmap reads).

Measured here: ~1.0x the model's bytes for safetensors and zip pickles once every weight has been read, against
~2.0x for the naive build-on-CPU-then-load_state_dict path.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rfrt.models import CausalWanDiT, ModelConfig

# ~70 M parameters (~280 MB in fp32): large enough that a second copy would dominate the measurement.
CONFIG = ModelConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=4, in_dim=16, out_dim=16, text_dim=1024,
                     text_len=64)

CHILD = r"""
import sys
def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
import torch
from rfrt.models import load_model, ModelConfig
torch.zeros(1)  # allocator and libraries warmed before the baseline
before = hwm_kib()
model = load_model(sys.argv[1], config=ModelConfig(**{cfg}))
sum(float(p.double().sum()) for p in model.parameters())  # touch every weight: mapped pages become resident
print(hwm_kib() - before, sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def _peak_over_model(path) -> float:
    cfg = {k: getattr(CONFIG, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim",
                                           "text_dim", "text_len")}
    done = subprocess.run([sys.executable, "-c", CHILD.replace("{cfg}", repr(cfg)), str(path)],
                          capture_output=True, text=True, timeout=300, check=True)
    grew_kib, model_bytes = map(int, done.stdout.split())
    return grew_kib * 1024 / model_bytes


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return CausalWanDiT(CONFIG).state_dict()


def test_safetensors_load_peaks_at_one_model(state, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    assert _peak_over_model(path) < 1.4


def test_reward_forcing_pickle_load_peaks_at_one_model(state, tmp_path):
    path = tmp_path / "rewardforcing.pt"
    torch.save({f"model.{k}": v for k, v in state.items()}, path)
    assert _peak_over_model(path) < 1.4
