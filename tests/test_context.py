"""rfrt.context: reading images and videos, grey / alpha / size policy; the CLI's --init, --init-frames,
--drop-init, and that a bad --init leaves the output file as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rfrt.context import ContextError, context_note, fit_frames, probe, read_frames, to_rgb

av = pytest.importorskip("av")


def _png(path, array):
    """Write uint8 [H, W] / [H, W, 3] / [H, W, 4] (RGB order) as a PNG with PyAV."""
    fmt = {2: "gray", 3: "rgb24", 4: "rgba"}[array.ndim if array.ndim == 2 else array.shape[2]]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png")
        stream.height, stream.width = array.shape[:2]
        stream.pix_fmt = fmt
        for packet in stream.encode(av.VideoFrame.from_ndarray(array, format=fmt)):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _mp4(path, frames):
    from rfrt.video import Mp4Writer

    with Mp4Writer(path, fps=16, crf=0) as w:
        w.write(frames)
    return path


def test_grey_is_replicated_and_alpha_composited_over_black():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = to_rgb(grey)
    assert rgb.shape == (1, 3, 4, 3) and all(np.array_equal(rgb[0, ..., c], grey) for c in range(3))
    rgba = np.zeros((1, 1, 3, 4), np.uint8)
    rgba[0, 0, :, :3] = [200, 100, 50]
    rgba[0, 0, :, 3] = [0, 128, 255]
    out = to_rgb(rgba)[0, 0]
    assert out.tolist() == [[0, 0, 0], [100, 50, 25], [200, 100, 50]]  # round(v * a / 255)
    ya = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    assert np.array_equal(to_rgb(ya), rgb)
    assert to_rgb(np.zeros((5, 2, 2, 3), np.uint8)).shape == (5, 2, 2, 3)
    with pytest.raises(ContextError, match="2 channels|have 6 channels"):
        to_rgb(np.zeros((1, 2, 2, 6), np.uint8))


def test_size_policy_exact_crop_and_resize():
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x = fit_frames(same, 16, 16)
    assert x.shape == (2, 3, 16, 16) and torch.equal(((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1),
                                                     torch.from_numpy(same))
    wide = rng.integers(0, 256, (1, 16, 32, 3), dtype=np.uint8)  # 2:1 into 1:1: the centre 16 columns, unscaled
    assert torch.allclose(fit_frames(wide, 16, 16), fit_frames(wide[:, :, 8:24], 16, 16), atol=1e-6)
    odd = rng.integers(0, 256, (1, 15, 17, 3), dtype=np.uint8)
    y = fit_frames(odd, 16, 16)
    assert y.shape == (1, 3, 16, 16) and y.min() >= -1 and y.max() <= 1
    flat = np.full((1, 33, 65, 3), 77, np.uint8)  # a constant image stays that constant (no overshoot)
    assert torch.allclose(fit_frames(flat, 16, 32), torch.full((1, 3, 16, 32), 77 / 127.5 - 1), atol=1e-6)
    assert "resized to 32x16" in context_note((33, 65), 16, 32) and context_note((16, 16), 16, 16) == ""


def test_reading_pngs_and_videos(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    assert np.array_equal(read_frames(_png(tmp_path / "g.png", grey))[0, ..., 0], grey)
    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    got = read_frames(_png(tmp_path / "a.png", rgba))
    assert got.shape == (1, 6, 8, 4) and np.array_equal(got[0], rgba)
    video = np.repeat(np.linspace(0, 250, 10).astype(np.uint8)[:, None, None, None], 3, axis=-1)
    video = np.broadcast_to(video, (10, 16, 16, 3)).copy()
    path = _mp4(tmp_path / "v.mp4", video)
    frames = read_frames(path)
    assert frames.shape == (10, 16, 16, 3)
    last = read_frames(path, last=4)
    assert np.array_equal(last, frames[-4:])
    assert np.abs(last[..., 0].astype(int) - video[-4:, ..., 0]).max() <= 3  # H.264 (crf 0, yuv420p) rounding
    # fitted while decoding: each frame cropped and resized to the stream's size, rounded back to uint8
    rgba_small = read_frames(tmp_path / "a.png", size=(4, 4))
    want = ((fit_frames(to_rgb(rgba), 4, 4) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert rgba_small.shape == (1, 4, 4, 3) and np.array_equal(rgba_small, want)
    assert probe(path) == (16, 16) and probe(tmp_path / "g.png") == (6, 8)
    with pytest.raises(ContextError, match="more than 9 frames, the longest context"):
        read_frames(path, max_frames=9)
    with pytest.raises(ContextError, match="does not exist"):
        read_frames(tmp_path / "none.mp4")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ContextError, match="as an image or a video"):
        read_frames(tmp_path / "t.txt")


def test_wan_context_keeps_whole_latent_frames_from_the_end():
    diffusers = pytest.importorskip("diffusers")
    from rfrt.decoders import WanVAEDecoder
    from rfrt.runtime.prime import context_latents

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                                     latents_std=[1.0] * 4).eval()
    dec = WanVAEDecoder(vae)
    frames = np.random.default_rng(2).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)  # 7 = 1 + 4 + 2 spare
    ctx = context_latents(frames, decoder=dec, height=32, width=32, channels=4, latent_hw=(4, 4),
                          chunk_latent_frames=3, dtype=torch.float32, device=torch.device("cpu"))
    assert ctx.dropped_frames == 2 and ctx.latents.shape == (2, 4, 4, 4) and ctx.source_hw == (32, 32)
    enc = dec.encoder()
    want = enc.encode(fit_frames(frames[2:], 32, 32)[None])[0]
    assert (ctx.latents - want).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------------------------------- CLI

PROMPT = "a large red circle moves right on a blue background"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """16 frames (1 s) of a red block moving right on blue as a lossless MP4, and its first frame as a PNG."""
    d = tmp_path_factory.mktemp("clip")
    frames = np.zeros((16, 16, 16, 3), np.uint8)
    frames[:] = (38, 64, 242)  # blue background
    for t in range(16):
        frames[t, 5:11, 1 + t // 2:7 + t // 2] = (230, 25, 25)  # a red block moving right
    return _mp4(d / "ctx.mp4", frames), _png(d / "ctx.png", frames[0])


def _chunk_meta(path):
    from rfrt.inspect.reader import read_chunk_metadata

    with av.open(str(path)) as c:
        return read_chunk_metadata(dict(c.metadata))


def _run(argv):
    from rfrt.cli import main

    torch.set_num_threads(1)
    return main(argv)


def test_cli_init_video_and_image(clip, tmp_path):
    video, image = clip
    out = tmp_path / "cont.mp4"
    assert _run(["generate", PROMPT, "--init", str(video), "--init-frames", "7", "--chunks", "2",
                 "--out", str(out)]) == 0
    assert read_frames(out).shape[0] == 6 + 6  # 2 context chunks shown, 1 held frame inside the first chunk
    assert _chunk_meta(out) == (3, 3)  # the shown context is chunk-aligned: seams where a stream has them
    assert _run(["generate", PROMPT, "--init", str(video), "--init-frames", "7", "--chunks", "2", "--drop-init",
                 "--out", str(out)]) == 0
    assert read_frames(out).shape[0] == 6 - 1  # the held frame left out too
    assert _chunk_meta(out) == (3, 2)  # so the output's first chunk is one frame short
    assert _run(["generate", PROMPT, "--init", str(image), "--chunks", "1", "--out", str(out)]) == 0
    # The image is the first frame: exact before the MP4 (tests/test_prime.py); through H.264 crf 18 yuv420p at
    # 16x16 (chroma at half resolution across the red/blue edges) measured 14.4 mean abs vs 31 for frames 1, 2.
    out_frames, png = read_frames(out).astype(int), read_frames(image)[0].astype(int)
    errs = [np.abs(f - png).mean() for f in out_frames]
    assert errs[0] <= 20 and errs[0] < min(errs[1:])


@pytest.mark.parametrize("extra, match", [
    (["--init", "missing.png"], "does not exist"),
    (["--init", "NOTES"], "as an image or a video"),
    (["--init-frames", "3"], "go with --init"),
    (["--init", "VIDEO", "--init-frames", "0"], "must be positive"),
    (["--init", "LONG"], "has more than 256 frames, the longest context accepted"),
])
def test_cli_bad_init_leaves_the_output(clip, tmp_path, capsys, extra, match):
    notes = tmp_path / "notes.txt"
    notes.write_text("no image")
    if "LONG" in extra:  # 257 frames: one more latent frame than the limit of the default (pixel) model
        _mp4(tmp_path / "long.mp4", np.zeros((257, 16, 16, 3), np.uint8))
    names = {"NOTES": str(notes), "VIDEO": str(clip[0]), "LONG": str(tmp_path / "long.mp4")}
    extra = [names.get(a, a) for a in extra]
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"the user's video")
    assert _run(["generate", PROMPT, "--out", str(out), "--chunks", "1", *extra]) == 2
    assert match in capsys.readouterr().err
    assert out.read_bytes() == b"the user's video"
