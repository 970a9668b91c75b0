"""The web server: one page, one WebSocket endpoint, a JSON status endpoint (aiohttp).

Why aiohttp: one well-kept library is the server, the WebSocket implementation and the client the tests (and
load tests) use, with per-connection flow control that a bounded fan-out needs (`send_bytes` waits while the
socket's buffer is full, so a slow viewer's sender waits and its own deque drops frames); Starlette would need
uvicorn, a WebSocket package and httpx besides.

Why JPEG frames over a WebSocket and not fragmented MP4 + Media Source Extensions: every frame stands alone,
so a viewer that falls behind simply skips frames (an H.264 stream cannot drop a frame without breaking the
frames that reference it, and MSE buffers seconds before it plays); latency is one frame, a viewer can join
at any moment without waiting for a keyframe, and one encode per frame serves every viewer. The cost is
bandwidth (JPEG is several times larger than H.264), which is fine on a LAN or loopback.

Protocol, client -> server (JSON text): {"cmd": "start", "prompt": str, "seed": int}, {"cmd": "prompt",
"prompt": str, "recache": bool}, {"cmd": "stop"}, {"cmd": "reset", "seed": int, "prompt": str (optional)},
{"cmd": "status"}. Server -> client: JSON events {"type": "hello" | "status" | "prompt" | "error", ...} and
binary frames (`hub.FRAME_HEADER`: chunk index, frame number; then one JPEG).

Who may connect (Host names, page origins, the token) is access.py's; what one client may cost (rate, queue)
is limits.py's; the stream's pace is pacing.py's. Refusals: 403 with a text body before a handshake (Host,
Origin, token: 401), an error event then close code 1013 after it (viewer or stream limit).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import signal
import socket
import threading
from importlib import resources
from typing import Callable

try:
    from aiohttp import WSMsgType, web
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("rfrt serve needs aiohttp: pip install 'rfrt[serve]' (or pip install aiohttp)") from err

from rfrt.checks import check_seed

from .access import AccessPolicy
from .config import ServeConfig
from .hub import Hub, ServeError, Stream, Viewer

log = logging.getLogger("rfrt.serve")

__all__ = ["ServeConfig", "create_app", "serve", "BackgroundServer", "parse_command", "COMMANDS"]

COMMANDS = ("start", "prompt", "stop", "reset", "status")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_HUB = web.AppKey("hub", Hub)
_SOCKETS = web.AppKey("sockets", set)


def max_command_chars(max_prompt_chars: int) -> int:
    """The longest command text: a prompt at the limit with every character escaped (\\uXXXX), plus the rest."""
    return 6 * max_prompt_chars + 1024


def parse_command(text: str, max_prompt_chars: int) -> tuple[str, dict]:
    """One client message -> (command, arguments). Raises ServeError with a message for the page."""
    # A command is a small flat object: anything longer is refused before it is parsed, and nesting deeper
    # than the parser's recursion limit is an error for the client, not a RecursionError in the server's log.
    limit = max_command_chars(max_prompt_chars)
    if len(text) > limit:
        raise ServeError(f"message too long: {len(text)} characters (a command is at most {limit})")
    try:
        msg = json.loads(text)
    except RecursionError:
        raise ServeError("invalid JSON: nested too deeply (a command is a flat JSON object)") from None
    except ValueError as err:
        raise ServeError(f"invalid JSON: {err}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("cmd"), str):
        raise ServeError('a message must be a JSON object with a "cmd" string, e.g. {"cmd": "stop"}')
    cmd = msg["cmd"]
    if cmd not in COMMANDS:
        raise ServeError(f"unknown command {cmd[:40]!r}; expected one of {', '.join(COMMANDS)}")
    allowed = {"start": {"prompt", "seed"}, "prompt": {"prompt", "recache"}, "reset": {"prompt", "seed"}}
    unknown = sorted(set(msg) - {"cmd"} - allowed.get(cmd, set()))
    if unknown:
        raise ServeError(f"{cmd}: unknown fields {unknown}")
    kw = {}
    if "prompt" in msg or cmd == "prompt":
        prompt = msg.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ServeError(f"{cmd}: the prompt must be a non-empty string")
        if len(prompt) > max_prompt_chars:
            raise ServeError(f"{cmd}: the prompt is too long ({len(prompt)} characters, at most {max_prompt_chars})")
        kw["prompt"] = prompt.strip()
    if "seed" in msg:
        try:  # the rule of the CLI and the API (rfrt.checks)
            kw["seed"] = check_seed(msg["seed"])
        except ValueError as err:
            raise ServeError(f"{cmd}: {err}") from None
    if "recache" in msg:
        if not isinstance(msg["recache"], bool):
            raise ServeError(f"{cmd}: recache must be true or false")
        kw["recache"] = msg["recache"]
    return cmd, kw


def _check_token(request: web.Request, config: ServeConfig) -> None:
    if config.token is None:
        return
    given = request.query.get("token", "")
    if not hmac.compare_digest(given.encode(), config.token.encode()):
        log.warning("refused %s %s: %s access token", request.remote, request.path, "wrong" if given else "no")
        raise web.HTTPUnauthorized(text="rfrt serve: this server needs its access token: open /?token=TOKEN\n")


def _asset(name: str) -> bytes:
    return resources.files("rfrt.serve").joinpath("static", name).read_bytes()


async def _send_loop(ws: web.WebSocketResponse, viewer: Viewer) -> None:
    """Events first (they are small and carry errors), then frames, oldest kept first."""
    while not ws.closed:
        await viewer.wake.wait()
        viewer.wake.clear()
        while viewer.events or viewer.frames:
            if viewer.events:
                await ws.send_str(json.dumps(viewer.events.popleft()))
            else:
                await ws.send_bytes(viewer.frames.popleft())
                viewer.sent_frames += 1


def _limit_send_buffer(request: web.Request, nbytes: int) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, nbytes)
    if transport is not None:
        transport.set_write_buffer_limits(high=nbytes)


# The page may not be framed by another site: a framing page could trick the user into clicking it, and the
# clicks would drive the WebSocket with the server's own origin. No-referrer: the URL can carry the token.
_PAGE_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def create_app(make_generator: Callable, config: ServeConfig = ServeConfig(), recorder=None) -> web.Application:
    """The aiohttp application. make_generator() -> StreamGenerator, called once per stream (in its thread)."""
    policy = AccessPolicy(config.host, config.allowed_hosts, config.allowed_origins)

    @web.middleware
    async def check_host(request, handler):
        host = request.headers.get("Host")
        if not policy.host_ok(host):
            log.warning("refused %s %s: Host %r", request.remote, request.path, host)
            raise web.HTTPForbidden(text=f"rfrt serve: refused Host {host!r}: this server answers to "
                                         f"{policy.describe()}; to answer another name start it with "
                                         f"--allow-host NAME (and a --token)\n")
        return await handler(request)

    app = web.Application(middlewares=[check_host])
    app[_SOCKETS] = set()

    async def on_startup(app):
        app[_HUB] = Hub(make_generator, config, recorder=recorder, loop=asyncio.get_running_loop())

    async def on_shutdown(app):
        # All at once and time-boxed: a stalled viewer cannot take its close frame, and must not hold up the
        # others or the recording's finalisation (the runner drops whatever is left after shutdown_timeout).
        closes = [asyncio.wait_for(ws.close(code=1001, message=b"server shutting down"), 5.0)
                  for ws in list(app[_SOCKETS])]
        await asyncio.gather(*closes, return_exceptions=True)
        await app[_HUB].close()

    async def page(request):
        _check_token(request, config)
        return web.Response(body=_asset("index.html"), content_type="text/html", headers=_PAGE_HEADERS)

    async def script(request):
        return web.Response(body=_asset("app.js"), content_type="application/javascript",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def status(request):
        _check_token(request, config)
        hub = request.app[_HUB]
        out = []
        for s in list(hub.streams.values()):
            st = s.status()
            st["viewer_stats"] = [{"queued": len(v.frames), "dropped": v.dropped, "sent": v.sent_frames}
                                  for v in s.viewers]
            st["frames_out"] = s.frames_out
            st["step_seconds"] = list(s.step_seconds)
            st["pending_commands"] = s.pending_commands()
            out.append(st)
        return web.json_response({"streams": out, "max_streams": config.max_streams,
                                  "max_viewers": config.max_viewers, "paced": config.pace})

    async def refuse(ws, message: str, code: int = 1008):
        await ws.send_json({"type": "error", "message": message})
        await ws.close(code=code, message=message[:120].encode())
        return ws

    async def websocket(request):
        _check_token(request, config)
        origin = request.headers.get("Origin")
        if not policy.origin_ok(origin, request.headers.get("Host")):
            # Refused before the handshake: a foreign page learns nothing, not even the stream's state.
            log.warning("refused a WebSocket from %s: Origin %r", request.remote, origin)
            raise web.HTTPForbidden(text=f"rfrt serve: refused a WebSocket from the page at {origin!r}: only this "
                                         f"server's own page may connect; to allow another page start the server "
                                         f"with --allow-origin ORIGIN\n")
        name = request.query.get("stream", "main")
        # aiohttp checks the socket's flow control only every writer_limit bytes (64 KiB by default): with a
        # send buffer cap, check at that size too, or a stalled viewer absorbs 64 KiB before anything waits.
        limits = {"writer_limit": config.send_buffer_bytes} if config.send_buffer_bytes else {}
        # timeout: how long a close waits for the client's answer (a refused client that never reads).
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20, timeout=5.0, **limits)
        await ws.prepare(request)
        if config.send_buffer_bytes:
            _limit_send_buffer(request, config.send_buffer_bytes)
        if not _STREAM_NAME.fullmatch(name):
            return await refuse(ws, "stream names are 1-32 letters, digits, - or _")
        hub = request.app[_HUB]
        try:
            stream, viewer = hub.attach(name)
        except ServeError as err:  # a limit: 1013, try again later
            log.warning("refused a viewer from %s: %s", request.remote, err)
            return await refuse(ws, str(err), code=1013)
        request.app[_SOCKETS].add(ws)
        viewer.offer_event({**stream.status(), "type": "hello", "queue_frames": config.queue_frames,
                            "paced": config.pace})
        sender = asyncio.create_task(_send_loop(ws, viewer))
        log.info("viewer %s joined stream %r (%d watching)", request.remote, name, len(stream.viewers))
        try:
            async for msg in ws:
                _handle(msg, stream, viewer, config, request.remote)
        finally:
            sender.cancel()
            request.app[_SOCKETS].discard(ws)
            hub.detach(stream, viewer)
            log.info("viewer %s left stream %r (dropped %d frames)", request.remote, name, viewer.dropped)
        return ws

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", page)
    app.router.add_get("/app.js", script)
    app.router.add_get("/api/status", status)
    app.router.add_get("/ws", websocket)
    return app


def _handle(msg, stream: Stream, viewer: Viewer, config: ServeConfig, remote) -> None:
    """Apply one client message; bad input becomes an error event for this viewer and a log line.

    Every message spends one of the viewer's tokens. Over the limit, a prompt waits (a later one replaces it:
    the latest prompt wins) until the bucket refills; anything else is ignored, with one error a second."""
    limited = viewer.deferred is not None or not viewer.bucket.take()
    try:
        if msg.type != WSMsgType.TEXT:
            raise ServeError("only JSON text messages are accepted")
        cmd, kw = parse_command(msg.data, config.max_prompt_chars)
    except ServeError as err:
        if limited:
            _too_many(stream, viewer, config, "the message")
        else:
            log.warning("viewer %s, stream %r: %s", remote, stream.name, err)
            viewer.offer_event({"type": "error", "stream": stream.name, "message": str(err)})
        return
    if limited and cmd == "prompt":
        viewer.deferred = kw
        if viewer.deferred_timer is None:
            viewer.deferred_timer = stream.hub.loop.call_later(viewer.bucket.wait_s(), _release_deferred,
                                                               stream, viewer, remote)
    elif limited:
        _too_many(stream, viewer, config, cmd)
    elif cmd == "status":
        viewer.offer_event(stream.status())
    else:
        _forward(stream, viewer, cmd, kw, remote)


def _forward(stream: Stream, viewer: Viewer, cmd: str, kw: dict, remote) -> None:
    log.info("viewer %s, stream %r: %s %s", remote, stream.name, cmd, kw)
    if not stream.command(cmd, viewer, **kw):
        viewer.offer_event({"type": "error", "stream": stream.name,
                            "message": f"the stream is busy: {stream.pending_commands()} commands are already "
                                       f"waiting for the generator; {cmd} was dropped, try again"})


def _release_deferred(stream: Stream, viewer: Viewer, remote) -> None:
    """The deferred prompt, once the viewer's bucket has a token again (and the viewer is still there)."""
    viewer.deferred_timer = None
    if viewer.deferred is None or viewer not in stream.viewers:
        return
    if not viewer.bucket.take():
        viewer.deferred_timer = stream.hub.loop.call_later(viewer.bucket.wait_s(), _release_deferred,
                                                           stream, viewer, remote)
        return
    kw, viewer.deferred = viewer.deferred, None
    _forward(stream, viewer, "prompt", kw, remote)


def _too_many(stream: Stream, viewer: Viewer, config: ServeConfig, what: str) -> None:
    now = stream.hub.loop.time()
    if now - viewer.last_notice >= 1.0:
        viewer.last_notice = now
        viewer.offer_event({"type": "error", "stream": stream.name,
                            "message": f"too many commands: at most {config.commands_per_second:g} commands per "
                                       f"second ({config.command_burst} at once); {what} was ignored"})


async def serve(make_generator: Callable, config: ServeConfig = ServeConfig(), *, recorder=None,
                stop: asyncio.Event | None = None, ready: Callable[[int], None] | None = None) -> None:
    """Run until `stop` is set (or SIGINT / SIGTERM when run in the main thread), then shut down cleanly:
    sockets closed, generator threads stopped after their chunk, the recording finalised."""
    app = create_app(make_generator, config, recorder)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    stop = stop or asyncio.Event()
    # Before the "serving on" line: a signal sent by whoever waits for that line must find the handler.
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
            loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        query = "?token=" + config.token if config.token else ""
        shown = f"[{config.host}]" if ":" in config.host else config.host
        log.info("serving on http://%s:%d/%s", shown, port, query)
        if ready is not None:
            ready(port)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


class BackgroundServer:
    """serve() on its own thread and event loop (tests, notebooks): start() -> port; stop() shuts it down."""

    def __init__(self, make_generator: Callable, config: ServeConfig = ServeConfig(port=0), recorder=None) -> None:
        self._args = (make_generator, config, recorder)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> int:
        started = threading.Event()

        def ready(port):
            self.port = port
            started.set()

        async def main():
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            make_generator, config, recorder = self._args
            await serve(make_generator, config, recorder=recorder, stop=self._stop, ready=ready)

        def run():
            try:
                asyncio.run(main())
            except BaseException as err:  # noqa: BLE001 - handed to the caller of start()
                self.error = err
                started.set()

        self._thread = threading.Thread(target=run, name="rfrt-serve", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or self.error is not None:
            raise RuntimeError(f"rfrt serve did not start: {self.error!r}")
        return self.port

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
