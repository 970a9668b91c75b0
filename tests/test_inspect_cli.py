"""`rfrt inspect` in a real subprocess: files rfrt wrote (chunk length from the metadata), other containers and
odd sizes, and every kind of bad input giving one clear line and no traceback; `rfrt generate --inspect`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from rfrt.inspect import read_chunk_metadata, rfrt_chunk_metadata  # noqa: E402
from rfrt.video import Mp4Writer  # noqa: E402


def _env(extra_path: str | None = None):
    paths = [p for p in sys.path if p]
    if extra_path:
        paths.insert(0, extra_path)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_inspect(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "rfrt.cli", "inspect", *map(str, args)], capture_output=True,
                          text=True, env=env or _env(), cwd=cwd, timeout=300)


def assert_one_clear_error(done, rc, *words):
    assert done.returncode == rc, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rfrt: error: "), done.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _panning(h, w, n, seed=0):
    base = cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.2)
    return np.stack([np.roll(base, t, axis=1) for t in range(n)])


@pytest.fixture(scope="module")
def rfrt_mp4(tmp_path_factory):
    """An MP4 written by rfrt's writer, with its chunk length (first chunk 9 frames, then 12) in the metadata."""
    path = tmp_path_factory.mktemp("video") / "gen.mp4"
    with Mp4Writer(path, fps=16, crf=10, metadata=rfrt_chunk_metadata(12, 9)) as w:
        w.write(_panning(64, 96, 48))
    return path


def test_metadata_round_trip():
    assert read_chunk_metadata(rfrt_chunk_metadata(12, 9)) == (12, 9)
    assert read_chunk_metadata(rfrt_chunk_metadata(3)) == (3, 3)
    assert read_chunk_metadata({"comment": "made with something else chunk_frames=3"}) is None
    assert read_chunk_metadata({}) is None


def test_inspect_an_rfrt_mp4_writes_json_and_png(rfrt_mp4, tmp_path):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    done = run_inspect(rfrt_mp4, "--json", out_json, "--plot", out_png)
    assert done.returncode == 0, done.stderr
    assert "chunk length 12 frames (metadata)" in done.stdout and "stall onset" in done.stdout
    d = json.loads(out_json.read_text())
    assert d["frames"] == 48 and d["fps"] == 16 and (d["width"], d["height"]) == (96, 64)
    assert d["chunk_source"] == "metadata" and d["first_chunk_frames"] == 9
    assert [s["frame"] for s in d["seams"]] == [9, 21, 33, 45]
    assert len(d["seconds"]["motion_mean"]) == 3
    assert d["seconds"]["motion_mean"][0] == pytest.approx(1.0, rel=0.1)  # pans 1 px/frame (after H.264)
    assert d["summary"]["stall_onset_s"] is None and d["complete"] is True
    png = cv2.imread(str(out_png))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.png"]  # no temporaries left
    # --chunk-frames overrides the metadata
    done = run_inspect(rfrt_mp4, "--chunk-frames", "16", "--json", out_json, "--no-progress")
    d = json.loads(out_json.read_text())
    assert done.returncode == 0 and d["chunk_source"] == "argument" and [s["frame"] for s in d["seams"]] == [16, 32]


def test_other_containers_and_odd_sizes(tmp_path):
    path = tmp_path / "odd.mkv"
    with av.open(str(path), "w") as c:  # FFV1 keeps odd sizes (H.264 yuv420p cannot)
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 33, 17, "yuv444p"
        for f in _panning(17, 33, 25):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    done = run_inspect(path, "--json", tmp_path / "o.json", "--no-progress")
    assert done.returncode == 0, done.stderr
    d = json.loads((tmp_path / "o.json").read_text())
    assert (d["width"], d["height"], d["frames"]) == (33, 17, 25) and d["chunk_source"] == "none"
    assert d["summary"]["motion_mean"] == pytest.approx(1.0, rel=0.15) and d["seams"] == []


def test_one_frame_video_is_a_defined_result(tmp_path):
    path = tmp_path / "one.mp4"
    with Mp4Writer(path, fps=16) as w:
        w.write(_panning(32, 32, 1))
    done = run_inspect(path, "--json", tmp_path / "one.json", "--no-progress")
    assert done.returncode == 0, done.stderr
    d = json.loads((tmp_path / "one.json").read_text())
    assert d["frames"] == 1 and d["summary"]["motion_mean"] is None and d["summary"]["copy_ssim_late"] == 1.0
    assert "one frame: no motion numbers" in done.stdout


def test_bad_inputs_give_one_clear_error(tmp_path, rfrt_mp4):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    zero = tmp_path / "zero.mp4"  # a finished MP4 without a single frame
    with av.open(str(zero), "w") as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    truncated = tmp_path / "truncated.mp4"  # rfrt's MP4s have their index at the end: cut, it cannot be opened
    truncated.write_bytes(rfrt_mp4.read_bytes()[: rfrt_mp4.stat().st_size // 2])
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    cases = [(tmp_path / "missing.mp4", "does not exist"), (tmp_path, "is a directory"),
             (text, "cannot open"), (empty, "is empty"), (zero, "no video stream"), (truncated, "truncated"),
             (audio, "no video stream")]
    for path, words in cases:
        assert_one_clear_error(run_inspect(path, "--no-progress"), 1, words)


def test_corrupt_tail_analyses_what_decodes(tmp_path):
    path = tmp_path / "fast.mp4"  # index first (faststart), so a damaged tail still opens
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for f in _panning(64, 64, 64):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    done = run_inspect(cut, "--json", tmp_path / "cut.json", "--no-progress")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("rfrt: warning: ") and "truncated" in done.stderr
    d = json.loads((tmp_path / "cut.json").read_text())
    assert d["complete"] is False and 0 < d["frames"] < 64 and d["notes"]


def test_output_problems_fail_before_the_analysis(tmp_path, rfrt_mp4):
    assert_one_clear_error(run_inspect(rfrt_mp4, "--json", tmp_path / "nodir" / "r.json"), 2, "does not exist")
    assert_one_clear_error(run_inspect(rfrt_mp4, "--plot", rfrt_mp4), 2, "is the input video")
    assert_one_clear_error(run_inspect(rfrt_mp4, "--chunk-frames", "0"), 2, "--chunk-frames must be positive")
    assert_one_clear_error(run_inspect(rfrt_mp4, "--first-chunk-frames", "9"), 2, "needs --chunk-frames")
    assert_one_clear_error(run_inspect(rfrt_mp4, "--analysis-size", "0"), 2, "--analysis-size")


def test_plot_without_matplotlib_says_what_to_install(tmp_path, rfrt_mp4):
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    done = run_inspect(rfrt_mp4, "--plot", tmp_path / "r.png", env=_env(str(blocker)))
    assert_one_clear_error(done, 2, "pip install 'rfrt[inspect]'")
    assert not (tmp_path / "r.png").exists()
    # without --plot the analysis needs no matplotlib
    assert run_inspect(rfrt_mp4, "--no-progress", env=_env(str(blocker))).returncode == 0


def test_generate_inspect_writes_the_report_beside_the_video(tmp_path, tmp_path_factory):
    import torch

    from rfrt import cli
    from test_generator_tiny import write_model_dir

    model = write_model_dir(tmp_path_factory.mktemp("model"), size=16)
    out = tmp_path / "clip.mp4"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["generate", "a red car", "--model", str(model), "--chunks", "6", "--out", str(out),
                         "--device", "cpu", "--dtype", "fp32", "--inspect"]) == 0
    finally:
        torch.set_num_threads(before)
    d = json.loads((tmp_path / "clip.inspect.json").read_text())
    assert d["frames"] == 18 and d["chunk_frames"] == 3 and d["chunk_source"] == "metadata"
    assert [s["frame"] for s in d["seams"]] == [3, 6, 9, 12, 15]
    assert cv2.imread(str(tmp_path / "clip.inspect.png")) is not None
    with av.open(str(out)) as c:  # the chunk length travels in the MP4 itself
        assert read_chunk_metadata(dict(c.metadata)) == (3, 3)


def test_generate_inspect_without_matplotlib_fails_before_generating(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    done = subprocess.run([sys.executable, "-m", "rfrt.cli", "generate", "a red car", "--out",
                           str(tmp_path / "v.mp4"), "--inspect"], capture_output=True, text=True,
                          env=_env(str(blocker)), timeout=300)
    assert_one_clear_error(done, 2, "pip install 'rfrt[inspect]'")
    assert not (tmp_path / "v.mp4").exists()


def test_without_opencv_says_what_to_install(tmp_path, rfrt_mp4):
    blocker = tmp_path / "block"
    (blocker / "cv2").mkdir(parents=True)
    (blocker / "cv2" / "__init__.py").write_text("raise ImportError('No module named cv2')\n")
    assert_one_clear_error(run_inspect(rfrt_mp4, "--no-progress", env=_env(str(blocker))), 2,
                           "needs OpenCV: pip install 'rfrt[inspect]'")
