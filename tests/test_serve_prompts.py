"""rfrt serve on the embedded default model: a prompt with no known word, or a bad seed, is refused over a real
WebSocket on loopback with the encoder's vocabulary hint, and the stream keeps its prompt (issue #14, item 8)."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")

from rfrt.model_dir import default_model_path  # noqa: E402
from rfrt.runtime.generator import StreamGenerator  # noqa: E402
from rfrt.serve import BackgroundServer, ServeConfig  # noqa: E402

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="the embedded default model is not installed")
PROMPT = "a large red circle moves right on a blue background"


async def _error_of(port, cmd, timeout=60.0):
    """Send one command on its own connection (so the server's per-client coalescing cannot merge it with
    another) and return the text of the first error event; the whole exchange is bounded by wait_for."""
    async def exchange():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_json(cmd)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "error":
                        return json.loads(msg.data)["message"]
                raise AssertionError(f"connection closed without an error event for {cmd}")
    return await asyncio.wait_for(exchange(), timeout)


async def _errors(port, commands):
    return [await _error_of(port, cmd) for cmd in commands]


def test_serve_refuses_prompts_without_a_known_word():
    srv = BackgroundServer(lambda: StreamGenerator(device="cpu"), ServeConfig(port=0))
    port = srv.start()
    try:
        errors = asyncio.run(_errors(port, [{"cmd": "start", "prompt": "!!!", "seed": 0},
                                            {"cmd": "start", "prompt": "赤い円が右へ", "seed": 0},
                                            {"cmd": "start", "prompt": PROMPT, "seed": -1}]))
    finally:
        srv.stop()
    text = "\n".join(errors)  # the seed is refused on arrival, the prompts by the generator thread: any order
    assert "start failed: prompt '!!!' has no word this text encoder knows (it knows" in text, errors
    assert "outside this text encoder's vocabulary: ['赤い円が右へ']" in text, errors
    assert "start: seed must be an integer in 0..2**63-1" in text, errors


def test_serve_record_replaces_its_file_only_when_the_server_stops(tmp_path):
    """The recording goes through the same writer as `rfrt generate`: the old file stays until shutdown."""
    import numpy as np

    av = pytest.importorskip("av")
    from rfrt.video import Mp4Writer, partial_path

    rec = tmp_path / "rec.mp4"
    rec.write_bytes(b"the old recording")
    recorder = Mp4Writer(rec, fps=16)
    srv = BackgroundServer(lambda: StreamGenerator(device="cpu"), ServeConfig(port=0), recorder=recorder)
    port = srv.start()

    async def watch(n):
        got = 0
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_json({"cmd": "start", "prompt": PROMPT, "seed": 0})
                deadline = time.monotonic() + 120
                while got < n:
                    msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                    assert time.monotonic() < deadline and msg.type in (aiohttp.WSMsgType.TEXT,
                                                                        aiohttp.WSMsgType.BINARY), msg
                    got += msg.type == aiohttp.WSMsgType.BINARY
        return got

    try:
        assert asyncio.run(watch(9)) == 9
        assert rec.read_bytes() == b"the old recording"  # recording, but the file is untouched
        assert os.path.exists(partial_path(rec))  # (x264 holds its look-ahead: maybe no bytes yet)
    finally:
        srv.stop()
    assert recorder.video_path == str(rec) and not os.path.exists(partial_path(rec))
    with av.open(str(rec)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == recorder.frames_written >= 9 and frames[0].shape == (16, 16, 3)
    assert np.asarray(frames).std() > 0
