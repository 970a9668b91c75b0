"""rfrt serve over a real socket: a real aiohttp server on an ephemeral loopback port, the real StreamGenerator
with a tiny model, and aiohttp's WebSocket client."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

aiohttp = pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")

from rfrt.runtime.generator import StreamGenerator  # noqa: E402
from rfrt.serve import FRAME_HEADER, BackgroundServer, ServeConfig, parse_command  # noqa: E402
from rfrt.serve.hub import ServeError  # noqa: E402
from test_generator_tiny import one_thread, tiny_model, write_model_dir  # noqa: E402,F401

SIZE = 16


class Recorder:
    """Every generator the server builds, so the test can look at the cross-attention conditioning."""

    def __init__(self):
        self.generators = []

    def __call__(self):
        gen = StreamGenerator(tiny_model(SIZE), device="cpu")
        self.generators.append(gen)
        return gen


@pytest.fixture
def server(one_thread):  # noqa: F811
    made = Recorder()
    # A deep per-viewer queue: these tests check frame order from chunk 0, and with the default 8 frames a
    # loaded machine's slow client loses the oldest frames (dropping is tested in test_serve_load.py).
    srv = BackgroundServer(made, ServeConfig(port=0, max_streams=1, token="s3cret", queue_frames=4096))
    srv.start()
    srv.made = made
    yield srv
    srv.stop()


async def _receive(ws, deadline, waiting_for, errors_fail=True):
    """Next message before the deadline; a closed socket or the deadline is a failure, never a hang."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise AssertionError(f"timed out waiting for {waiting_for}")
    msg = await ws.receive(timeout=left)
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
        raise AssertionError(f"socket closed while waiting for {waiting_for}: {msg!r}")
    if errors_fail and msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "error":
        raise AssertionError(f"server error while waiting for {waiting_for}: {msg.data}")
    return msg


async def _next_event(ws, kind, timeout=60.0, skip_frames=True):
    deadline = time.monotonic() + timeout
    while True:
        msg = await _receive(ws, deadline, f"a {kind!r} event", errors_fail=kind != "error")
        if msg.type == aiohttp.WSMsgType.TEXT:
            ev = json.loads(msg.data)
            if ev["type"] == kind:
                return ev
        elif msg.type != aiohttp.WSMsgType.BINARY or not skip_frames:
            raise AssertionError(f"unexpected message {msg!r}")


async def _frames(ws, n, timeout=90.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        msg = await _receive(ws, deadline, f"{n} frames (got {len(out)})")
        if msg.type == aiohttp.WSMsgType.BINARY:
            out.append(msg.data)
    return out


def _url(srv, path="/ws", token="s3cret"):
    return f"http://127.0.0.1:{srv.port}{path}" + (f"?token={token}" if token else "")


def test_start_frames_prompt_switch_stop(server):
    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(_url(server)) as ws:
                hello = await _next_event(ws, "hello")
                assert hello["state"] == "idle" and hello["stream"] == "main"
                await ws.send_json({"cmd": "start", "prompt": "a cat walks on the beach", "seed": 3})
                frames = await _frames(ws, 6)
                chunk, number = FRAME_HEADER.unpack_from(frames[0])
                assert (chunk, number) == (0, 0), [FRAME_HEADER.unpack_from(f) for f in frames]
                assert frames[0][FRAME_HEADER.size:FRAME_HEADER.size + 2] == b"\xff\xd8"  # a JPEG
                numbers = [FRAME_HEADER.unpack_from(f)[1] for f in frames]
                assert numbers == sorted(numbers) and len(set(numbers)) == 6

                gen = server.made.generators[0]
                before = gen.cross_kv
                await ws.send_json({"cmd": "prompt", "prompt": "a red car drives through the city"})
                switched = await _next_event(ws, "prompt")
                assert switched["prompt"] == "a red car drives through the city" and switched["chunk"] >= 2
                after = gen.cross_kv
                assert after is not before
                # the conditioning really changed, in every layer, to the new prompt's K/V
                assert all(not torch.allclose(a, b) for a, b in zip(after.keys, before.keys))
                ref = tiny_model(SIZE)
                expect = StreamGenerator(ref, device="cpu")
                expect.reset("a red car drives through the city")
                for got, want in zip(after.keys + after.values, expect.cross_kv.keys + expect.cross_kv.values):
                    torch.testing.assert_close(got, want)
                await _frames(ws, 3)  # generation goes on under the new prompt

                await ws.send_json({"cmd": "stop"})
                while (await _next_event(ws, "status"))["state"] != "stopped":
                    pass
                status = await (await http.get(_url(server, "/api/status"))).json()
                stopped_at = status["streams"][0]["chunk"]
                await asyncio.sleep(1.5)
                status = await (await http.get(_url(server, "/api/status"))).json()
                assert status["streams"][0]["chunk"] == stopped_at  # nothing generated after stop
                assert status["streams"][0]["prompt"] == "a red car drives through the city"
    asyncio.run(run())


def test_bad_input_is_reported_not_fatal(server):
    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(_url(server)) as ws:
                await _next_event(ws, "hello")
                for bad, words in [("{not json", "invalid JSON"), ('"start"', "JSON object"),
                                   ('{"cmd": "explode"}', "unknown command"),
                                   (json.dumps({"cmd": "prompt", "prompt": "x" * 5000}), "too long"),
                                   ('{"cmd": "start", "prompt": "a", "seed": -1}', "seed"),
                                   ('{"cmd": "prompt", "prompt": "   "}', "non-empty")]:
                    await ws.send_str(bad)
                    err = await _next_event(ws, "error")
                    assert words in err["message"], (bad, err)
                await ws.send_bytes(b"\x00\x01")
                assert "JSON text" in (await _next_event(ws, "error"))["message"]
                await ws.send_json({"cmd": "start"})  # no prompt yet: an error from the generator thread
                assert "no prompt" in (await _next_event(ws, "error"))["message"]
                await ws.send_json({"cmd": "start", "prompt": "a cat", "seed": 1})  # still alive
                assert len(await _frames(ws, 3)) == 3
    asyncio.run(run())


def test_token_and_stream_limit(server):
    async def run():
        async with aiohttp.ClientSession() as http:
            assert (await http.get(_url(server, "/", token=None))).status == 401
            assert (await http.get(_url(server, "/", token="wrong"))).status == 401
            page = await http.get(_url(server, "/"))
            assert page.status == 200 and "<canvas" in await page.text()
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(_url(server, token="wrong"))
            async with http.ws_connect(_url(server)) as ws:
                await _next_event(ws, "hello")
                # max_streams=1: a second stream is refused with a message naming the limit
                async with http.ws_connect(_url(server) + "&stream=other") as ws2:
                    err = await _next_event(ws2, "error")
                    assert "limit of 1 stream" in err["message"]
                # ... but a second viewer of the same stream is welcome
                async with http.ws_connect(_url(server)) as ws3:
                    assert (await _next_event(ws3, "hello"))["viewers"] == 2
    asyncio.run(run())


def test_parse_command_rejects_unknown_fields():
    assert parse_command('{"cmd": "reset", "seed": 4}', 100) == ("reset", {"seed": 4})
    with pytest.raises(ServeError, match="unknown fields"):
        parse_command('{"cmd": "stop", "prompt": "a"}', 100)
    with pytest.raises(ServeError, match="recache"):
        parse_command('{"cmd": "prompt", "prompt": "a", "recache": 1}', 100)


def test_cli_ctrl_c_finalises_the_recording(tmp_path):
    """`rfrt serve` as a user runs it: SIGINT stops generation, closes sockets, finalises the MP4."""
    av = pytest.importorskip("av")
    model = write_model_dir(tmp_path / "model", size=SIZE)
    out = tmp_path / "live.mp4"
    # the child imports what this process imports: the installed rfrt (with its compiled core), not the source
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rfrt.cli", "serve", "--model", str(model), "--port", "0",
                             "--device", "cpu", "--record", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "server exited before listening"
            if "serving on http://127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split("/")[0])
        log_lines: list[str] = []  # drained in the background: a full pipe would block the server
        drain = threading.Thread(target=lambda: log_lines.extend(proc.stderr), daemon=True)
        drain.start()

        async def watch():
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                    await _next_event(ws, "hello")
                    await ws.send_json({"cmd": "start", "prompt": "a cat walks on the beach", "seed": 0})
                    await _frames(ws, 6)
                    proc.send_signal(signal.SIGINT)
                    msg = await ws.receive(timeout=60)
                    while msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        msg = await ws.receive(timeout=60)
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        asyncio.run(watch())
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    drain.join(timeout=10)
    log = "".join(log_lines)
    assert "recording finalised" in log, log
    with av.open(str(out)) as f:
        n = sum(1 for _ in f.decode(video=0))
    assert n >= 6 and n % 3 == 0  # whole chunks only, the index written
