"""The claims table's long-stream columns are `rfrt inspect`'s numbers: the same streams written losslessly to
files and run through the command give the same values; a frozen stream reads as stalled, copied and undrifted."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
av = pytest.importorskip("av")

from train.evaluate_claims import inspect_metrics  # noqa: E402


def _streams(b=2, frames=48, size=32):
    """[B, F, 3, H, W] in [-1, 1]: a bright square crossing a textured background at 1 + b px/frame."""
    g = torch.Generator().manual_seed(0)
    bg = torch.rand(3, size, size, generator=g) * 1.2 - 0.6
    out = torch.empty(b, frames, 3, size, size)
    for i in range(b):
        for t in range(frames):
            out[i, t] = bg
            x = (2 + (1 + i) * t) % (size - 8)
            out[i, t, :, 8:16, x:x + 8] = 0.9
    return out


def test_a_frozen_stream_is_stalled_copied_and_undrifted():
    video = _streams()[:, :1].expand(-1, 45, -1, -1, -1)
    m = inspect_metrics(video, 3)
    assert m["stalled"] == 1.0 and m["stall_s"] == 0.0 and m["motion_late_early"] is None
    assert m["copy_ssim"] == pytest.approx(1.0) and m["colour_de"] == pytest.approx(0.0)
    assert m["sharpness"] == pytest.approx(1.0) and m["seam"] == pytest.approx(0.0)


def test_the_claims_columns_are_what_rfrt_inspect_reports(tmp_path):
    video = _streams()
    m = inspect_metrics(video, 3)
    assert m["stalled"] == 0.0 and m["motion_late_early"] == pytest.approx(1.0, abs=0.2)
    frames = ((video + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    got = []
    for i, clip in enumerate(frames):
        path = tmp_path / f"s{i}.mkv"  # FFV1 in RGB: lossless, so the command sees the very same pixels
        with av.open(str(path), "w") as c:
            s = c.add_stream("ffv1", rate=16)
            s.width, s.height, s.pix_fmt = 32, 32, "bgr0"
            for f in clip:
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(p)
            for p in s.encode(None):
                c.mux(p)
        out = tmp_path / f"s{i}.json"
        done = subprocess.run([sys.executable, "-m", "rfrt.cli", "inspect", str(path), "--chunk-frames", "3",
                               "--json", str(out), "--no-progress"], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        got.append(json.loads(out.read_text())["summary"])
    keys = {"motion_late_early": "motion_late_early", "copy_ssim": "copy_ssim_late", "colour_de": "colour_de_late",
            "sharpness": "sharpness_decay", "seam": "seam_ratio_mean"}
    for ours, theirs in keys.items():
        assert m[ours] == pytest.approx(np.mean([s[theirs] for s in got]), rel=1e-9, abs=1e-12), ours
