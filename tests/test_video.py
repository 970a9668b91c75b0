"""Mp4Writer: written videos read back with PyAV; interrupted writers leave playable files; early path errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from rfrt.video import Mp4Writer, OutputPathError, check_output, partial_path  # noqa: E402

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
            sizes.append(os.path.getsize(w.partial_path))  # the partial file grows; the target appears at close
            assert not path.exists()
    assert sizes[-1] > sizes[0] > 0, sizes
    assert os.path.getsize(path) >= sizes[-1]
    assert not os.path.exists(w.partial_path) and w.video_path == str(path)


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
    real_open = os.open

    def refuse(file, *args, **kwargs):
        if str(file).endswith(".partial.mp4"):
            raise OSError(30, "Read-only file system")
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse)
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
    with Mp4Writer(path) as w:
        assert os.path.exists(w.partial_path) and not path.exists()  # created up front: the writability check
    assert not path.exists() and not os.path.exists(w.partial_path) and w.video_path is None
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "a.mp4", fps=0)
    with pytest.raises(ValueError, match="crf"):
        Mp4Writer(tmp_path / "a.mp4", crf=99)


# ---- the output path is never destroyed (issue #14, item 1) ----

def _write(path, t, colour=COLOUR):
    with Mp4Writer(path) as w:
        w.write(_flat(t, colour=colour))


def test_unknown_container_is_refused_before_anything_is_written(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for bad, why in ((notes, "extension '.txt'"), (tmp_path / "video", "has no extension"),
                     (tmp_path / "v.mp4.bak", "extension '.bak'")):
        with pytest.raises(OutputPathError, match=why):
            Mp4Writer(bad)
        with pytest.raises(OutputPathError, match=why):
            check_output(bad)
    assert notes.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no 0-byte `video`, no partial file


def test_an_input_of_the_run_is_never_an_output(tmp_path):
    ckpt = tmp_path / "mymodel.mp4"  # even with a video extension
    ckpt.write_bytes(b"weights" * 100)
    link = tmp_path / "link.mp4"
    link.symlink_to(ckpt)
    for out in (ckpt, link, tmp_path / "." / "mymodel.mp4"):
        with pytest.raises(OutputPathError, match="is also an input"):
            Mp4Writer(out, inputs=[None, str(ckpt)])
    assert ckpt.read_bytes() == b"weights" * 100


def test_existing_video_is_replaced_only_when_the_new_one_is_complete(tmp_path):
    path = tmp_path / "v.mp4"
    _write(path, 5)
    old = path.read_bytes()
    path.chmod(0o640)
    with Mp4Writer(path) as w:
        w.write(_flat(3, colour=(10, 200, 30)))
        w.write(_flat(3, colour=(10, 200, 30)))
        assert path.read_bytes() == old  # untouched while the new video is written
    frames, _ = _read(path)
    assert frames.shape[0] == 6
    assert os.stat(path).st_mode & 0o777 == 0o640  # the replaced file keeps its mode
    assert not os.path.exists(partial_path(path))


def test_new_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        _write(tmp_path / "m.mp4", 2)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.mp4").st_mode & 0o777 == 0o640


def test_failure_keeps_an_existing_video_and_finalises_the_partial_one(tmp_path):
    path = tmp_path / "v.mp4"
    _write(path, 5)
    old = path.read_bytes()
    with pytest.raises(KeyboardInterrupt) as info:
        with Mp4Writer(path) as w:
            w.write(_flat(7, colour=(10, 200, 30)))
            raise KeyboardInterrupt
    assert path.read_bytes() == old
    assert w.video_path == partial_path(path)
    assert any("7 frames written so far are in" in note for note in info.value.__notes__)
    frames, _ = _read(w.partial_path)
    assert frames.shape[0] == 7 and np.abs(frames.astype(int) - np.array((10, 200, 30))).max() <= 4
    # The next writer replaces the stale partial file (no live writer holds it) and says so.
    with Mp4Writer(path) as again:
        assert again.replaced_partial
        again.write(_flat(2))
    assert _read(path)[0].shape[0] == 2 and not os.path.exists(partial_path(path))


def test_two_writers_cannot_write_one_target(tmp_path):
    path = tmp_path / "v.mp4"
    with Mp4Writer(path) as first:
        first.write(_flat(2))
        with pytest.raises(OutputPathError, match="another writer"):
            Mp4Writer(path)
        with pytest.raises(OutputPathError, match="another writer"):
            check_output(path)
    assert _read(path)[0].shape[0] == 2


def test_no_frame_leaves_an_existing_target_alone(tmp_path):
    path = tmp_path / "v.mkv"
    path.write_bytes(b"old")
    with Mp4Writer(path):
        pass
    assert path.read_bytes() == b"old" and not os.path.exists(partial_path(path))


@pytest.mark.parametrize("name", ["v.mp4", "v.mov", "v.mkv", "V.MP4"])
def test_every_container_is_playable_when_complete(tmp_path, name):
    _write(tmp_path / name, 4)
    assert _read(tmp_path / name)[0].shape[0] == 4
