"""`rfrt generate | info` end to end on a tiny model directory written here."""
from __future__ import annotations

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
    assert "simulated failure" in capsys.readouterr().err
    assert len(decoded_frames(out)) == 9

    def interrupted_step(self):
        if self.chunk_index == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(StreamGenerator, "step", interrupted_step)
    assert cli.main(["generate", "a cat", "--model", str(model_root), "--chunks", "10", "--out", str(out),
                     "--device", "cpu"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(decoded_frames(out)) == 6


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
    if importlib.util.find_spec("tensorrt") is None:  # CUDA requested but TensorRT missing: what to install
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
