"""A live stream faster than real time paces itself to the video's frame rate, like a camera (issue #14 item
6): a viewer that keeps up gets every frame, at most about one chunk ahead of real time; `pace=False` keeps
the unpaced stream for recording and benchmarks. The schedule itself is checked on a fake clock; the server
on loopback with a real client."""
from __future__ import annotations

import asyncio
import statistics
import time

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")

from rfrt.runtime.generator import StreamGenerator  # noqa: E402
from rfrt.serve import FRAME_HEADER, BackgroundServer, ServeConfig  # noqa: E402
from rfrt.serve.pacing import Pacer  # noqa: E402
from test_generator_tiny import one_thread, tiny_model  # noqa: E402,F401
from test_serve_api import _next_event  # noqa: E402

FPS = 16  # tiny_model's video frame rate
PER_CHUNK = 3  # frames per chunk of the tiny model (pixel decoder, 3 latent frames)
WATCH_S = 3.0


def _make():
    return StreamGenerator(tiny_model(16), device="cpu")


async def _watch(srv, seconds):
    """Start the stream, then (frame number, arrival time) of every frame for `seconds`, and the server's status."""
    out = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://127.0.0.1:{srv.port}/ws") as ws:
            await _next_event(ws, "hello")
            await ws.send_json({"cmd": "start", "prompt": "a cat walks on the beach", "seed": 0})
            end = None
            deadline = time.monotonic() + 120  # for the first frame
            while (left := (end or deadline) - time.monotonic()) > 0:
                try:
                    msg = await ws.receive(timeout=left)
                except asyncio.TimeoutError:
                    break
                assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), msg
                if msg.type == aiohttp.WSMsgType.BINARY:
                    out.append((FRAME_HEADER.unpack_from(msg.data)[1], time.monotonic()))
                    if end is None:
                        end = out[0][1] + seconds
            assert out, "no frame within 120 s"
            status = await (await http.get(f"http://127.0.0.1:{srv.port}/api/status")).json()
    return out, status["streams"][0]


def test_a_fast_stream_is_paced_to_the_video_frame_rate(one_thread):  # noqa: F811
    srv = BackgroundServer(_make, ServeConfig(port=0))
    srv.start()
    try:
        frames, status = asyncio.run(asyncio.wait_for(_watch(srv, WATCH_S), 180))
    finally:
        srv.stop()
    numbers = [n for n, _ in frames]
    assert numbers == list(range(len(numbers)))  # nothing dropped, nothing out of order
    assert all(v["dropped"] == 0 for v in status["viewer_stats"]), status
    # a camera: over any stretch, no more frames than real time allows, plus the one chunk of lead. Measured from
    # the third chunk on (the first two go out together, behind the JPEG encoder's start), with two chunks of
    # slack for delivery jitter on a loaded machine; unpaced, the excess grows with every second watched.
    steady = [(n, t) for n, t in frames if n >= 2 * PER_CHUNK]
    excess = max((nj - ni) - (tj - ti) * FPS for i, (ni, ti) in enumerate(steady) for nj, tj in steady[i:])
    t0 = frames[0][1]
    print(f"\npaced: {len(numbers)} frames in {frames[-1][1] - t0:.2f} s ({FPS} FPS video), none dropped; "
          f"at most {excess:.1f} frames ahead of real time over any stretch; "
          f"chunk step {1000 * statistics.median(status['step_seconds']):.1f} ms median")
    assert excess <= 3 * PER_CHUNK, f"{excess:.1f} frames ahead of real time"
    # and it does not fall behind when the machine can keep up: the generator has time to spare
    spare = PER_CHUNK / FPS / max(status["step_seconds"])
    if spare > 2:
        assert len(numbers) >= 0.6 * WATCH_S * FPS, (len(numbers), spare)


def test_unpaced_mode_runs_as_fast_as_it_can(one_thread):  # noqa: F811
    srv = BackgroundServer(_make, ServeConfig(port=0, pace=False, queue_frames=4096))
    srv.start()
    try:
        frames, status = asyncio.run(asyncio.wait_for(_watch(srv, 1.0), 180))
    finally:
        srv.stop()
    capacity = PER_CHUNK / (sum(status["step_seconds"]) / len(status["step_seconds"]))  # frames/s it can make
    print(f"\nunpaced: {len(frames)} frames in 1 s ({FPS} FPS video; the generator can make {capacity:.0f}/s)")
    assert len(frames) >= 0.5 * capacity * 1.0, (len(frames), capacity)  # as fast as it can, no waiting
    if capacity > 2 * FPS:  # (on a machine loaded so much that it is slower than that, both modes look alike)
        assert len(frames) > 1.2 * FPS * 1.0, (len(frames), capacity)  # beyond real time


def test_pacer_schedule_on_a_fake_clock():
    now = [100.0]
    pacer = Pacer(fps=16, clock=lambda: now[0])
    chunk = 3 / 16
    assert pacer.wait_s() == 0.0  # the first chunk at once
    pacer.published(3)
    assert pacer.wait_s() == 0.0  # the second right behind it: one chunk of lead
    now[0] += 0.01
    pacer.published(3)
    assert pacer.wait_s() == pytest.approx(chunk - 0.01)  # then one chunk per chunk duration
    now[0] += pacer.wait_s() + 0.01
    pacer.published(3)
    assert pacer.wait_s() == pytest.approx(chunk - 0.01)
    # a slow chunk (or a re-cache) makes it late: no burst to catch up, the clock starts again from now
    now[0] += 1.0
    pacer.published(3)
    assert pacer.wait_s() == 0.0
    now[0] += 0.01
    pacer.published(3)
    assert pacer.wait_s() == pytest.approx(chunk - 0.01)
    pacer.restart()  # start, reset, resume
    assert pacer.wait_s() == 0.0
    assert Pacer(fps=16, enabled=False, clock=lambda: now[0]).wait_s() == 0.0
    unpaced = Pacer(fps=16, enabled=False, clock=lambda: now[0])
    unpaced.published(3)
    unpaced.published(3)
    assert unpaced.wait_s() == 0.0
