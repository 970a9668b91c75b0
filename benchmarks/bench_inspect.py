"""`rfrt inspect` throughput: frames analysed per second, on a frame iterator and on MP4 files (decode included).

- ten minutes at 64x48, 16 fps (9600 frames) as a frame iterator: the long-stream case of
  tests/test_inspect_memory.py, timed here instead of there;
- an MP4 at 256x144 (analysed at its own size) and at the Wan resolution 832x480 (flow, colour and copy on the
  256-px analysis frame, sharpness at full size), through the PyAV reader.
Each reports frames/s in extra_info. Run: pytest benchmarks/bench_inspect.py -o python_files='bench_*.py'
"""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("av")

from rfrt.inspect import inspect_frames, inspect_video  # noqa: E402
from rfrt.video import Mp4Writer  # noqa: E402


def _texture(h, w):
    return cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.2)


def test_ten_minute_iterator(benchmark):
    fps, n = 16, 16 * 600
    base = _texture(48, 64)
    report = benchmark.pedantic(lambda: inspect_frames((np.roll(base, t, 1) for t in range(n)), fps,
                                                       chunk_frames=12), rounds=1, iterations=1)
    assert report.frames == n
    benchmark.extra_info.update(frames=n, size="64x48", frames_per_s=n / benchmark.stats.stats.mean)


@pytest.fixture(scope="module", params=[(144, 256, 320), (480, 832, 96)], ids=["256x144", "832x480"])
def mp4(request, tmp_path_factory):
    h, w, n = request.param
    path = tmp_path_factory.mktemp("bench") / f"pan_{w}x{h}.mp4"
    base = _texture(h, w)
    with Mp4Writer(path, fps=16, codec_options={"preset": "ultrafast"}) as writer:
        for t in range(0, n, 16):
            writer.write(np.stack([np.roll(base, 2 * (t + i), 1) for i in range(16)]))
    return path, n, f"{w}x{h}"


def test_mp4_file(benchmark, mp4):
    path, n, size = mp4
    report = benchmark.pedantic(lambda: inspect_video(path, chunk_frames=12), rounds=2, iterations=1)
    assert report.frames == n
    benchmark.extra_info.update(frames=n, size=size, frames_per_s=n / benchmark.stats.stats.mean)
