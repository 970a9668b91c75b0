"""Load on loopback: the server in its own process (`python -m rfrt.serve`, real generator, tiny model), 20
viewers in this process. Every active viewer must get (nearly) every frame, and a viewer that stops reading must
neither stall the others nor make the server hold more than its queue of frames or grow its memory.
Generation speed with 20 viewers against none is a speed target, so it is checked by a benchmark
(benchmarks/bench_serve_load.py, which runs `load_phases` below with more alternations); this test prints it."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")
psutil = pytest.importorskip("psutil")

from test_generator_tiny import write_model_dir  # noqa: E402

SIZE = 32
VIEWERS = 20
PHASE_S = 3.0
REPS = 2  # alternations of 0 / 20 viewers (the benchmark runs more: they average out a shared machine's noise)
QUEUE = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_tiny_model(tmp_path_factory.mktemp("serve-load")) as proc_port:
        yield proc_port


@contextlib.contextmanager
def serve_tiny_model(root: Path):
    """Start `python -m rfrt.serve` on a tiny model under `root`, unpaced; yield (process, port), then stop it."""
    model = write_model_dir(root / "model", size=SIZE)
    # the child imports what this process imports: the installed rfrt (with its compiled core), not the source
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": "1"}  # one core for the generator, the other for this process's 20 viewers
    proc = subprocess.Popen([sys.executable, "-m", "rfrt.serve", "--model", str(model), "--port", "0", "--device",
                             "cpu", "--queue-frames", str(QUEUE), "--send-buffer-bytes", "4096",
                             "--no-pace"],  # flat out: this measures generation speed
                            env=env, stderr=subprocess.PIPE, text=True)
    port = None
    while port is None:
        line = proc.stderr.readline()
        if not line:
            pytest.fail("the server exited before listening")
        if "serving on http://127.0.0.1:" in line:
            port = int(line.split("127.0.0.1:")[1].split("/")[0])
    # drain the log so a full pipe never blocks the server
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    try:
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def _status(http, port) -> dict:
    async with http.get(f"http://127.0.0.1:{port}/api/status") as r:
        return (await r.json())["streams"][0]


async def _phase_steps(http, port, seconds) -> list[float]:
    """Step durations (s) of the chunks generated during the next `seconds`."""
    c0 = (await _status(http, port))["chunk"]
    await asyncio.sleep(seconds)
    st = await _status(http, port)
    n = st["chunk"] - c0
    assert n >= 5, f"only {n} chunks in {seconds} s"
    return st["step_seconds"][-n:]


async def _viewer(http, port, counts, i, stop):
    async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
        while not stop.is_set():
            try:
                msg = await ws.receive(timeout=0.5)
            except asyncio.TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                counts[i] += 1
            elif msg.type != aiohttp.WSMsgType.TEXT:
                return


def _stalled_viewer(port) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads again (a frozen tab)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert b"101" in s.recv(12)
    return s


async def load_phases(port: int, pid: int, reps: int) -> dict:
    """Start a stream, then alternate phases of 0 and VIEWERS viewers `reps` times (interleaved, so that load
    from other processes on a shared machine hits both alike); a stalled viewer joins the last loaded phase.
    -> per-chunk step seconds alone / watched, frames produced and received per viewer in the last phase, the
    last status, the server's RSS after each loaded phase (and before), and the stalled viewer's socket."""
    mem = psutil.Process(pid)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ctl:
            await ctl.send_json({"cmd": "start", "prompt": "a cat walks on the beach", "seed": 0})
            while True:  # wait for the stream to run
                msg = await ctl.receive(timeout=120)
                if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("state") == "running":
                    break
        await asyncio.sleep(1.0)  # warm-up chunks
        alone, watched = [], []
        rss = [mem.memory_info().rss]
        stalled = None
        for rep in range(reps):
            alone += await _phase_steps(http, port, PHASE_S)
            stop = asyncio.Event()
            counts = [0] * VIEWERS
            tasks = [asyncio.create_task(_viewer(http, port, counts, i, stop)) for i in range(VIEWERS)]
            if rep == reps - 1:
                stalled = _stalled_viewer(port)
            await asyncio.sleep(0.5)  # all connected
            f0 = (await _status(http, port))["frames_out"]
            watched += await _phase_steps(http, port, PHASE_S)
            st = await _status(http, port)
            produced = st["frames_out"] - f0
            got = list(counts)
            rss.append(mem.memory_info().rss)
            stop.set()
            await asyncio.gather(*tasks)
        return dict(alone=alone, watched=watched, produced=produced, got=got, status=st, rss=rss, stalled=stalled)


def test_twenty_viewers_all_get_the_frames_and_a_stalled_viewer_is_bounded(server):
    proc, port = server
    res = asyncio.run(load_phases(port, proc.pid, REPS))
    alone, watched, produced, got, st, rss, stalled = (res[k] for k in ("alone", "watched", "produced", "got",
                                                                       "status", "rss", "stalled"))
    base, loaded = statistics.median(alone), statistics.median(watched)
    frames_per_chunk = 3
    print(f"\ngeneration: {frames_per_chunk / base:.1f} frames/s with 0 viewers ({len(alone)} chunks), "
          f"{frames_per_chunk / loaded:.1f} frames/s with {VIEWERS} viewers ({len(watched)} chunks); "
          f"ratio {base / loaded:.3f}")
    print(f"frames generated in the last loaded phase: {produced}; received per viewer: min {min(got)}, "
          f"max {max(got)}")
    stats = st["viewer_stats"]
    print(f"server RSS MiB: {[round(r / 2**20, 1) for r in rss]}; per-viewer queued/dropped: "
          f"{[(v['queued'], v['dropped']) for v in stats]}")
    try:
        # no viewer starves: every reading viewer got (nearly) every frame of the phase, next to a stalled one
        assert min(got) >= 0.9 * produced, (produced, got)
        # the stalled viewer: the server holds at most QUEUE frames for it and drops the rest
        worst = max(stats, key=lambda v: v["dropped"])
        assert worst["dropped"] > 0, stats
        assert all(v["queued"] <= QUEUE for v in stats)
        assert sum(v["dropped"] > 0 for v in stats) == 1, stats  # only the stalled viewer lost frames
        # memory: the phase with the stalled viewer adds no more than noise to the phase without it
        assert rss[-1] - rss[-2] < 16 * 2**20 and rss[-1] - rss[0] < 64 * 2**20, rss
    finally:
        stalled.close()
