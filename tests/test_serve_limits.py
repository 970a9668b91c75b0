"""One client must not stall, flood or exhaust `rfrt serve` (issue #14 item 5): per-client rate limit with the
latest prompt winning, a bounded command queue, errors only to the client that caused them, a viewer cap, a
stream nobody watches stopped after a grace period, nested or oversized JSON refused with a message, and
server options checked at start-up. Real server on an ephemeral loopback port, real aiohttp clients, every
wait bounded."""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")

from rfrt.serve import ServeConfig, parse_command
from rfrt.serve.hub import ServeError
from rfrt.serve.limits import CommandQueue, TokenBucket
from serve_harness import PROMPT, make_tiny, one_thread, start_server  # noqa: F401
from test_serve_api import _frames, _next_event, _receive


def _run(coro, timeout=180):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _drain(ws, quiet):
    """Every message until none comes for `quiet` seconds (frames as bytes, events as dicts with "at": the
    arrival time), bounded at 60 s."""
    out = []
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            msg = await ws.receive(timeout=quiet)
        except asyncio.TimeoutError:
            break
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append({**json.loads(msg.data), "at": time.monotonic()})
        elif msg.type == aiohttp.WSMsgType.BINARY:
            out.append(msg.data)
        else:
            break
    return out


async def _status(http, srv):
    return await (await http.get(f"http://127.0.0.1:{srv.port}/api/status")).json()


def test_commands_are_rate_limited_per_client(start_server):
    srv = start_server(commands_per_second=2.0, command_burst=5)
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws, http.ws_connect(url) as other:
                await _next_event(ws, "hello")
                await _next_event(other, "hello")
                t0 = time.monotonic()
                for _ in range(40):
                    await ws.send_json({"cmd": "status"})
                got = await _drain(ws, 1.0)
                replies = [e for e in got if isinstance(e, dict) and e["type"] == "status"]
                errors = [e for e in got if isinstance(e, dict) and e["type"] == "error"]
                span = replies[-1]["at"] - t0  # the last command let in was read no later than this
                # the burst, plus what the bucket refilled until the last one let in
                assert 5 <= len(replies) <= 5 + int(2.0 * span) + 1, (len(replies), span)
                assert len(errors) == 1 and "at most 2 commands per second" in errors[0]["message"], errors
                # the limit is per client: the other one is served at once
                await other.send_json({"cmd": "status"})
                assert (await _next_event(other, "status", timeout=30))["type"] == "status"
    _run(run())


def test_a_prompt_flood_is_coalesced_and_the_latest_prompt_wins(start_server):
    """The probe's 1,729 prompt switches froze another viewer for 22.7 s: now at most the rate limit's worth
    are applied, the last one sent is the one that stays, and the other viewer keeps getting frames."""
    srv = start_server(commands_per_second=4.0, command_burst=4, queue_frames=4096)
    url = f"http://127.0.0.1:{srv.port}/ws"
    n = 400

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as flooder, http.ws_connect(url) as watcher:
                await _next_event(flooder, "hello")
                await _next_event(watcher, "hello")
                await flooder.send_json({"cmd": "start", "prompt": PROMPT, "seed": 0})
                await _frames(watcher, 3)
                t0 = time.monotonic()
                for i in range(n):
                    await flooder.send_json({"cmd": "prompt", "prompt": f"{PROMPT} number {i}", "recache": True})
                flood_s = time.monotonic() - t0
                last = f"{PROMPT} number {n - 1}"
                switched = []
                deadline = time.monotonic() + 60
                while not switched or switched[-1]["prompt"] != last:
                    msg = await _receive(watcher, deadline, f"the last prompt to be applied (got {len(switched)})")
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "prompt":
                        switched.append(json.loads(msg.data))
                applied_s = time.monotonic() - t0
                print(f"\n{n} re-cached prompt switches sent in {flood_s:.2f} s; {len(switched)} applied, the last "
                      f"{applied_s:.2f} s after the first was sent")
                # burst + refill over the time until the last one applied, never one switch per message
                assert len(switched) <= 4 + 4.0 * applied_s + 1, (len(switched), flood_s, applied_s)
                assert len(switched) < n / 4
                assert (await _status(http, srv))["streams"][0]["prompt"] == last
                assert len(await _frames(watcher, 6, timeout=60)) == 6  # the stream goes on for the others
    _run(run())


def test_the_command_queue_is_bounded(start_server):
    """While the generator thread is busy (here: building the generator), commands wait in a bounded queue;
    beyond it the sender is told the stream is busy, and nothing else is lost."""
    entered, release = threading.Event(), threading.Event()

    def slow_make():
        entered.set()
        release.wait(60)
        return make_tiny()

    srv = start_server(make=slow_make, command_queue=4, commands_per_second=1000.0, command_burst=1000)
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws:
                await _next_event(ws, "hello")
                await ws.send_json({"cmd": "start", "prompt": PROMPT, "seed": 0})
                assert await asyncio.to_thread(entered.wait, 30)
                # prompt, stop, prompt, stop fill the queue (none merges with the one before it); then 16
                # commands that differ from the last one waiting (a stop), so none of them can merge into it
                for i in range(20):
                    if i < 4:
                        cmd = {"cmd": "stop"} if i % 2 else {"cmd": "prompt", "prompt": f"{PROMPT} {i}"}
                    else:
                        cmd = {"cmd": "reset", "seed": i} if i % 2 else {"cmd": "prompt", "prompt": f"{PROMPT} {i}"}
                    await ws.send_json(cmd)
                got = await _drain(ws, 1.0)
                busy = [e for e in got if isinstance(e, dict) and e["type"] == "error"]
                assert len(busy) == 16 and all("busy" in e["message"] for e in busy), got
                release.set()
                deadline = time.monotonic() + 60
                while (await _status(http, srv))["streams"][0]["pending_commands"]:  # the 4 are applied
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                await ws.send_json({"cmd": "start", "prompt": PROMPT, "seed": 1})
                assert len(await _frames(ws, 3, timeout=60)) == 3
    try:
        _run(run())
    finally:
        release.set()


def test_errors_go_only_to_the_client_that_caused_them(start_server):
    srv = start_server()
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as culprit, http.ws_connect(url) as bystander:
                await _next_event(culprit, "hello")
                await _next_event(bystander, "hello")
                await culprit.send_json({"cmd": "start"})  # no prompt yet: refused by the generator thread
                assert "no prompt" in (await _next_event(culprit, "error"))["message"]
                await culprit.send_str("{not json")  # refused on the event loop
                assert "invalid JSON" in (await _next_event(culprit, "error"))["message"]
                # both errors were queued before this request: a broadcast would reach the bystander first
                await bystander.send_json({"cmd": "status"})
                deadline = time.monotonic() + 30
                while True:
                    msg = await _receive(bystander, deadline, "the status reply")  # fails on an error event
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "status":
                        break
    _run(run())


def test_viewers_are_capped_with_a_clear_refusal(start_server):
    srv = start_server(max_viewers=2)
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as a, http.ws_connect(url) as b:
                await _next_event(a, "hello")
                await _next_event(b, "hello")
                async with http.ws_connect(url) as c:
                    err = await _next_event(c, "error", timeout=30)
                    assert "limit of 2 viewers" in err["message"]
                    msg = await c.receive(timeout=30)
                    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013, msg  # try again later
            async with http.ws_connect(url) as d:  # a place is free again
                await _next_event(d, "hello", timeout=30)
    _run(run())


def test_a_stream_nobody_watches_stops_after_the_grace_period(start_server):
    """The probe's orphan: a page starts a stream and leaves; it ran forever and held the only stream slot."""
    srv = start_server(idle_grace_s=0.5, max_streams=1)
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url + "?stream=orphan") as ws:
                await _next_event(ws, "hello")
                await ws.send_json({"cmd": "start", "prompt": PROMPT, "seed": 0})
                await _frames(ws, 3)
            deadline = time.monotonic() + 30
            while (await _status(http, srv))["streams"]:
                assert time.monotonic() < deadline, await _status(http, srv)
                await asyncio.sleep(0.1)
            async with http.ws_connect(url) as ws:  # the slot is free for the user's own stream
                assert (await _next_event(ws, "hello"))["stream"] == "main"
    _run(run())


def test_a_viewer_that_comes_back_within_the_grace_period_finds_its_stream(start_server):
    srv = start_server(idle_grace_s=600.0)
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws:
                await _next_event(ws, "hello")
                await ws.send_json({"cmd": "start", "prompt": PROMPT, "seed": 0})
                await _frames(ws, 3)
            await asyncio.sleep(0.5)
            async with http.ws_connect(url) as ws:  # e.g. a page reload
                hello = await _next_event(ws, "hello")
                assert hello["state"] == "running" and hello["prompt"] == PROMPT
                assert len(await _frames(ws, 3)) == 3
    _run(run())


def test_nested_and_oversized_json_get_a_message(start_server):
    srv = start_server()
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws:
                await _next_event(ws, "hello")
                for text, words in [("[" * 5_000, "nested too deeply"), ('{"a":' * 2_000, "nested too deeply"),
                                    ("[" * 100_000, "message too long"),  # the probe's RecursionError
                                    (json.dumps({"cmd": "prompt", "prompt": "x" * 500_000}), "message too long")]:
                    await ws.send_str(text)
                    assert words in (await _next_event(ws, "error", timeout=30))["message"]
                await ws.send_json({"cmd": "status"})  # the connection is still fine
                assert (await _next_event(ws, "status", timeout=30))["type"] == "status"
    _run(run())


def test_parse_command_refuses_nesting_and_size():
    with pytest.raises(ServeError, match="nested too deeply"):
        parse_command("[" * 5_000, 2000)
    with pytest.raises(ServeError, match="message too long"):
        parse_command(json.dumps({"cmd": "prompt", "prompt": "a" * 10_000}), 100)
    assert parse_command(json.dumps({"cmd": "prompt", "prompt": "\u00e9" * 100}, ensure_ascii=True), 100)[1] == \
        {"prompt": "\u00e9" * 100}  # a prompt at the limit, every character escaped, still fits


@pytest.mark.parametrize("kw, words", [({"send_buffer_bytes": -5}, "send_buffer_bytes"),
                                       ({"send_buffer_bytes": 0}, "send_buffer_bytes"),
                                       ({"max_viewers": 0}, "max_viewers"),
                                       ({"commands_per_second": 0.0}, "commands_per_second"),
                                       ({"commands_per_second": float("nan")}, "commands_per_second"),
                                       ({"command_burst": 0}, "command_burst"),
                                       ({"command_queue": 0}, "command_queue"),
                                       ({"idle_grace_s": -1.0}, "idle_grace_s"),
                                       ({"idle_grace_s": float("nan")}, "idle_grace_s")])
def test_server_options_are_checked_at_start_up(kw, words):
    with pytest.raises(ValueError, match=words):
        ServeConfig(**kw)


def test_cli_refuses_a_negative_send_buffer_before_loading(capsys):
    from rfrt.serve.cli import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--send-buffer-bytes", "-5", "--model", "/nonexistent"])) == 2
    err = capsys.readouterr().err
    assert "send-buffer-bytes" in err and "-5" in err and "/nonexistent" not in err


def test_token_bucket_and_command_queue():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.take() and not bucket.take()
    now[0] = 100.0
    assert sum(bucket.take() for _ in range(10)) == 3  # refills to the burst, no more

    q = CommandQueue(maxsize=2)
    assert q.put("prompt", {"prompt": "a", "recache": True}, origin="v1")
    assert q.put("prompt", {"prompt": "b"}, origin="v2")  # coalesced: the latest prompt wins
    assert len(q) == 1
    assert q.put("stop", {}) and not q.put("prompt", {"prompt": "c"})  # full
    q.put_control("close")  # shutdown always gets in
    assert q.get(0) == ("prompt", {"prompt": "b", "recache": True}, "v2")
    assert q.get(0)[0] == "stop" and q.get(0)[0] == "close" and q.get(0) is None
