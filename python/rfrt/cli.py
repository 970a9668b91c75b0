"""`rfrt generate | info | serve | inspect`: stream a video to an MP4, report the build, serve, diagnose a video.

Everything that can be checked before generating is checked first (prompts file, output path and container,
seed, device, model files), so a mistake costs seconds, not a half-generated video. During generation frames
are encoded as each chunk arrives into a partial file next to --out, which replaces --out only when the video
is complete (rfrt.video). Ctrl-C, SIGTERM and SIGHUP finalise the frames written so far and exit with
128 + the signal number; an error exits 1. Neither replaces an existing --out.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from rfrt.devices import DTYPE_NAMES

__all__ = ["main", "parse_prompts_file"]



class CLIError(Exception):
    """A usage error reported as `rfrt: error: ...` with exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP during `rfrt generate`: unwinds like Ctrl-C, so the video is finalised."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt():
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` for the duration (main thread only).

    SIGTERM is what `kill`, `timeout`, systemd, docker stop and job schedulers send, SIGHUP what a closed
    terminal sends: without this they end the process before the video's index is written. Only the first
    signal raises; later ones are ignored so that they cannot cut the finalisation short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parse_prompts_file(path: str | os.PathLike) -> dict[int, str]:
    """Read `CHUNK<tab or spaces>prompt` lines -> {chunk: prompt}. Blank lines and `#` comments are skipped.

    A line without a non-negative integer chunk and a prompt, or a chunk listed twice, is a CLIError naming the
    line number.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"cannot read prompts file {os.fspath(path)!r}: {err}") from None
    schedule: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(None, 1)
        where = f"{os.fspath(path)}:{number}"
        if not re.fullmatch(r"[0-9]+", parts[0]):  # str.isdigit() also takes '²', which int() refuses
            raise CLIError(f"{where}: expected 'CHUNK<tab>prompt' with CHUNK a non-negative integer, got {line!r}")
        if len(parts) < 2 or not parts[1].strip():
            raise CLIError(f"{where}: chunk {parts[0]} has no prompt text")
        chunk = int(parts[0])
        if chunk in schedule:
            raise CLIError(f"{where}: chunk {chunk} already has a prompt")
        schedule[chunk] = parts[1].strip()
    if not schedule:
        raise CLIError(f"prompts file {os.fspath(path)!r} lists no prompts")
    return schedule


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rfrt", description="Reward Forcing streaming video runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a video from a prompt, streamed to an MP4")
    gen.add_argument("prompt", nargs="?", help="text prompt (optional when --prompts sets chunk 0)")
    gen.add_argument("--model", help="model directory (rfrt.json or diffusers layout); default: embedded model")
    gen.add_argument("--checkpoint", help="DiT checkpoint replacing the model's (Reward Forcing / Self-Forcing .pt)")
    gen.add_argument("--use-ema", action="store_true", help="take the EMA generator of a Self-Forcing checkpoint")
    length = gen.add_mutually_exclusive_group()
    length.add_argument("--chunks", type=int, help="number of chunks to generate")
    length.add_argument("--seconds", type=float, help="video length in seconds (default 5)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="video.mp4",
                     help="output video, .mp4 (default video.mp4), .mov or .mkv; replaced only when complete")
    gen.add_argument("--prompts", help="file of 'CHUNK<tab>prompt' lines switching prompts at given chunks")
    gen.add_argument("--recache", action="store_true", help="re-cache the window under each new prompt")
    gen.add_argument("--init", metavar="FILE", help="continue this video or start from this image (MP4, PNG, ...): "
                                                  "its frames prime the stream's cache; --seconds / --chunks and "
                                                  "--prompts chunk numbers count what is generated after it")
    gen.add_argument("--init-frames", type=int, metavar="N", help="use the last N frames of --init (default: all)")
    gen.add_argument("--drop-init", action="store_true",
                     help="leave the --init frames out of the output (default: the output starts with them)")
    gen.add_argument("--height", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    gen.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="DiT dtype (default bf16 on CUDA, fp32 on CPU)")
    gen.add_argument("--backend", choices=("torch", "tensorrt"), default="torch",
                     help="torch (default) or tensorrt: every DiT forward on --engine (CUDA only)")
    gen.add_argument("--engine", help="TensorRT engine for --backend tensorrt (export/export_onnx.py of this model, "
                                      "then export/build_engine.py)")
    gen.add_argument("--inspect", action="store_true",
                     help="also write the long-stream report beside the video (OUT.inspect.json / .inspect.png)")
    sub.add_parser("info", help="print the build, torch, devices and the default model")
    from rfrt.serve.cli import add_arguments as add_serve_arguments  # no aiohttp import until `serve` runs
    add_serve_arguments(sub.add_parser("serve", help="stream live generation to a browser, prompts switchable"))
    from rfrt.inspect.cli import add_arguments as add_inspect_arguments
    add_inspect_arguments(sub.add_parser("inspect", help="long-stream diagnostics of a video: motion, stall, copy, "
                                                        "drift, seams"))
    return parser


def _chunks_for(args, generator, start: int = 0) -> int:
    """Chunks to generate for --chunks or --seconds (rounded up to whole chunks), in closed form: the decoder
    yields `first` frames for the first generated chunk (chunk `start`: after a primed context it is not chunk
    0) and `rest` for every later one."""
    from rfrt.video import MAX_FRAMES

    fps = generator.fps
    per_chunk = generator.policy.chunk_frames * generator.dit.config.patch_size[0]
    first = generator.decoder.frames_for(per_chunk, start=start * per_chunk)
    rest = generator.decoder.frames_for(per_chunk, start=(start + 1) * per_chunk)
    too_long = (f"at most {MAX_FRAMES} frames ({MAX_FRAMES / fps:.0f} s at {fps} fps) fit in one video file; for "
                "an endless stream use `rfrt serve` or the Python API (StreamGenerator)")
    if args.chunks is not None:
        if args.chunks <= 0:
            raise CLIError(f"--chunks must be positive, got {args.chunks}")
        chunks = args.chunks
    else:
        seconds = 5.0 if args.seconds is None else args.seconds
        if not math.isfinite(seconds) or not seconds > 0:
            raise CLIError(f"--seconds must be a finite number above 0, got {seconds}")
        if seconds * fps > MAX_FRAMES:
            raise CLIError(f"--seconds {seconds:g} is too long: {too_long}")
        wanted = math.ceil(seconds * fps)
        chunks = 1 if wanted <= first else 1 + -(-(wanted - first) // rest)
    if first + (chunks - 1) * rest > MAX_FRAMES:
        raise CLIError(f"--chunks {chunks} is too long ({first + (chunks - 1) * rest} frames): {too_long}")
    return chunks


def _inputs(args) -> list[str]:
    """Files the run reads; --out must be none of them (a typo there would destroy a checkpoint)."""
    files = [getattr(args, name, None) for name in ("checkpoint", "prompts", "engine", "init")]
    model = getattr(args, "model", None)
    if model is not None and Path(model).is_file():
        files.append(model)
    return [f for f in files if f is not None]


def _check_output(path: str, inputs=()) -> None:
    """Fail before loading the model when the video could not be written."""
    from rfrt.video import check_output

    try:
        check_output(path, inputs)
    except (OSError, ValueError) as err:
        raise CLIError(str(err)) from None


def _check_run_args(args) -> None:
    """Seed and device rules shared with the API and serve (rfrt.checks, rfrt.devices), as usage errors before
    the load."""
    from rfrt.checks import check_seed
    from rfrt.devices import default_device

    for option, check, value in (("--seed", check_seed, args.seed), ("--device", default_device, args.device)):
        try:
            check(value)
        except ValueError as err:
            raise CLIError(f"{option}: {err}") from None


def _output_note(writer, out: str, existed: bool) -> str:
    """Where the frames of an interrupted or failed run are (for the one-line message)."""
    unchanged = f"{out} was not changed" if existed else f"{out} was not created"
    if writer is None or writer.video_path is None:
        return f"no frame was written; {unchanged}"
    n = writer.frames_written
    if writer.video_path == writer.path:
        return f"the {n} frames written so far were finalised in {out}"
    return f"the {n} frames written so far were finalised in {writer.video_path} ({unchanged})"


def _check_engine(args) -> None:
    """Usage errors of --backend / --engine (exit 2); the generator checks the rest (CUDA, TensorRT, shapes)."""
    if args.backend == "tensorrt" and args.engine is None:
        raise CLIError("--backend tensorrt needs --engine PATH (a serialized engine from export/build_engine.py)")
    if args.backend != "tensorrt" and args.engine is not None:
        raise CLIError("--engine is used by --backend tensorrt; add --backend tensorrt")
    if args.engine is not None and not Path(args.engine).is_file():
        raise CLIError(f"engine {args.engine!r} does not exist (build it with export/build_engine.py)")


def _probe_init(args) -> tuple[int, int] | None:
    """Check --init before the model loads -> (H, W) of its first frame; None without --init."""
    if args.init is None:
        if args.init_frames is not None or args.drop_init:
            raise CLIError("--init-frames and --drop-init go with --init FILE")
        return None
    from rfrt.context import ContextError, probe

    if args.init_frames is not None and args.init_frames <= 0:
        raise CLIError(f"--init-frames must be positive, got {args.init_frames}")
    try:
        return probe(args.init)
    except ContextError as err:
        raise CLIError(f"--init: {err}") from None


def _read_init(args, generator):
    """The --init frames, brought to the stream's size as they are decoded: uint8 [T, H, W, 3] (or None)."""
    if args.init is None:
        return None
    from rfrt.context import MAX_CONTEXT_LATENT_FRAMES, ContextError, read_frames

    try:
        encoder = generator.decoder.encoder()
        most = encoder.frames_for(MAX_CONTEXT_LATENT_FRAMES)
        return read_frames(args.init, last=args.init_frames, max_frames=most, size=(generator.height, generator.width))
    except (ContextError, NotImplementedError) as err:
        raise CLIError(f"--init: {err}") from None


def _generate(args) -> int:
    from rfrt.inspect import rfrt_chunk_metadata
    from rfrt.runtime.generator import StreamGenerator
    from rfrt.text import validate_prompt
    from rfrt.video import Mp4Writer

    schedule = parse_prompts_file(args.prompts) if args.prompts else {}
    if args.prompt is not None:
        if 0 in schedule:
            raise CLIError("both a prompt argument and a chunk-0 line in --prompts: give one of them")
        schedule[0] = args.prompt
    if 0 not in schedule:
        raise CLIError("no prompt for chunk 0: pass a prompt or a '0<tab>prompt' line in --prompts")
    for chunk, prompt in schedule.items():
        try:
            validate_prompt(prompt)
        except ValueError as err:
            raise CLIError(f"prompt for chunk {chunk}: {err}") from None
    inputs = _inputs(args)
    _check_output(args.out, inputs)
    _check_engine(args)
    _check_run_args(args)
    if args.inspect:
        _check_inspect(args.out)
    source_hw = _probe_init(args)
    existed, writer = os.path.exists(args.out), None
    try:
        generator = StreamGenerator(args.model, checkpoint=args.checkpoint, use_ema=args.use_ema,
                                    device=args.device, dtype=args.dtype, height=args.height, width=args.width,
                                    backend=args.backend, engine=args.engine)
        from rfrt.context import ContextError, context_note

        init = _read_init(args, generator)
        try:  # before the writer opens the output: a context that cannot be used leaves the file as it was
            generator.reset(schedule[0], seed=args.seed, context=init)
        except ContextError as err:
            raise CLIError(f"--init: {err}") from None
        primed = generator.primed
        chunks = _chunks_for(args, generator, start=generator.chunk_index)
        late = sorted(c for c in schedule if c >= chunks)
        if late:
            raise CLIError(f"--prompts {args.prompts}: chunk {late[0]} is past the end of the run ({chunks} "
                           f"chunks, 0 .. {chunks - 1}); lengthen the run or drop the line")
        skip = primed.held_output_frames if primed is not None and args.drop_init else 0
        if primed is not None:
            note = context_note(source_hw, generator.height, generator.width)
            print(f"rfrt: primed from {args.init}: {primed.latents.shape[0]} latent frames ({primed.chunks} "
                  f"chunks as context, {primed.held_frames} held)" + (f"; {note}" if note else ""), file=sys.stderr)
        for chunk, prompt in schedule.items():  # encode every prompt now: a bad one fails before generation
            generator.text.encode(prompt)
        per_chunk = generator.policy.chunk_frames * generator.dit.config.patch_size[0]  # latent frames
        # The output's first chunk: chunk 0 (generated, or the context shown), else with --drop-init the first
        # generated chunk less its held context frames.
        first_out = (generator.decoder.frames_for(per_chunk, start=generator.chunk_index * per_chunk) - skip
                     if args.drop_init else generator.decoder.frames_for(per_chunk))
        chunk_meta = rfrt_chunk_metadata(generator.decoder.frames_for(per_chunk, start=per_chunk), first_out)
        writer = Mp4Writer(args.out, fps=generator.fps, metadata=chunk_meta, inputs=inputs)
        if writer.replaced_partial:
            print(f"rfrt: replacing {writer.partial_path}, the partial video of an earlier interrupted run",
                  file=sys.stderr)
        written = _stream(args, generator, writer, schedule, chunks, primed, skip)
    except BaseException as err:
        if not isinstance(err, CLIError):
            err.rfrt_output = _output_note(writer, args.out, existed)
        raise
    print(f"wrote {written} frames ({written / generator.fps:.2f} s at {generator.fps} fps) to {args.out}")
    if args.inspect:
        _inspect(args.out)
    return 0


def _stream(args, generator, writer, schedule: dict[int, str], chunks: int, primed, skip: int) -> int:
    """Generate `chunks` chunks into the writer (closed when complete, aborted otherwise) -> frames written.
    primed: the stream's context (its frames go first unless --drop-init); skip: held context frames left out
    of the first generated chunk."""
    from tqdm import tqdm

    per_chunk = generator.policy.chunk_frames * generator.dit.config.patch_size[0]  # latent frames
    with writer:  # __exit__: close() (rename over --out) when complete, abort() on an error or a signal
        try:
            first = generator.chunk_index * per_chunk
            total = generator.decoder.frames_for(chunks * per_chunk, start=first) - skip
            if primed is not None and not args.drop_init and primed.frames.shape[0]:
                writer.write(primed.frames)  # the context as the stream's decoder shows it
            with tqdm(total=total, unit="frame", desc="rfrt", dynamic_ncols=True) as bar:
                start = time.perf_counter()
                for index in range(chunks):
                    if index > 0 and index in schedule:
                        generator.set_prompt(schedule[index], recache=args.recache)
                    chunk = generator.step()
                    frames = chunk.frames[skip:] if index == 0 else chunk.frames
                    writer.write(frames)
                    bar.update(frames.shape[0])
                    bar.set_postfix(chunk=f"{index + 1}/{chunks}",
                                    fps=f"{writer.frames_written / (time.perf_counter() - start):.1f}")
                tail = generator.flush()
                if tail.shape[0]:
                    writer.write(tail)
        finally:
            written = writer.frames_written
    return written


def _check_inspect(out: str) -> None:
    """`--inspect`: its outputs and matplotlib are checked before generating, like the video's."""
    from rfrt.inspect.cli import UsageError, check_outputs, report_paths

    try:
        check_outputs(out, *report_paths(out))
    except UsageError as err:
        raise CLIError(str(err)) from None


def _inspect(out: str) -> None:
    """The same report as `rfrt inspect OUT`, read back from the finished MP4 (chunk length from its metadata)."""
    from rfrt.inspect import inspect_video
    from rfrt.inspect.cli import report_paths, write_outputs

    report = inspect_video(out, progress=True)
    print(report.summary_text())
    json_path, plot_path = report_paths(out)
    write_outputs(report, json_path, plot_path)
    print(f"wrote the inspect report to {json_path} and {plot_path}")


def _info() -> int:
    import torch

    import rfrt
    from rfrt.model_dir import default_model_path

    try:
        build = rfrt.build_info()
    except ImportError as err:
        build = f"compiled core not available ({err})"
    print(f"rfrt {rfrt.__version__}")
    print(f"build: {build}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    print(f"devices: {', '.join(devices)}")
    default = default_model_path()
    print(f"default model: {default.parent if default else 'not installed (pass --model DIR)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rfrt` command. Returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":  # the server handles its signals in its event loop
            from rfrt.serve.cli import main as serve_main
            return serve_main(args)
        if args.command == "info":
            return _info()
        if args.command == "inspect":
            from rfrt.inspect.cli import main as inspect_main
            return inspect_main(args)
        with _signals_interrupt():
            return _generate(args)
    except CLIError as err:
        print(f"rfrt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        where = getattr(err, "rfrt_output", None) or "no frame was written"
        print(f"rfrt: interrupted by {signal.Signals(signum).name}; {where}", file=sys.stderr)
        return 128 + int(signum)
    except Exception as err:  # noqa: BLE001 - one line for the user, not a traceback, with a non-zero status
        print(f"rfrt: error: {type(err).__name__}: {err}", file=sys.stderr)
        if getattr(err, "rfrt_output", None):
            print(f"rfrt: {err.rfrt_output}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
