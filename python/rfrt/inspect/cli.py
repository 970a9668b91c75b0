"""The `rfrt inspect` command line, and the `--inspect` step of `rfrt generate`.

Outputs are checked before the (possibly long) analysis: a missing matplotlib for --plot, an output directory
that does not exist, an output path that is the input video. JSON and PNG are written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "main", "report_paths", "check_outputs", "write_outputs"]


class UsageError(Exception):
    """Reported as `rfrt: error: ...`, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="video file (anything PyAV / FFmpeg opens)")
    parser.add_argument("--chunk-frames", type=int, metavar="N",
                        help="frames per generated chunk, for the seam metric (default: from rfrt's metadata)")
    parser.add_argument("--first-chunk-frames", type=int, metavar="M",
                        help="frames of the first chunk when it differs (e.g. 9 for a Wan VAE's 1 + 4 * 2)")
    parser.add_argument("--json", metavar="OUT.json", help="write the per-second curves and the summary as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write the curves as a PNG plot (needs matplotlib)")
    parser.add_argument("--analysis-size", type=int, default=256, metavar="PX",
                        help="longer side of the frame flow / colour / copy are measured on (default 256)")
    parser.add_argument("--flow", choices=("farneback", "dis"), default="farneback",
                        help="optical flow (default farneback)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def report_paths(video: str) -> tuple[str, str]:
    """Where `rfrt generate --inspect` puts the report: beside the video, VIDEO.inspect.json / .inspect.png."""
    stem = video[:-4] if video.lower().endswith(".mp4") else video
    return stem + ".inspect.json", stem + ".inspect.png"


def check_outputs(video: str, json_path: str | None, plot_path: str | None) -> None:
    """Fail before the analysis (UsageError) when an output could not be written."""
    from rfrt.video import check_writable

    if plot_path is not None:
        from .plot import require_matplotlib
        try:
            require_matplotlib()
        except ImportError as err:
            raise UsageError(str(err)) from None
    for path in (json_path, plot_path):
        if path is None:
            continue
        if os.path.exists(video) and os.path.abspath(path) == os.path.abspath(video):
            raise UsageError(f"output {path!r} is the input video")
        try:
            check_writable(path)
        except OSError as err:
            raise UsageError(str(err)) from None
    if json_path is not None and plot_path is not None and os.path.abspath(json_path) == os.path.abspath(plot_path):
        raise UsageError("--json and --plot name the same file")


def write_outputs(report, json_path: str | None, plot_path: str | None) -> None:
    if json_path is not None:
        report.write_json(json_path)
    if plot_path is not None:
        from .plot import plot_report
        plot_report(report, plot_path)


def main(args: argparse.Namespace) -> int:
    """Run `rfrt inspect`; returns the exit status (0 ok, 1 the video cannot be inspected, 2 usage)."""
    from .reader import InspectError, inspect_video
    from .report import InspectConfig

    try:
        for name in ("chunk_frames", "first_chunk_frames"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if args.first_chunk_frames is not None and args.chunk_frames is None:
            raise UsageError("--first-chunk-frames needs --chunk-frames")
        try:
            config = InspectConfig(analysis_size=args.analysis_size, flow=args.flow)
        except ValueError as err:
            raise UsageError(str(err).replace("analysis_size", "--analysis-size")) from None
        check_outputs(args.video, args.json, args.plot)
        report = inspect_video(args.video, args.chunk_frames, args.first_chunk_frames, config,
                               progress=not args.no_progress)
    except UsageError as err:
        print(f"rfrt: error: {err}", file=sys.stderr)
        return 2
    except InspectError as err:
        print(f"rfrt: error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:  # OpenCV missing: the message names the extra to install
        print(f"rfrt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rfrt: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(report.summary_text())
    write_outputs(report, args.json, args.plot)
    for what, path in (("report", args.json), ("plot", args.plot)):
        if path:
            print(f"wrote {what} to {path}")
    if not report.complete:
        print(f"rfrt: warning: {report.notes[0]}", file=sys.stderr)
    return 0
