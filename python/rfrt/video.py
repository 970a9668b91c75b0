"""Frame sinks: an incremental H.264 MP4 writer (PyAV).

Generation can run for minutes, so the writer is built to fail early and never lose what was made: the output
path is checked (and created) when the writer is constructed, before any frame is generated; frames are encoded
and muxed as they arrive; and the file is finalised (encoder flushed, MP4 index written) on close, on an
exception and on KeyboardInterrupt, so an interrupted run leaves a playable video of the frames written so far.
"""
from __future__ import annotations

import os
import warnings
from fractions import Fraction

import numpy as np

__all__ = ["Mp4Writer", "check_writable"]


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Mp4Writer needs PyAV (pip install 'rfrt[video]')") from e
    return av


def check_writable(path: str) -> None:
    """Fail now, with a message naming the path, rather than after generating the first frames.

    Opening the file is the only reliable test (permissions, read-only mounts, ACLs); a file that did not exist
    before is removed again, so a failed run leaves nothing behind.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise FileNotFoundError(f"output directory {parent!r} {what}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"output path {path!r} is a directory")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write output video {path!r}: {e.strerror or e}") from e
    if not existed:
        os.remove(path)


class Mp4Writer:
    """Writes uint8 frames [T, H, W, 3] (RGB) to an H.264 / yuv420p MP4, incrementally.

    path:          output file; its directory must exist; an existing file is overwritten.
    fps:           frame rate (16, the Wan2.1 rate, by default); an int or a Fraction.
    crf:           x264 constant-rate factor (0 lossless .. 51; 18 is visually near-lossless).
    codec_options: extra libx264 options (e.g. {"preset": "veryfast", "tune": "zerolatency"}; zerolatency
                   makes packets, and so the file, appear from the first frame instead of after x264's
                   look-ahead).
    metadata:      container tags (e.g. {"comment": ...}; rfrt.inspect.rfrt_chunk_metadata records the chunk
                   length there, so `rfrt inspect` finds the chunk seams).

    Use as a context manager, or call close(). Width and height are fixed by the first batch and must be even
    (yuv420p subsamples chroma 2x2). If no frame was ever written, close() removes the empty file.
    """

    def __init__(self, path: str | os.PathLike, fps: int | Fraction = 16, *, crf: int = 18,
                 codec_options: dict[str, str] | None = None, metadata: dict[str, str] | None = None):
        if isinstance(fps, bool) or not isinstance(fps, (int, Fraction)) or fps <= 0:
            raise ValueError(f"Mp4Writer: fps must be a positive int or Fraction, got {fps!r}")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"Mp4Writer: crf must be an int in [0, 51], got {crf!r}")
        self._av = _import_av()
        self.path = os.fspath(path)
        self.fps = fps
        self._options = {"crf": str(crf), **{str(k): str(v) for k, v in (codec_options or {}).items()}}
        check_writable(self.path)
        open(self.path, "wb").close()  # the file exists from now on: a reader sees the video appear and grow
        # flush_packets: without it the muxed bytes sit in PyAV's output buffer until close, so the file on disk
        # would not grow while generating.
        self._container = self._av.open(self.path, mode="w", options={"flush_packets": "1"})
        self._container.metadata.update({str(k): str(v) for k, v in (metadata or {}).items()})  # before the header
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W)
        self._frames_written = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._frames_written

    @property
    def closed(self) -> bool:
        return self._closed

    def _validate(self, frames) -> np.ndarray:
        if hasattr(frames, "detach"):  # a torch tensor; torch is not needed to write numpy frames
            frames = frames.detach().cpu().numpy()
        if not isinstance(frames, np.ndarray):
            raise TypeError(f"Mp4Writer.write: expected a uint8 array or tensor [T, H, W, 3], "
                            f"got {type(frames).__name__}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Mp4Writer.write: frames must be [T, H, W, 3] (RGB, channels last), "
                             f"got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"Mp4Writer.write: frames must be uint8, got {frames.dtype} "
                             "(rfrt.decoders.to_uint8_frames converts [-1, 1] floats)")
        _, h, w, _ = frames.shape
        if h == 0 or w == 0 or h % 2 or w % 2:
            raise ValueError(f"Mp4Writer.write: H.264 yuv420p needs even, non-zero height and width, got {h}x{w}")
        if self._size is not None and (h, w) != self._size:
            raise ValueError(f"Mp4Writer.write: frame size {h}x{w} differs from the video's "
                             f"{self._size[0]}x{self._size[1]}")
        return np.ascontiguousarray(frames)

    def write(self, frames) -> None:
        """Encode and mux a batch of frames: uint8 [T, H, W, 3] RGB (numpy array or CPU/GPU tensor)."""
        if self._closed:
            raise RuntimeError(f"Mp4Writer.write: writer for {self.path!r} is closed")
        frames = self._validate(frames)
        if self._stream is None:
            self._size = frames.shape[1:3]
            stream = self._container.add_stream("libx264", rate=self.fps, options=self._options)
            stream.height, stream.width = self._size
            stream.pix_fmt = "yuv420p"
            self._stream = stream
        for frame in frames:
            vf = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self._frames_written += 1

    def close(self) -> None:
        """Flush the encoder and write the MP4 index. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
            if self._frames_written == 0 and os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
                os.remove(self.path)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        # Finalise what was written (exception or KeyboardInterrupt), without masking the original error.
        try:
            self.close()
        except Exception as close_err:  # noqa: BLE001 - reported, the original exception propagates
            warnings.warn(f"Mp4Writer: finalising {self.path!r} after {exc_type.__name__} failed: {close_err}")
        return False
