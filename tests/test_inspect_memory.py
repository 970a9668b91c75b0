"""A 10-minute stream runs through rfrt.inspect in bounded memory (its frames would take 55 MB; the analysis keeps
a few floats per frame). Speed is measured in benchmarks/bench_inspect.py, not here."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
psutil = pytest.importorskip("psutil")

from rfrt.inspect import inspect_frames  # noqa: E402


@pytest.mark.slow
def test_ten_minutes_in_bounded_memory():
    fps, seconds, h, w = 10, 600, 48, 64
    n = fps * seconds
    proc = psutil.Process()
    base = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.2)
    rss = {}

    def frames():
        for t in range(n):
            if t % 400 == 0:
                rss[t] = proc.memory_info().rss
            yield np.roll(base, t, axis=1)  # a fresh array each frame: nothing is kept unless the analysis keeps it

    report = inspect_frames(frames(), fps, chunk_frames=10)
    warm = rss[800]  # after the first seconds: OpenCV's buffers and the per-second images exist
    growth = max(rss.values()) - warm
    all_frames = n * h * w * 3
    assert growth < 12e6, f"RSS grew {growth / 1e6:.1f} MB over the stream (its frames: {all_frames / 1e6:.0f} MB)"
    assert report.frames == n and report.duration_s == seconds and len(report.seconds.time_s) == seconds
    assert report.summary.motion_mean == pytest.approx(1.0, rel=0.05)  # pans 1 px/frame
    assert report.summary.stall_onset_s is None and len(report.seams) == n // 10 - 1
