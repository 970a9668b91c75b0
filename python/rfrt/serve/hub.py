"""Streams and viewers: a generator thread per stream, JPEG fan-out to every viewer through bounded queues.

Threads and queues (why each exists):
  generator thread  runs StreamGenerator.step(), paced to the video's frame rate (pacing.py) unless unpaced,
                    and applies commands (start, prompt, stop, reset) between chunks from a bounded,
                    coalescing queue (limits.py), so a chunk is never interrupted, the event loop never waits
                    on torch, and no client can queue more than the bound;
  encoder thread    turns frames into JPEG once per frame (not once per viewer), off the generator thread, so
                    encoding overlaps the next chunk's compute; it is fed through a 2-chunk queue that drops the
                    oldest chunk when full: a slow encoder costs frames, never generation speed;
  event loop        gets each JPEG via call_soon_threadsafe and appends it to every viewer's bounded deque
                    (`queue_frames`, oldest dropped): a viewer that reads slowly, or not at all, only loses its
                    own frames, and the memory it can pin is queue_frames JPEGs.
The optional recording is written by the generator thread itself, so the MP4 has every frame, in order.
An error a command causes goes to the client that sent it only; a running stream that nobody watches is
stopped after a grace period (`idle_grace_s`), so a page that leaves cannot hold a stream slot for ever.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import struct
import threading
import time
from fractions import Fraction
from typing import Callable

from .config import ServeConfig
from .limits import CommandQueue, TokenBucket
from .pacing import Pacer

log = logging.getLogger("rfrt.serve")

__all__ = ["Hub", "Stream", "Viewer", "ServeError", "FRAME_HEADER"]

# Binary frame message: chunk index, frame number in the stream (both uint32, little endian), then the JPEG.
FRAME_HEADER = struct.Struct("<II")


class ServeError(Exception):
    """A request the server refuses (the message is shown to the viewer as is)."""


class Viewer:
    """One WebSocket client: a bounded frame deque (oldest dropped), a small deque of JSON events, and its
    command budget (a token bucket; `deferred` is a prompt waiting for the bucket, replaced by a later one)."""

    def __init__(self, queue_frames: int, bucket: TokenBucket | None = None) -> None:
        self.frames: collections.deque = collections.deque(maxlen=queue_frames)
        # Events (status, errors, prompt switches) are few and small; bounded all the same.
        self.events: collections.deque = collections.deque(maxlen=256)
        self.wake = asyncio.Event()
        self.dropped = 0
        self.sent_frames = 0
        self.bucket = bucket or TokenBucket(rate=10.0, burst=20)
        self.deferred: dict | None = None
        self.deferred_timer: asyncio.TimerHandle | None = None
        self.last_notice = -math.inf  # when the last "too many commands" error was sent (one a second at most)

    def cancel_deferred(self) -> None:
        if self.deferred_timer is not None:
            self.deferred_timer.cancel()
        self.deferred, self.deferred_timer = None, None

    def offer_frame(self, data: bytes) -> None:
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(data)
        self.wake.set()

    def offer_event(self, event: dict) -> None:
        self.events.append(event)
        self.wake.set()


class JpegEncoder:
    """RGB uint8 [H, W, 3] -> JPEG bytes with PyAV's mjpeg encoder (PyAV is already the MP4 dependency)."""

    def __init__(self, width: int, height: int, quality: int = 4) -> None:
        import av

        self._av = av
        self._ctx = av.CodecContext.create("mjpeg", "w")
        self._ctx.width, self._ctx.height = width, height
        self._ctx.pix_fmt = "yuvj420p"
        self._ctx.time_base = Fraction(1, 25)
        # mjpeg's quantiser scale: 2 (best) .. 31; 4 keeps small text and edges readable at a few KB per frame.
        self._ctx.qmin = self._ctx.qmax = quality

    def encode(self, rgb) -> bytes:
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


class Stream:
    """One generated stream, watched by any number of viewers.

    make_generator() -> StreamGenerator is called in the generator thread on the first start (loading can take
    a while; the loop stays responsive). `recorder` (an rfrt.video.Mp4Writer or None) receives every frame.
    Commands are queued (at most `command_queue`, a run of the same command merged) and applied by the
    generator thread between chunks; with `pace` the thread waits, between chunks, until the next one is due.
    """

    def __init__(self, name: str, hub: "Hub", make_generator: Callable, recorder=None, *, command_queue: int = 16,
                 pace: bool = True) -> None:
        self.name, self.hub = name, hub
        self._make_generator = make_generator
        self.recorder = recorder
        self.viewers: set[Viewer] = set()
        self.state = "idle"  # idle -> running <-> stopped; "closed" at shutdown
        self.prompt: str | None = None
        self.seed = 0
        self.chunk = 0
        self.frames_out = 0
        self.step_seconds: collections.deque = collections.deque(maxlen=512)  # wall time of recent step() calls
        self.size: tuple[int, int] | None = None
        self.fps: int | None = None
        self.frames_per_chunk: int | None = None
        self.pace = pace
        self.idle_timer: asyncio.TimerHandle | None = None  # set while nobody watches a running stream
        self._pacer: Pacer | None = None
        self._commands = CommandQueue(command_queue)
        self._to_encoder: queue.Queue = queue.Queue(maxsize=2)
        self.encoder_dropped_chunks = 0
        self._gen_thread = threading.Thread(target=self._generate_loop, name=f"rfrt-gen-{name}", daemon=True)
        self._enc_thread = threading.Thread(target=self._encode_loop, name=f"rfrt-jpeg-{name}", daemon=True)
        self._gen_thread.start()
        self._enc_thread.start()

    # ---- called on the event loop ----
    def command(self, cmd: str, origin: Viewer | None = None, **kw) -> bool:
        """Queue a command for the generator thread; False when the queue is full (the command is not queued)."""
        return self._commands.put(cmd, kw, origin)

    def pending_commands(self) -> int:
        return len(self._commands)

    def gen_fps(self) -> float | None:
        """Generated frames per second over the recent chunks (None before two chunks)."""
        if len(self.step_seconds) < 2 or not self.fps:
            return None
        frames = self.frames_per_chunk or 0
        return frames * len(self.step_seconds) / sum(self.step_seconds)

    def status(self) -> dict:
        fps = self.gen_fps()
        return {"type": "status", "stream": self.name, "state": self.state, "prompt": self.prompt,
                "seed": self.seed, "chunk": self.chunk, "gen_fps": None if fps is None else round(fps, 2),
                "video_fps": self.fps, "width": self.size[1] if self.size else None,
                "height": self.size[0] if self.size else None, "viewers": len(self.viewers)}

    def broadcast_event(self, event: dict) -> None:
        for v in self.viewers:
            v.offer_event(event)

    def tell(self, viewer: Viewer | None, event: dict) -> None:
        """An event for one viewer (if it still watches), or for all when viewer is None."""
        if viewer is None:
            self.broadcast_event(event)
        elif viewer in self.viewers:
            viewer.offer_event(event)

    def publish_frame(self, data: bytes) -> None:
        for v in self.viewers:
            v.offer_frame(data)

    def close(self, timeout: float = 30.0) -> None:
        """Stop both threads (blocking: call it off the loop). The chunk in progress is finished first."""
        self._commands.put_control("close")
        self._gen_thread.join(timeout)
        self._to_encoder.put(None)
        self._enc_thread.join(timeout)
        if self._gen_thread.is_alive():
            log.warning("stream %r: the generator thread did not finish its chunk within %.0f s", self.name, timeout)

    # ---- generator thread ----
    def _emit(self, event: dict) -> None:
        self.hub.call_in_loop(self.broadcast_event, event)

    def _error(self, message: str, origin: Viewer | None = None) -> None:
        """Report an error to the viewer whose command caused it (to every viewer when no viewer did)."""
        log.warning("stream %r: %s", self.name, message)
        self.hub.call_in_loop(self.tell, origin, {"type": "error", "stream": self.name, "message": message})

    def _apply(self, gen, cmd: str, kw: dict, origin: Viewer | None = None):
        """Apply one command; returns the (possibly new) generator. Errors are reported, never raised."""
        try:
            if cmd in ("start", "reset"):
                if gen is None:
                    gen = self._make_generator()
                    self.size, self.fps = (gen.height, gen.width), gen.fps
                    self._pacer = Pacer(gen.fps, enabled=self.pace)
                prompt = kw.get("prompt") or self.prompt
                if prompt is None:
                    raise ServeError("no prompt yet: type a prompt, then start")
                if cmd == "start" and not kw and self.state in ("running", "stopped"):
                    if self.state == "stopped":
                        self._pacer.restart()  # the video clock starts again where it stopped
                    self.state = "running"  # a bare start resumes a stopped stream where it stopped
                    self._emit(self.status())
                    return gen
                seed = kw.get("seed", self.seed)
                gen.reset(prompt, seed=seed)
                self.prompt, self.seed, self.chunk, self.state = prompt, seed, 0, "running"
                self.step_seconds.clear()
                self._pacer.restart()
            elif cmd == "prompt":
                if gen is None or self.state == "idle":
                    self.prompt = kw["prompt"]  # remembered for the next start
                else:
                    gen.set_prompt(kw["prompt"], recache=kw.get("recache", False))
                    self.prompt = kw["prompt"]
                    self._emit({"type": "prompt", "stream": self.name, "prompt": self.prompt,
                                "chunk": gen.chunk_index, "recache": kw.get("recache", False)})
                    log.info("stream %r: prompt switched at chunk %d: %r", self.name, gen.chunk_index, self.prompt)
            elif cmd == "stop":
                if self.state == "running":
                    self.state = "stopped"
        except (ServeError, ValueError, RuntimeError) as err:
            self._error(f"{cmd} failed: {err}", origin)
            return gen  # nothing changed: no status for everyone
        except Exception as err:  # noqa: BLE001 - a model failure must not kill the thread and freeze the page
            log.exception("stream %r: %s failed", self.name, cmd)
            self._error(f"{cmd} failed: {type(err).__name__}: {err}", origin)
            return gen
        self._emit(self.status())
        return gen

    def _generate_loop(self) -> None:
        gen = None
        while True:
            # Idle or stopped: wait for a command. Running: wait (for a command) only until the next chunk is due.
            wait = self._pacer.wait_s() if self.state == "running" else None
            item = self._commands.get(wait)
            if item is None:
                self._step(gen)
                continue
            cmd, kw, origin = item
            if cmd == "close":
                self.state = "closed"
                return
            gen = self._apply(gen, cmd, kw, origin)  # every pending command goes before the next chunk

    def _step(self, gen) -> None:
        start = time.perf_counter()
        try:
            chunk = gen.step()
        except Exception as err:  # noqa: BLE001 - stop the stream, keep the server and the page alive
            log.exception("stream %r: step failed", self.name)
            self.state = "stopped"
            self._error(f"generation stopped: {type(err).__name__}: {err}")
            self._emit(self.status())
            return
        self.step_seconds.append(time.perf_counter() - start)
        frames = chunk.frames.numpy()
        self.frames_per_chunk = len(frames)
        self._pacer.published(len(frames))
        if self.recorder is not None:
            self.recorder.write(frames)
        self.chunk = chunk.index + 1
        first = self.frames_out
        self.frames_out += len(frames)
        if self.viewers:  # no viewer, no JPEG work
            try:
                self._to_encoder.put_nowait((chunk.index, first, frames))
            except queue.Full:
                self.encoder_dropped_chunks += 1
        self._emit(self.status())

    # ---- encoder thread ----
    def _encode_loop(self) -> None:
        encoder = None
        while True:
            item = self._to_encoder.get()
            if item is None:
                return
            index, first, frames = item
            if encoder is None:
                encoder = JpegEncoder(frames.shape[2], frames.shape[1])
            for i, rgb in enumerate(frames):
                data = FRAME_HEADER.pack(index, first + i) + encoder.encode(rgb)
                self.hub.call_in_loop(self.publish_frame, data)


class Hub:
    """All streams of one server, by name, and their viewers.

    A stream exists while it has a viewer or is running: one left stopped (or never started) by its last viewer
    is closed at once, one left running is closed after `config.idle_grace_s` unless a viewer comes back
    (a page reload, a dropped connection). config.max_streams bounds the streams, config.max_viewers the
    viewers of all streams together."""

    def __init__(self, make_generator: Callable, config: ServeConfig | None = None, *, recorder=None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config if config is not None else ServeConfig()
        self.make_generator = make_generator
        self.recorder = recorder
        self.loop = loop or asyncio.get_event_loop()
        self.streams: dict[str, Stream] = {}
        self._closed = False

    def call_in_loop(self, fn, *args) -> None:
        if not self._closed and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def viewer_count(self) -> int:
        return sum(len(s.viewers) for s in self.streams.values())

    def stream(self, name: str) -> Stream:
        """The stream called name, created (with its threads) when first asked for."""
        if self._closed:
            raise ServeError("the server is shutting down")
        if name not in self.streams:
            if len(self.streams) >= self.config.max_streams:
                raise ServeError(f"the server already runs its limit of {self.config.max_streams} stream(s) "
                                 f"({', '.join(sorted(self.streams))}); watch one of them or try later")
            # One MP4 holds one stream at a time: the recorder goes to a new stream only when no other has it.
            recorder = self.recorder if not any(s.recorder for s in self.streams.values()) else None
            self.streams[name] = Stream(name, self, self.make_generator, recorder,
                                        command_queue=self.config.command_queue, pace=self.config.pace)
        return self.streams[name]

    def attach(self, name: str) -> tuple[Stream, Viewer]:
        """A new viewer of stream `name`. Raises ServeError at the viewer or stream limit."""
        if self.viewer_count() >= self.config.max_viewers:
            raise ServeError(f"the server already has its limit of {self.config.max_viewers} viewers; "
                             f"try again later")
        stream = self.stream(name)
        if stream.idle_timer is not None:  # somebody watches again
            stream.idle_timer.cancel()
            stream.idle_timer = None
        viewer = Viewer(self.config.queue_frames,
                        TokenBucket(self.config.commands_per_second, self.config.command_burst))
        stream.viewers.add(viewer)
        return stream, viewer

    def detach(self, stream: Stream, viewer: Viewer) -> None:
        stream.viewers.discard(viewer)
        viewer.cancel_deferred()
        if stream.viewers or self.streams.get(stream.name) is not stream:
            return
        if stream.state != "running":
            self._drop(stream)  # nobody watches and nothing is generated: free the slot now
        elif math.isfinite(self.config.idle_grace_s) and stream.idle_timer is None:
            stream.idle_timer = self.loop.call_later(self.config.idle_grace_s, self._expire, stream)

    def _expire(self, stream: Stream) -> None:
        stream.idle_timer = None
        if not stream.viewers and self.streams.get(stream.name) is stream:
            log.info("stream %r: nobody watched it for %g s: stopped", stream.name, self.config.idle_grace_s)
            self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        del self.streams[stream.name]
        self.loop.run_in_executor(None, stream.close)

    async def close(self) -> None:
        """Stop every stream's threads and finalise the recording (the generator finishes its chunk first)."""
        self._closed = True
        streams = list(self.streams.values())
        for s in streams:
            if s.idle_timer is not None:
                s.idle_timer.cancel()
        await asyncio.gather(*(asyncio.to_thread(s.close) for s in streams))
        if self.recorder is not None:
            self.recorder.close()
            log.info("recording finalised: %d frames", self.recorder.frames_written)
