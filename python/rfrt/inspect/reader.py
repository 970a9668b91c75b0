"""Streaming a video file into the analysis: any video PyAV opens, one decoded frame at a time.

Bad input is one `InspectError` naming the file and the problem (missing, a directory, not a video, no video
stream, no decodable frame). A file that breaks off mid-stream (a truncated or corrupt tail) is analysed up to
the last good frame and the report says so (`complete = False` and a note).

rfrt's own MP4s carry their chunk length in the container's `comment` tag, e.g.
`rfrt chunk_frames=12 first_chunk_frames=9` (`rfrt_chunk_metadata` builds it, `read_chunk_metadata` reads it),
so seams are found without `--chunk-frames`.
"""
from __future__ import annotations

import os
import re
from fractions import Fraction
from typing import Iterator

import numpy as np

from .analyzer import StreamAnalyzer
from .report import InspectConfig, InspectReport

__all__ = ["InspectError", "VideoFrames", "inspect_video", "rfrt_chunk_metadata", "read_chunk_metadata"]

_TAG = "comment"
_PATTERN = re.compile(r"^rfrt(?:\s+\w+=\d+)+\s*$")


class InspectError(Exception):
    """A video that cannot be inspected, with the reason (shown to the user as one line)."""


def rfrt_chunk_metadata(chunk_frames: int, first_chunk_frames: int | None = None) -> dict[str, str]:
    """Container metadata recording a generated video's chunk length (frames per chunk; the first may differ)."""
    first = chunk_frames if first_chunk_frames is None else first_chunk_frames
    return {_TAG: f"rfrt chunk_frames={int(chunk_frames)} first_chunk_frames={int(first)}"}


def read_chunk_metadata(metadata: dict[str, str]) -> tuple[int, int] | None:
    """(chunk_frames, first_chunk_frames) from container metadata written by rfrt, else None."""
    text = (metadata or {}).get(_TAG, "").strip()
    if not _PATTERN.match(text):
        return None
    fields = dict(token.split("=", 1) for token in text.split()[1:])
    try:
        chunk = int(fields["chunk_frames"])
        first = int(fields.get("first_chunk_frames", chunk))
    except (KeyError, ValueError):
        return None
    return (chunk, first) if chunk > 0 and first > 0 else None


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InspectError("reading video files needs PyAV: pip install 'rfrt[inspect]'") from e
    return av


class VideoFrames:
    """The first video stream of a file as uint8 RGB frames [H, W, 3], decoded one at a time.

    Attributes after opening: fps (Fraction), height, width, total (frame count from the container, None when
    it does not say), chunk (read_chunk_metadata of the container, or None). After iterating: frames_read,
    error (None, or why decoding stopped before the end).
    """

    def __init__(self, path: str | os.PathLike):
        av = _import_av()
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise InspectError(f"{self.path!r} does not exist")
        if os.path.isdir(self.path):
            raise InspectError(f"{self.path!r} is a directory, not a video")
        if os.path.getsize(self.path) == 0:
            raise InspectError(f"{self.path!r} is empty (0 bytes)")
        try:
            self._container = av.open(self.path)
        except PermissionError as err:
            raise InspectError(f"cannot read {self.path!r}: {err.strerror or err}") from None
        except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
            raise InspectError(f"cannot open {self.path!r} as a video ({_reason(err)}); not a video, or a "
                               "truncated / unfinished file") from None
        try:
            if not self._container.streams.video:
                raise InspectError(f"{self.path!r} has no video stream")
            self._stream = stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate or rate <= 0:
                raise InspectError(f"{self.path!r}: the video stream has no frame rate")
            self.fps = Fraction(rate)
            self.height, self.width = stream.codec_context.height, stream.codec_context.width
            self._listed = stream.frames or None  # from the container's index (MP4: exact), if it has one
            self.total = self._listed
            if self.total is None and stream.duration and stream.time_base:
                self.total = round(float(stream.duration * stream.time_base * self.fps)) or None
            self.chunk = read_chunk_metadata(dict(self._container.metadata)) or \
                read_chunk_metadata(dict(stream.metadata))
        except BaseException:
            self._container.close()
            raise
        self.frames_read = 0
        self.error: str | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _import_av()
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
                self.frames_read += 1
        except (av.FFmpegError, ValueError) as err:
            self.error = f"decoding stopped after {self.frames_read} frames: {_reason(err)}"
            return
        if self._listed and self.frames_read < self._listed:
            self.error = (f"the container lists {self._listed} frames but only {self.frames_read} decoded "
                          "(a truncated file?)")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoFrames":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.split(": '", 1)[0].strip() or type(err).__name__


def inspect_video(path: str | os.PathLike, chunk_frames: int | None = None, first_chunk_frames: int | None = None,
                  config: InspectConfig | None = None, progress: bool = False) -> InspectReport:
    """Long-stream diagnostics of a video file (see rfrt.inspect), streamed in bounded memory.

    chunk_frames / first_chunk_frames: the generator's chunk length for the seam metric; by default taken from
    rfrt's container metadata when present, else seams are skipped. progress: a tqdm bar on stderr.
    """
    with VideoFrames(path) as video:
        source = "argument"
        if chunk_frames is None and video.chunk is not None:
            chunk_frames, first_chunk_frames = video.chunk
            source = "metadata"
        analyzer = StreamAnalyzer(video.fps, config)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=video.total, unit="frame", desc=f"inspect {os.path.basename(video.path)}",
                       dynamic_ncols=True, leave=False)
        try:
            for frame in video:
                try:
                    analyzer.add(frame)
                except ValueError as err:  # e.g. the picture size changes mid-stream
                    raise InspectError(f"{video.path!r}: {err}") from None
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if analyzer.frames_seen == 0:
            why = f": {video.error}" if video.error else ""
            raise InspectError(f"{video.path!r} has no decodable video frames{why}")
        notes = [f"{video.error}; the report covers the frames before it"] if video.error else []
        return analyzer.finish(chunk_frames, first_chunk_frames, chunk_source=source, complete=video.error is None,
                               source=video.path, notes=notes)
