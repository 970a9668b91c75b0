"""Who may use `rfrt serve` (issue #14 item 4): by default only pages of the server's own origin may open the
WebSocket (cross-site WebSocket hijacking), and only Host names that name the bind address are answered (DNS
rebinding). Wider access is an explicit option, and listening beyond loopback needs a token. Real server on an
ephemeral loopback port, real aiohttp clients."""
from __future__ import annotations

import argparse
import asyncio

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="rfrt serve needs aiohttp (pip install 'rfrt[serve]')")

from rfrt.serve import ServeConfig
from rfrt.serve.access import AccessPolicy
from serve_harness import PROMPT, make_tiny, one_thread, start_server  # noqa: F401
from test_serve_api import _frames, _next_event


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _handshake_status(http, url, **kw) -> int:
    try:
        async with http.ws_connect(url, **kw) as ws:
            await _next_event(ws, "hello", timeout=30)
            return 101
    except aiohttp.WSServerHandshakeError as err:
        return err.status


def test_foreign_origins_cannot_open_the_websocket(start_server):
    srv = start_server()
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            for origin in ("http://evil.example", "null", "file://", f"http://127.0.0.1.evil.example:{srv.port}",
                           "http://127.0.0.1", f"https://evil.example:{srv.port}", f"ws://127.0.0.1:{srv.port}"):
                assert await _handshake_status(http, url, origin=origin) == 403, origin
            # the refusal says why and how to allow an origin on purpose
            async with http.get(url, headers={"Origin": "http://evil.example", "Upgrade": "websocket",
                                              "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                assert r.status == 403 and "--allow-origin" in await r.text()
            # the server's own page (its origin is the Host it was loaded from), and clients that send no Origin
            assert await _handshake_status(http, url, origin=f"http://127.0.0.1:{srv.port}") == 101
            assert await _handshake_status(http, f"http://localhost:{srv.port}/ws",
                                           origin=f"http://localhost:{srv.port}") == 101
            assert await _handshake_status(http, url) == 101
            # the hijacking of the probe: a start from a foreign page never reaches the generator
            status = await (await http.get(f"http://127.0.0.1:{srv.port}/api/status")).json()
            assert all(s["state"] == "idle" for s in status["streams"]), status
    _run(run())


def test_an_allowed_origin_is_an_explicit_option(start_server):
    srv = start_server(allowed_origins=("http://app.example:3000",))
    url = f"http://127.0.0.1:{srv.port}/ws"

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url, origin="http://app.example:3000") as ws:
                await _next_event(ws, "hello", timeout=30)
                await ws.send_json({"cmd": "start", "prompt": PROMPT, "seed": 0})
                assert len(await _frames(ws, 3)) == 3
            assert await _handshake_status(http, url, origin="http://evil.example") == 403
    _run(run())


def test_foreign_host_names_are_refused(start_server):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, so the browser sends `Host: attacker.example`."""
    srv = start_server()
    base = f"http://127.0.0.1:{srv.port}"

    async def run():
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/app.js", "/api/status", "/ws"):
                async with http.get(base + path, headers={"Host": f"attacker.example:{srv.port}"}) as r:
                    assert r.status == 403, path
                    assert "attacker.example" in await r.text() and "--allow-host" in await r.text()
            for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", "localhost", f"LOCALHOST:{srv.port}"):
                async with http.get(base + "/api/status", headers={"Host": host}) as r:
                    assert r.status == 200, host
    _run(run())


def test_an_allowed_host_is_an_explicit_option(start_server):
    srv = start_server(allowed_hosts=("studio.lan",))

    async def run():
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{srv.port}/api/status"
            assert (await http.get(url, headers={"Host": f"studio.lan:{srv.port}"})).status == 200
            assert (await http.get(url, headers={"Host": f"other.lan:{srv.port}"})).status == 403
    _run(run())


def test_the_page_may_not_be_framed(start_server):
    """Clickjacking: a foreign page that frames the viewer would drive it with the viewer's own origin."""
    srv = start_server()

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{srv.port}/") as r:
                assert r.status == 200
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                assert r.headers["X-Frame-Options"] == "DENY"
    _run(run())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "", "myhost.example"])
def test_listening_beyond_loopback_needs_a_token(host):
    with pytest.raises(ValueError, match="without a token"):
        ServeConfig(host=host)
    ServeConfig(host=host, token="s3cret")  # with one it is allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host):
    ServeConfig(host=host)


@pytest.mark.parametrize("field", ["allowed_hosts", "allowed_origins"])
def test_a_wildcard_needs_a_token(field):
    with pytest.raises(ValueError, match="token"):
        ServeConfig(**{field: ("*",)})
    ServeConfig(token="t", **{field: ("*",)})


def test_cli_refuses_to_listen_on_every_interface_without_a_token(capsys):
    """The refusal comes before the model loads (no --model given: it would fail later, with another message)."""
    from rfrt.serve.cli import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--host", "0.0.0.0", "--model", "/nonexistent"])) == 2
    err = capsys.readouterr().err
    assert "0.0.0.0" in err and "--token" in err and "/nonexistent" not in err


def test_host_policy_for_each_bind_address():
    loop = AccessPolicy(host="127.0.0.1")
    for ok in ("127.0.0.1:8000", "localhost:8000", "localhost.", "[::1]:8000", "127.0.0.1", None):
        assert loop.host_ok(ok), ok
    for bad in ("attacker.example:8000", "10.0.0.5:8000", "127.0.0.1.evil.example", "[::1", "", "localhost:x:y"):
        assert not loop.host_ok(bad), bad
    named = AccessPolicy(host="studio.lan")
    assert named.host_ok("studio.lan:8000") and named.host_ok("STUDIO.LAN") and not named.host_ok("evil.lan")
    # every interface: an IP literal cannot be rebound to another origin, a foreign DNS name can
    wild = AccessPolicy(host="0.0.0.0")
    assert wild.host_ok("192.168.1.20:8000") and wild.host_ok("[fe80::1]:8000")
    assert not wild.host_ok("attacker.example:8000")
    assert AccessPolicy(host="127.0.0.1", allowed_hosts=("*",)).host_ok("anything.example")
    # the origin must be the page's own: same scheme://authority as the Host it was loaded from
    assert loop.origin_ok("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert loop.origin_ok("https://LOCALHOST:8000/", "localhost:8000")
    assert not loop.origin_ok("http://localhost:8000", "127.0.0.1:8000")
    assert not loop.origin_ok("http://127.0.0.1:9000", "127.0.0.1:8000")
    assert loop.origin_ok(None, "127.0.0.1:8000")
    assert AccessPolicy(host="127.0.0.1", allowed_origins=("http://app.example",)).origin_ok(
        "http://APP.example", "127.0.0.1:8000")
