"""The `rfrt serve` command line: arguments, model loading (once, shared by the streams), the recording."""
from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import logging
import sys

from rfrt.devices import DTYPE_NAMES

log = logging.getLogger("rfrt.serve")

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory (rfrt.json or diffusers layout); default: embedded model")
    parser.add_argument("--checkpoint", help="DiT checkpoint replacing the model's (Reward Forcing / Self-Forcing .pt)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; anything beyond loopback needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--token", help="access token: the page must be opened as /?token=TOKEN")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests for this Host name (repeatable; '*' any, needs --token); by "
                             "default only the --host address, localhost, 127.0.0.1 and [::1]")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="also let the page at ORIGIN (e.g. https://app.example) open the WebSocket "
                             "(repeatable; '*' any, needs --token); by default only the server's own page")
    parser.add_argument("--max-streams", type=int, default=1, help="streams that may exist at once (default 1)")
    parser.add_argument("--max-viewers", type=int, default=32,
                        help="WebSocket clients at once, all streams together (default 32)")
    parser.add_argument("--commands-per-second", type=float, default=10.0,
                        help="commands each client may send per second, 20 at once (default 10); over it a "
                             "prompt waits and the latest prompt wins, other commands are refused")
    parser.add_argument("--idle-grace", type=float, default=30.0, metavar="SECONDS",
                        help="stop a running stream nobody watches after this long (default 30; inf: never)")
    parser.add_argument("--pace", action=argparse.BooleanOptionalAction, default=True,
                        help="generate no faster than the video's frame rate, like a camera (default); "
                             "--no-pace runs flat out (recording, benchmarks; viewers drop what they cannot show)")
    parser.add_argument("--queue-frames", type=int, default=8,
                        help="frames queued per viewer before a slow viewer's oldest frames are dropped")
    parser.add_argument("--send-buffer-bytes", type=int,
                        help="cap each viewer's socket buffers (lower: a stalled viewer drops frames sooner)")
    parser.add_argument("--record", metavar="OUT.mp4",
                        help="also record the (first) stream to this video (.mp4, .mov, .mkv); written to "
                             "OUT.partial.mp4 and renamed over OUT.mp4 when the server stops")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="DiT dtype (default bf16 on CUDA, fp32 on CPU)")


def _generator_factory(args):
    """Load the model once; each stream gets its own StreamGenerator (own cache, own decoder state) sharing the
    read-only DiT and text encoder weights."""
    from rfrt.devices import default_device, resolve_dtype
    from rfrt.model_dir import ModelDirError, default_model_path, load_model_dir
    from rfrt.runtime.generator import StreamGenerator

    device = default_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    path = args.model or default_model_path()
    if path is None:
        raise ModelDirError("no --model given and the embedded default model is not installed")
    bundle = load_model_dir(path, checkpoint=args.checkpoint, device=device, dtype=dtype)

    def make_generator():
        own = dataclasses.replace(bundle, decoder=copy.deepcopy(bundle.decoder))
        return StreamGenerator(own, device=device, dtype=dtype, height=args.height, width=args.width)

    # Built once now so that a bad --height/--width fails at startup, not on the first start.
    probe = make_generator()
    return make_generator, probe.fps


def main(args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C / SIGTERM. Returns the exit status (0 after a clean shutdown)."""
    from rfrt.video import Mp4Writer, check_output

    try:
        from .app import ServeConfig, serve
    except ImportError as err:
        print(f"rfrt serve: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = ServeConfig(host=args.host, port=args.port, token=args.token,
                             allowed_hosts=tuple(args.allow_host), allowed_origins=tuple(args.allow_origin),
                             max_streams=args.max_streams, max_viewers=args.max_viewers,
                             queue_frames=args.queue_frames, send_buffer_bytes=args.send_buffer_bytes,
                             commands_per_second=args.commands_per_second, idle_grace_s=args.idle_grace,
                             pace=args.pace)
        inputs = [args.checkpoint]
        if args.record:  # before the model loads; the file itself is replaced only when the server stops
            check_output(args.record, inputs)
        make_generator, fps = _generator_factory(args)
        recorder = Mp4Writer(args.record, fps=fps, inputs=inputs) if args.record else None
    except (ValueError, OSError) as err:
        print(f"rfrt serve: error: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(make_generator, config, recorder=recorder))
    except OSError as err:  # e.g. the port is taken
        print(f"rfrt serve: error: cannot listen on {config.host}:{config.port}: {err}", file=sys.stderr)
        if recorder is not None:
            recorder.close()
        return 1
    return 0
