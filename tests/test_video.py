"""Mp4Writer: written videos read back with PyAV; interrupted writers leave playable files; early path errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from rfrt.video import Mp4Writer  # noqa: E402

COLOUR = (200, 60, 120)


def _read(path):
    """All frames of the video at path as uint8 [T, H, W, 3], and its average frame rate."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        return np.stack(frames), stream.average_rate


def _flat(t, h=48, w=64, colour=COLOUR):
    return np.broadcast_to(np.array(colour, np.uint8), (t, h, w, 3)).copy()


def test_write_flat_colour_video(tmp_path):
    path = tmp_path / "flat.mp4"
    with Mp4Writer(path) as w:
        for _ in range(5):
            w.write(_flat(4))
        assert w.frames_written == 20
    frames, rate = _read(path)
    assert frames.shape == (20, 48, 64, 3)
    assert rate == 16
    err = np.abs(frames.astype(int) - np.array(COLOUR)).max()
    print(f"flat colour round trip through H.264 yuv420p: max abs err {err}")
    assert err <= 4


def test_torch_frames_and_fps(tmp_path):
    torch = pytest.importorskip("torch")
    from rfrt.decoders import to_uint8_frames
    x = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 1, 3, 32, 32).expand(1, 6, 3, 32, 32)
    path = tmp_path / "t.mp4"
    with Mp4Writer(path, fps=24) as w:
        w.write(to_uint8_frames(x)[0])
    frames, rate = _read(path)
    assert frames.shape == (6, 32, 32, 3) and rate == 24
    # A smooth gradient survives compression closely on average.
    assert np.abs(frames.astype(float) - to_uint8_frames(x)[0].numpy()).mean() <= 3


def test_file_grows_while_writing(tmp_path):
    path = tmp_path / "grow.mp4"
    rng = np.random.default_rng(0)
    sizes = []
    with Mp4Writer(path, codec_options={"tune": "zerolatency", "preset": "ultrafast"}) as w:
        for _ in range(4):
            w.write(rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
            sizes.append(os.path.getsize(path))
    assert sizes[-1] > sizes[0] > 0, sizes
    assert os.path.getsize(path) >= sizes[-1]


def test_exception_mid_stream_leaves_playable_file(tmp_path):
    path = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(path) as w:
            w.write(_flat(7))
            w.write(_flat(3, colour=(10, 200, 30)))
            raise RuntimeError("boom")
    frames, _ = _read(path)
    assert frames.shape == (10, 48, 64, 3)
    assert np.abs(frames[:7].astype(int) - np.array(COLOUR)).max() <= 4
    assert np.abs(frames[7:].astype(int) - np.array((10, 200, 30))).max() <= 4


def test_keyboard_interrupt_leaves_playable_file(tmp_path):
    path = tmp_path / "ctrlc.mp4"
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(path) as w:
            w.write(_flat(5))
            raise KeyboardInterrupt
    assert _read(path)[0].shape[0] == 5


def test_bad_frames_error_clearly(tmp_path):
    path = tmp_path / "bad.mp4"
    with Mp4Writer(path) as w:
        with pytest.raises(ValueError, match="even"):
            w.write(_flat(1, h=47))
        with pytest.raises(ValueError, match="uint8"):
            w.write(_flat(1).astype(np.float32))
        with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
            w.write(_flat(1)[0])
        w.write(_flat(2))
        with pytest.raises(ValueError, match="differs"):
            w.write(_flat(1, h=32))
    assert _read(path)[0].shape[0] == 2
    with pytest.raises(RuntimeError, match="closed"):
        w.write(_flat(1))


def test_unwritable_paths_fail_before_any_frame(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Mp4Writer(tmp_path / "no" / "such" / "dir.mp4")
    with pytest.raises(IsADirectoryError):
        Mp4Writer(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("directory permissions are not enforced for this user")
        with pytest.raises(PermissionError, match="cannot write"):
            Mp4Writer(ro / "x.mp4")
    finally:
        ro.chmod(0o700)


def test_parent_is_a_file_and_os_refusal(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        Mp4Writer(tmp_path / "f" / "x.mp4")

    # Root ignores permission bits; simulate the OS refusing to create the file (read-only mount, ACL, quota).
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr("rfrt.video.open", refuse, raising=False)
    with pytest.raises(PermissionError, match="cannot write.*Read-only file system"):
        Mp4Writer(tmp_path / "x.mp4")


def test_read_only_file_fails_early(tmp_path):
    path = tmp_path / "locked.mp4"
    path.write_bytes(b"")
    path.chmod(0o400)
    if os.access(path, os.W_OK):
        pytest.skip("file permissions are not enforced for this user")
    with pytest.raises(PermissionError, match="cannot write"):
        Mp4Writer(path)


def test_no_frames_leaves_no_file_and_bad_args(tmp_path):
    path = tmp_path / "empty.mp4"
    with Mp4Writer(path):
        assert path.exists()  # created up front: the writability check
    assert not path.exists()
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "a.mp4", fps=0)
    with pytest.raises(ValueError, match="crf"):
        Mp4Writer(tmp_path / "a.mp4", crf=99)
