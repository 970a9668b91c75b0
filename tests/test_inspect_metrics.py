"""rfrt.inspect metrics against closed-form videos made here: a textured square at a known speed that stops at a
known second, a static video, a hard cut at a chunk boundary, a slow colour ramp, a blur ramp."""
import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from rfrt.inspect import InspectConfig, inspect_frames  # noqa: E402
from rfrt.inspect.summary import equal_chunks, stall_onset  # noqa: E402


def _texture(h, w, seed, channels=3):
    # Blurred noise: every pixel has a gradient, so optical flow is well defined everywhere.
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 1.2)


def _moving_square(fps, speed, stop_s, seconds, h=144, w=256, side=96):
    bg, sq = _texture(h, w, 0), _texture(side, side, 1)
    last = round(stop_s * fps)  # the square's last step lands on this frame

    def frames():
        for t in range(round(seconds * fps)):
            x = 8 + speed * min(t, last)
            f = bg.copy()
            f[24:24 + side, x:x + side] = sq
            yield f
    return frames()


@pytest.mark.parametrize("analysis_size,tol", [(256, 0.03), (128, 0.05)])  # native size, and flow at half size
def test_square_speed_and_stall_onset(analysis_size, tol):
    fps, speed, stop = 16, 3, 3.0
    r = inspect_frames(_moving_square(fps, speed, stop, 6), fps, config=InspectConfig(analysis_size=analysis_size))
    assert r.analysis_size == ((72, 128) if analysis_size == 128 else (144, 256))
    moving = slice(0, 3)
    # The square covers 96*96 / (144*256) = 25% of the picture: p95 over pixels is its speed, in px/frame of the
    # original video whatever the analysis size; the mean over pixels is speed x covered fraction (the flow
    # spills a few pixels past the square's edges: +8%).
    for p95 in r.seconds.motion_p95[moving]:
        assert p95 == pytest.approx(speed, rel=tol)
    for mean in r.seconds.motion_mean[moving]:
        assert mean == pytest.approx(speed * 96 * 96 / (144 * 256), rel=0.1)
    assert max(r.seconds.motion_mean[4:]) < 0.01
    s = r.summary
    assert s.stall_onset_s == pytest.approx(stop, abs=1 / fps)
    assert s.opening_motion == pytest.approx(r.seconds.motion_mean[0], rel=0.1)
    assert s.motion_late_early < 0.05
    assert s.copy_ssim_late > 0.5  # the square froze where it stopped: late seconds resemble, not equal, the first


def test_no_stall_while_moving_and_a_late_stall():
    fps = 10
    moving = inspect_frames(_moving_square(fps, 2, 99, 8, h=64, w=256, side=32), fps)
    assert moving.summary.stall_onset_s is None and moving.summary.motion_late_early == pytest.approx(1, abs=0.1)
    # Stopping half a second before the end is not reported (a stall must last min_still_s = 1 s).
    assert inspect_frames(_moving_square(fps, 2, 7.5, 8, h=64, w=256, side=32), fps).summary.stall_onset_s is None
    late = inspect_frames(_moving_square(fps, 2, 6.5, 8, h=64, w=256, side=32), fps)
    assert late.summary.stall_onset_s == pytest.approx(6.5, abs=1 / fps)


def test_stall_onset_ignores_a_one_frame_spike_and_needs_the_whole_tail_still():
    m = np.r_[np.nan, np.full(40, 2.0), np.zeros(40)]
    assert stall_onset(m, 10, 2, 0.25, 1).onset_s == pytest.approx(4.0)
    spike = m.copy()
    spike[60] = 5.0  # one bad frame in the still tail: median-filtered away
    assert stall_onset(spike, 10, 2, 0.25, 1).onset_s == pytest.approx(4.0)
    resumed = m.copy()
    resumed[60:63] = 2.0  # it moved again for three frames: the stall starts after that
    assert stall_onset(resumed, 10, 2, 0.25, 1).onset_s == pytest.approx(6.2)


def test_static_video():
    frame = _texture(90, 160, 3)
    r = inspect_frames((frame for _ in range(5 * 12)), 12, chunk_frames=4)
    s = r.summary
    assert max(r.seconds.motion_mean[i] for i in range(5)) < 1e-3 and s.motion_mean < 1e-3
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in r.seconds.copy_ssim)
    assert all(v == 100.0 for v in r.seconds.copy_psnr)
    assert s.copy_ssim_late == pytest.approx(1.0, abs=1e-9)
    assert s.colour_de_max == pytest.approx(0.0, abs=1e-9) and s.vde_colour == pytest.approx(0.0, abs=1e-9)
    assert s.sharpness_decay == pytest.approx(1.0) and s.vde_sharpness == pytest.approx(0.0)
    assert s.stall_onset_s == 0.0  # it never moved
    # Seams of a still stream: boundary flow over the floored baseline, ~0 (no spike).
    assert s.seam_ratio_max < 0.05


@pytest.mark.parametrize("flow", ["farneback", "dis"])
def test_hard_cut_spikes_at_its_chunk_boundary_only(flow):
    h, w, chunk = 96, 128, 8
    a, b = _texture(h, w, 1), _texture(h, w, 2)
    cut = 3 * chunk  # the first frame of chunk 4 shows a different scene
    frames = (np.roll(a if t < cut else b, t, axis=1) for t in range(10 * chunk))  # pans 1 px/frame throughout
    r = inspect_frames(frames, 16, chunk_frames=chunk, config=InspectConfig(flow=flow))
    assert [s.frame for s in r.seams] == list(range(chunk, 10 * chunk, chunk))
    assert r.summary.seam_baseline == pytest.approx(1.0, rel=0.05)
    for s in r.seams:
        if s.frame == cut:
            assert s.ratio > 2.0
        else:
            assert s.ratio == pytest.approx(1.0, abs=0.1)
    assert r.summary.seam_worst_frame == cut


def test_seams_compare_each_boundary_with_its_own_neighbourhood():
    # Pans 3 px/frame, then 1 px/frame from mid-chunk 5 on: a speed change is no seam (against the median of the
    # whole stream, every boundary of one half would read 3x or 1/3x).
    tex, chunk, pos, frames = _texture(64, 96, 9), 8, 0, []
    for t in range(12 * chunk):
        pos += 0 if t == 0 else (3 if t <= 5 * chunk + 4 else 1)
        frames.append(np.roll(tex, pos, axis=1))
    r = inspect_frames(frames, 16, chunk_frames=chunk)
    assert len(r.seams) == 11
    for s in r.seams:
        assert s.ratio == pytest.approx(1.0, abs=0.1) and s.baseline == pytest.approx(3 if s.frame <= 40 else 1,
                                                                                      rel=0.1)


def test_seams_follow_a_different_first_chunk_and_batches_of_tensors_are_frames():
    import torch

    frames = np.stack([np.roll(_texture(64, 64, 5), t, axis=0) for t in range(40)])
    r = inspect_frames(frames, 16, chunk_frames=12, first_chunk_frames=9)
    assert [s.frame for s in r.seams] == [9, 21, 33]
    # StreamGenerator-style chunks: torch uint8 batches [T, H, W, 3] of 9, then 12 frames
    chunks = [torch.from_numpy(frames[:9])] + [torch.from_numpy(frames[i:i + 12]) for i in range(9, 40, 12)]
    assert inspect_frames(chunks, 16, chunk_frames=12, first_chunk_frames=9) == r


def _srgb_to_lab(rgb):
    """CIE L*a*b* (D65) of an sRGB colour in [0, 1], from the CIE / IEC 61966-2-1 formulas (no OpenCV)."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_slow_colour_ramp_gives_its_delta_e():
    fps, seconds = 8, 10
    start, end = np.array([60, 120, 180]), np.array([140, 110, 90])  # uint8 RGB, drifting over the whole video
    colours = [np.rint(start + (end - start) * t / (fps * seconds - 1)).astype(np.uint8)
               for t in range(fps * seconds)]
    r = inspect_frames((np.broadcast_to(c, (32, 48, 3)).copy() for c in colours), fps)
    labs = np.array([_srgb_to_lab(c / 255) for c in colours])
    first = labs[:fps].mean(0)
    for s in range(seconds):
        expected = np.linalg.norm(labs[s * fps:(s + 1) * fps].mean(0) - first)
        assert r.seconds.colour_de[s] == pytest.approx(expected, abs=0.25 + 0.01 * expected)
    assert r.seconds.colour_de[-1] > 20  # a visible drift, measured
    # VDE over N = 10 chunks (here one second each), weights N - i + 1, in dE
    chunk_labs = [labs[p].mean(0) for p in equal_chunks(len(colours), 10)]
    vde = sum((10 - i + 1) * np.linalg.norm(chunk_labs[i - 1] - chunk_labs[0]) for i in range(2, 11))
    assert r.summary.vde_colour == pytest.approx(vde, rel=0.02)
    assert r.summary.motion_mean < 1e-3  # flat frames: nothing moves


def test_blur_ramp_gives_its_sharpness_decay():
    # A vertical cosine grating cos(k x) is an eigenfunction of both the Gaussian blur and the 4-neighbour
    # Laplacian (also at the mirrored borders: W - 1 is a multiple of the half period). Blurring multiplies its
    # amplitude by G(k) = sum_j g_j cos(k j) and the Laplacian by (2 cos k - 2), so the Laplacian variance of a
    # frame blurred with sigma is (2 - 2 cos k)^2 (A G(k))^2 var_x(cos k x), up to uint8 rounding.
    period, h, w, amp, fps = 8, 24, 65, 100.0, 8
    k = 2 * math.pi / period
    x = np.arange(w)
    grating = np.broadcast_to(128 + amp * np.cos(k * x), (h, w)).astype(np.float32)
    sigmas = [0.0, 0.5, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8]  # one per second, sharper to softer

    def gain(sigma):
        if sigma == 0:
            return 1.0
        g = cv2.getGaussianKernel(2 * math.ceil(4 * sigma) + 1, sigma)[:, 0]  # cv2.GaussianBlur's kernel
        j = np.arange(g.size) - g.size // 2
        return float((g * np.cos(k * j)).sum())

    def frame(sigma):
        img = grating if sigma == 0 else cv2.GaussianBlur(grating, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        grey = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)

    frames = [frame(s) for s in sigmas for _ in range(fps)]
    r = inspect_frames(frames, fps)
    expected = [(2 - 2 * math.cos(k)) ** 2 * (amp * gain(s)) ** 2 * np.cos(k * x).var() for s in sigmas]
    for got, want in zip(r.seconds.sharpness, expected):
        assert got == pytest.approx(want, rel=0.03, abs=2.0)  # uint8 rounding adds ~20/12 grey-level^2
    assert r.summary.sharpness_decay == pytest.approx(np.mean(expected[-2:]) / np.mean(expected[:2]), rel=0.05)
    # VDE over 8 chunks (one per sigma): sum_{i=2..8} (8 - i + 1) |m_i - m_1| / m_1
    vde = sum((8 - i + 1) * abs(expected[i - 1] - expected[0]) / expected[0] for i in range(2, 9))
    r8 = inspect_frames(frames, fps, config=InspectConfig(vde_chunks=8))
    assert r8.summary.vde_chunks == 8 and r8.summary.vde_sharpness == pytest.approx(vde, rel=0.03)


def test_one_frame_and_tiny_and_odd_sizes_have_defined_results():
    one = inspect_frames([_texture(33, 17, 4)], 16, chunk_frames=3)
    assert one.frames == 1 and one.summary.motion_mean is None and one.summary.stall_onset_s is None
    assert one.summary.copy_ssim_late == pytest.approx(1.0) and one.seams == () and one.summary.vde_sharpness is None
    assert any("one frame" in n for n in one.notes)
    odd = inspect_frames((np.roll(_texture(33, 47, 6), t, axis=1) for t in range(20)), 10)
    assert odd.summary.motion_mean == pytest.approx(1.0, rel=0.15)
    tiny = inspect_frames([_texture(5, 7, 7)] * 4, 10)
    assert tiny.summary.motion_mean is None and any("too small" in n for n in tiny.notes)
    assert tiny.summary.sharpness_decay is not None


def test_bad_frames_name_the_problem():
    with pytest.raises(ValueError, match="no frames"):
        inspect_frames([], 16)
    with pytest.raises(ValueError, match="fps"):
        inspect_frames([np.zeros((8, 8, 3), np.uint8)], 0)
    with pytest.raises(ValueError, match="frame 1: size 8x10 differs"):
        inspect_frames([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], 16)
    with pytest.raises(ValueError, match="uint8"):
        inspect_frames([np.zeros((8, 8, 3), np.float32)], 16)
    with pytest.raises(ValueError, match="chunk_frames"):
        inspect_frames([np.zeros((8, 8, 3), np.uint8)], 16, chunk_frames=0)
    with pytest.raises(ValueError, match="stall_fraction"):
        InspectConfig(stall_fraction=1.5)


def test_report_json_is_finite_and_atomic(tmp_path):
    import json

    r = inspect_frames([_texture(16, 16, 8)] * 3, 16)
    out = tmp_path / "r.json"
    out.write_text("old")
    r.write_json(out)
    d = json.loads(out.read_text())
    assert d["frames"] == 3 and d["summary"]["motion_late_early"] is None and d["duration_s"] == 3 / 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left behind


def test_a_running_stream_can_be_reported_midway():
    from rfrt.inspect import StreamAnalyzer

    frames = [np.roll(_texture(32, 32, 10), t, axis=1) for t in range(40)]
    a = StreamAnalyzer(16)
    for f in frames[:20]:
        a.add(f)
    midway = a.finish(chunk_frames=4)  # mid-second: the partial second counts, and nothing is consumed
    for f in frames[20:]:
        a.add(f)
    assert midway == inspect_frames(frames[:20], 16, chunk_frames=4)
    assert a.finish(chunk_frames=4) == inspect_frames(frames, 16, chunk_frames=4)
