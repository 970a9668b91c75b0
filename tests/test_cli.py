"""`rfrt generate | info` end to end on a tiny model directory written here."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rfrt import cli, model_dir
from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, write_model_dir  # noqa: F401 - fixture

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model"), size=16)


def decoded_frames(path: Path) -> list:
    """Every frame of an MP4 as an [H, W, 3] uint8 array (fails if the file is not playable)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24").astype(float) for frame in container.decode(video=0)]


def luma(rgb):
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_generate_end_to_end(model_root, tmp_path, one_thread, capsys):
    out = tmp_path / "video.mp4"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# chunk\tprompt\n0\ta cat walks on the beach\n\n2 a red car drives at night\n")
    assert cli.main(["generate", "--model", str(model_root), "--chunks", "4", "--seed", "3", "--out", str(out),
                     "--prompts", str(prompts), "--device", "cpu", "--dtype", "fp32"]) == 0
    frames = decoded_frames(out)
    assert len(frames) == 12 and frames[0].shape == (16, 16, 3)
    assert "wrote 12 frames" in capsys.readouterr().out
    # The video holds what the generator makes for the same prompts and seed (up to H.264 loss).
    gen = StreamGenerator(model_root, device="cpu")
    gen.reset("a cat walks on the beach", seed=3)
    expect = []
    for c in range(4):
        if c == 2:
            gen.set_prompt("a red car drives at night")
        expect += list(gen.step().frames.double().numpy())
    # yuv420p halves chroma resolution, ruinous for these noise-like frames; luma survives (mean error ~4 of
    # 255 here, ~60 against another seed's frames).
    err = max(abs(luma(a) - luma(b)).mean() for a, b in zip(frames, expect))
    assert err < 12, err


def test_seconds_rounds_up_to_whole_chunks(model_root, tmp_path, one_thread):
    out = tmp_path / "v.mp4"
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--seconds", "1", "--out", str(out),
                     "--device", "cpu"]) == 0
    assert len(decoded_frames(out)) == 18  # 16 frames at 16 fps -> 6 chunks of 3


def test_interrupted_run_leaves_a_playable_video(model_root, tmp_path, monkeypatch, one_thread, capsys):
    real_step = StreamGenerator.step

    def failing_step(self):
        if self.chunk_index == 3:
            raise RuntimeError("simulated failure")
        return real_step(self)

    monkeypatch.setattr(StreamGenerator, "step", failing_step)
    out = tmp_path / "partial.mp4"
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--chunks", "10", "--out", str(out),
                     "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "simulated failure" in err and f"the 9 frames written so far were finalised in {out}" in err, err
    assert len(decoded_frames(out)) == 9  # there was no video at --out: the finalised frames moved there

    def interrupted_step(self):
        if self.chunk_index == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(StreamGenerator, "step", interrupted_step)
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--chunks", "10", "--out", str(out),
                     "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    partial = tmp_path / "partial.partial.mp4"
    # An interrupted run never replaces an existing video: the old 9 frames stay, the new 6 are beside them.
    assert f"interrupted by SIGINT; the 6 frames written so far were finalised in {partial}" in err, err
    assert f"({out} was not changed)" in err
    assert len(decoded_frames(out)) == 9
    assert len(decoded_frames(partial)) == 6


@pytest.mark.parametrize("content, why", [
    ("0\ta cat\nfive\ta dog\n", r"prompts.txt:2: expected 'CHUNK<tab>prompt'"),
    ("0\ta cat\n\n3\n", r"prompts.txt:3: chunk 3 has no prompt text"),
    ("0\ta cat\n-1 a dog\n", r"prompts.txt:2: expected"),
    ("0\ta cat\n0\ta dog\n", r"prompts.txt:2: chunk 0 already has a prompt"),
    ("2\ta cat\n", "no prompt for chunk 0"),
    ("# nothing\n", "lists no prompts"),
])
def test_bad_prompts_file_fails_before_generation(content, why, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(cli, "_check_output", lambda path: None)
    monkeypatch.setattr("rfrt.runtime.generator.StreamGenerator.__init__", no_model)
    path = tmp_path / "prompts.txt"
    path.write_text(content)
    assert cli.main(["generate", "--prompts", str(path), "--out", str(tmp_path / "v.mp4")]) == 2
    assert pytest.importorskip("re").search(why, capsys.readouterr().err)


def test_bad_output_path_and_prompts_fail_before_generation(model_root, tmp_path, capsys):
    cases = [(["a cat", "--out", str(tmp_path / "missing" / "v.mp4")], "output directory .* does not exist"),
             (["a cat", "--out", str(tmp_path)], "is a directory"),
             (["a cat", "--out", str(model_root / "rfrt.json" / "v.mp4")], "rfrt.json' is not a directory"),
             (["", "--out", str(tmp_path / "v.mp4")], "prompt for chunk 0: prompt is empty"),
             (["a cat", "--chunks", "0", "--out", str(tmp_path / "v.mp4")], "--chunks must be positive")]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((["a cat", "--out", str(locked / "v.mp4")], "permission denied"))
    for args, why in cases:
        assert cli.main(["generate", *args, "--model", str(model_root), "--device", "cpu"]) == 2
        assert pytest.importorskip("re").search(why, capsys.readouterr().err), why
    assert not (tmp_path / "v.mp4").exists()


def test_tensorrt_backend_errors_come_before_generation(model_root, tmp_path, capsys):
    import importlib.util

    engine = tmp_path / "chunk.plan"
    engine.write_bytes(b"not an engine")
    out = tmp_path / "v.mp4"
    cases = [(["--backend", "tensorrt"], 2, "--backend tensorrt needs --engine PATH"),
             (["--engine", str(engine)], 2, "add --backend tensorrt"),
             (["--backend", "tensorrt", "--engine", str(tmp_path / "none.plan")], 2, "none.plan' does not exist"),
             (["--backend", "tensorrt", "--engine", str(engine), "--device", "cpu"], 1, "runs on an NVIDIA GPU")]
    import torch
    if not torch.cuda.is_available():  # CUDA requested where there is none: said before TensorRT is looked for
        cases.append((["--backend", "tensorrt", "--engine", str(engine), "--device", "cuda"], 2,
                      "--device: device 'cuda' was asked for"))
    elif importlib.util.find_spec("tensorrt") is None:  # CUDA requested but TensorRT missing: what to install
        cases.append((["--backend", "tensorrt", "--engine", str(engine), "--device", "cuda"], 1,
                      "pip install tensorrt"))
    for args, status, why in cases:
        assert cli.main(["generate", "a cat", "--model", str(model_root), "--out", str(out), *args]) == status, args
        assert why in capsys.readouterr().err, why
    assert not out.exists()


def test_missing_model_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_dir, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    assert cli.main(["generate", "a cat", "--out", str(tmp_path / "v.mp4")]) == 1
    assert "default model is not installed" in capsys.readouterr().err
    assert cli.main(["generate", "a cat", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "v.mp4")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_info_subprocess():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-m", "rfrt.cli", "info"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for needle in ("build:", "torch ", "devices: cpu", "default model:"):
        assert needle in done.stdout


# ---- issue #14: the output path is never destroyed; clear errors before the model loads ----

def _no_model(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded")
    monkeypatch.setattr("rfrt.generator.StreamGenerator.__init__", no_model)


def test_output_that_is_an_input_or_not_a_video_is_refused_untouched(model_root, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    ckpt = tmp_path / "mymodel.pt"
    ckpt.write_bytes(b"\x80" + b"w" * 1000)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    prompts = tmp_path / "p.mp4"  # a prompts file that happens to carry a video extension
    prompts.write_text("0\ta cat\n")
    cases = [(["a cat", "--checkpoint", str(ckpt), "--out", str(ckpt)], "extension '.pt'"),
             (["a cat", "--out", str(notes)], "extension '.txt'"),
             (["a cat", "--out", str(tmp_path / "video")], "has no extension"),
             (["--prompts", str(prompts), "--out", str(prompts)], "is also an input"),
             (["a cat", "--out", str(tmp_path / "newdir") + "/"], "is a directory")]
    for args, why in cases:
        assert cli.main(["generate", *args, "--model", str(model_root)]) == 2, args
        assert why in capsys.readouterr().err, why
    assert ckpt.read_bytes() == b"\x80" + b"w" * 1000 and notes.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mymodel.pt", "notes.txt", "p.mp4"]


@pytest.mark.parametrize("args, why", [
    (["--seed", "-1"], "--seed: seed must be an integer in 0..2**63-1"),
    (["--seed", str(2**64)], "--seed: seed must be an integer in 0..2**63-1"),
    (["--seconds", "inf"], "--seconds must be a finite number above 0, got inf"),
    (["--seconds", "nan"], "--seconds must be a finite number above 0, got nan"),
])
def test_seed_and_length_rules(args, why, model_root, tmp_path, capsys):
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--device", "cpu",
                     "--out", str(tmp_path / "v.mp4"), *args]) == 2
    assert why in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cuda_without_a_gpu_is_a_clear_error(model_root, tmp_path, monkeypatch, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _no_model(monkeypatch)
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--device", "cuda",
                     "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "--device: device 'cuda' was asked for, but" in err and "AssertionError" not in err, err


def test_huge_seconds_is_refused_in_closed_form(model_root, tmp_path, capsys):
    for seconds in ("1e12", "1e300"):
        assert cli.main(["generate", "a cat", "--model", str(model_root), "--device", "cpu", "--seconds", seconds,
                         "--out", str(tmp_path / "v.mp4")]) == 2
        assert "is too long: at most 2147483647 frames" in capsys.readouterr().err
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--device", "cpu", "--chunks", str(10**9),
                     "--out", str(tmp_path / "v.mp4")]) == 2
    assert "--chunks 1000000000 is too long (3000000000 frames)" in capsys.readouterr().err


class _WanLikeDecoder:
    """frames_for of a causal video VAE: the first latent frame gives 1 frame, every later one 4."""

    def frames_for(self, n, start=0):
        first = 1 if start == 0 and n > 0 else 0
        return first + (n - first) * 4


@pytest.mark.parametrize("decoder", ["pixel", "wan"])
def test_chunk_count_matches_a_chunk_by_chunk_count(decoder, model_root):
    from types import SimpleNamespace

    from rfrt.decoders import PixelDecoder

    dec = PixelDecoder() if decoder == "pixel" else _WanLikeDecoder()
    gen = SimpleNamespace(fps=16, decoder=dec, policy=SimpleNamespace(chunk_frames=3),
                          dit=SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2))))
    for seconds in [0.001, 0.1, 0.1875, 0.2, 0.5625, 0.6, 1, 1.3, 2.75, 5, 17.3, 60, 3600.5]:
        wanted, frames, chunks = math.ceil(seconds * 16), 0, 0  # the reference: step chunk by chunk
        while frames < wanted:
            frames += dec.frames_for(3, start=chunks * 3)
            chunks += 1
        assert cli._chunks_for(SimpleNamespace(chunks=None, seconds=seconds), gen) == chunks, seconds


def test_prompts_file_chunk_rules(model_root, tmp_path, monkeypatch, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("0\ta cat\n\u00b2\ta dog\n")  # '²' passes str.isdigit(), int() refuses it
    monkeypatch.setattr(cli, "_check_output", lambda path, inputs=(): None)
    assert cli.main(["generate", "--prompts", str(path), "--out", str(tmp_path / "v.mp4")]) == 2
    assert "prompts.txt:2: expected 'CHUNK<tab>prompt'" in capsys.readouterr().err
    path.write_text("0\ta cat\n999\ta dog\n")
    monkeypatch.undo()
    assert cli.main(["generate", "--prompts", str(path), "--chunks", "2", "--model", str(model_root),
                     "--device", "cpu", "--out", str(tmp_path / "v.mp4")]) == 2
    assert "chunk 999 is past the end of the run (2 chunks, 0 .. 1)" in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()


def test_interrupt_during_the_model_load_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("rfrt.runtime.generator.StreamGenerator.__init__", interrupted)
    out = tmp_path / "v.mp4"
    out.write_bytes(b"precious")
    assert cli.main(["generate", "a cat", "--out", str(out)]) == 130
    assert f"interrupted by SIGINT; no frame was written; {out} was not changed" in capsys.readouterr().err
    assert out.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_a_manifest_that_is_not_utf8_names_the_file(tmp_path, capsys):
    (tmp_path / "rfrt.json").write_bytes(b"\xa7\xff\x00garbage")
    assert cli.main(["generate", "a cat", "--model", str(tmp_path), "--device", "cpu",
                     "--out", str(tmp_path / "v.mp4")]) == 1
    assert f"cannot read model manifest {tmp_path / 'rfrt.json'}" in capsys.readouterr().err
