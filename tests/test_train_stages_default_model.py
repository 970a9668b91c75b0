"""The embedded default model (python/rfrt/default_model/), when shipped: it loads through the runtime and
has learned the synthetic world beyond chance (background colour; chance is 1/10)."""
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "python" / "rfrt" / "default_model"

pytestmark = pytest.mark.skipif(not (MODEL / "rfrt.json").is_file(), reason="no default model shipped")


def test_manifest_and_size():
    m = json.loads((MODEL / "rfrt.json").read_text())
    assert m["format"] == "rfrt-model/1" and m["decoder"] == {"kind": "pixel"}
    assert (m["cache"]["chunk_frames"], m["cache"]["sink_frames"], m["cache"]["window_frames"]) == (3, 3, 9)
    total = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert total < 4 * 2**20, total


def test_default_model_streams_and_knows_backgrounds():
    from rfrt.generator import StreamGenerator
    from train.data.synthetic_world import SyntheticWorld
    from train.world_eval import scene_scores

    torch.set_num_threads(1)
    gen = StreamGenerator()  # the embedded default
    world = SyntheticWorld(gen.height, gen.width, 9, 1, 4242)
    hits = []
    for i in range(8):
        video, prompt = world[i]
        gen.reset(prompt, seed=i)
        frames = torch.cat([gen.step().video for _ in range(3)])
        assert frames.shape == video.shape and torch.isfinite(frames).all()
        hits.append(scene_scores(frames.float().clamp(-1, 1), world.scene(i))["background_ok"])
    assert sum(hits) / len(hits) >= 0.5, hits
