"""Real processes, real signals: `rfrt generate` and `rfrt serve --record` never destroy the output file.

Each test starts the CLI as a subprocess on the embedded default model, waits (bounded) until the partial video
holds fragments, sends a real signal and decodes what is left with PyAV. Issue #14, items 1 and 2.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from rfrt.model_dir import default_model_path  # noqa: E402
from rfrt.video import Mp4Writer, partial_path  # noqa: E402

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="the embedded default model is not installed")

PROMPT = "a large red circle moves right on a blue background"
STARTUP_S = 240  # import torch + load the model on a shared, busy machine


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}


def _frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _old_video(path: Path) -> bytes:
    with Mp4Writer(path) as w:
        w.write(np.full((5, 16, 16, 3), 77, np.uint8))
    return path.read_bytes()


def _generate(tmp_path: Path, out: Path, chunks: int = 100_000):
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rfrt.cli", "generate", PROMPT, "--chunks", str(chunks),
                             "--device", "cpu", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=log,
                            env=_env(), cwd=tmp_path)
    return proc, log


def _wait_for_fragments(proc, partial: str, count: int = 3) -> None:
    """Until the partial MP4 holds `count` fragments (moof boxes): frames are on disk."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"rfrt generate exited early with {proc.returncode}"
        if os.path.exists(partial) and open(partial, "rb").read().count(b"moof") >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} fragments in {partial} after {STARTUP_S} s")


def _finish(proc, log, timeout: float = 60) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return rc, Path(log.name).read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_finalise_the_video(tmp_path, sig):
    out = tmp_path / "t.mp4"
    proc, log = _generate(tmp_path, out)
    try:
        _wait_for_fragments(proc, partial_path(out))
        proc.send_signal(sig)
    finally:
        rc, err = _finish(proc, log)
    assert rc == 128 + sig, err
    found = re.search(rf"interrupted by {sig.name}; the (\d+) frames written so far were finalised in {out}\n", err)
    assert found, err
    # Every frame the run reported is in the video (no --out before: it moved there), and it plays.
    assert _frames(out) == int(found.group(1)) > 0
    assert not os.path.exists(partial_path(out))


def test_sighup_keeps_an_existing_video(tmp_path):
    out = tmp_path / "h.mp4"
    old = _old_video(out)
    proc, log = _generate(tmp_path, out)
    try:
        _wait_for_fragments(proc, partial_path(out))
        assert out.read_bytes() == old  # untouched while the new video is written
        proc.send_signal(signal.SIGHUP)
    finally:
        rc, err = _finish(proc, log)
    assert rc == 128 + signal.SIGHUP, err
    partial = partial_path(out)
    found = re.search(rf"interrupted by SIGHUP; the (\d+) frames written so far were finalised in {partial} "
                      rf"\({out} was not changed\)", err)
    assert found, err
    assert out.read_bytes() == old
    assert _frames(partial) == int(found.group(1)) > 0


def test_sigkill_keeps_the_old_video_and_leaves_a_playable_partial_one(tmp_path):
    out = tmp_path / "k.mp4"
    old = _old_video(out)
    proc, log = _generate(tmp_path, out)
    try:
        _wait_for_fragments(proc, partial_path(out))
        proc.kill()
    finally:
        rc, err = _finish(proc, log)
    assert rc == -signal.SIGKILL
    assert out.read_bytes() == old and _frames(out) == 5
    assert _frames(partial_path(out)) >= 16  # fragmented MP4: every complete fragment decodes after kill -9
    # The next run for the same --out replaces the stale partial file, says so, and completes.
    proc, log = _generate(tmp_path, out, chunks=2)
    rc, err = _finish(proc, log, timeout=STARTUP_S)
    assert rc == 0, err
    assert f"replacing {partial_path(out)}, the partial video of an earlier interrupted run" in err
    assert _frames(out) == 6 and not os.path.exists(partial_path(out))


def test_serve_record_leaves_its_file_alone_until_it_stops(tmp_path):
    rec = tmp_path / "rec.mp4"
    old = _old_video(rec)
    log = open(tmp_path / "serve.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rfrt.cli", "serve", "--port", "0", "--device", "cpu",
                             "--record", str(rec)], stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + STARTUP_S
        while "serving on" not in Path(log.name).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        assert rec.read_bytes() == old  # the server started: the recording has not touched the file
        proc.send_signal(signal.SIGHUP)
    finally:
        rc, text = _finish(proc, log)
    assert rc == 0, text
    assert rec.read_bytes() == old and not os.path.exists(partial_path(rec))  # nothing recorded: nothing changed
