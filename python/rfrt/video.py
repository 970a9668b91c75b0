"""Frame sinks: an incremental H.264 video writer (PyAV) that never destroys the file at its output path.

Generation can run for minutes, so the writer fails early and never loses what was made (docs/design.md,
"Output files"):
- the path is checked when the writer is constructed, before any frame is generated: a known container
  (.mp4, .m4v, .mov, .mkv), an existing directory, not a directory itself, not one of the run's inputs;
- frames go to a partial file next to the target, `<stem>.partial<ext>` (`video.mp4` -> `video.partial.mp4`),
  locked while it is written; the target is replaced (atomic rename) only when the video is complete;
- the partial file is a fragmented MP4 (a self-contained fragment about every second), so even a SIGKILL or a
  power loss leaves it playable up to its last fragment; Matroska is playable when cut short by its nature;
- an interrupted or failed run (exception, KeyboardInterrupt, a caught signal) finalises the partial file and
  never replaces an existing target: the video stays in the partial file, or moves to the target when there
  was none. The next writer for the same target replaces a partial file that no live writer holds.
"""
from __future__ import annotations

import errno
import os
import stat
from fractions import Fraction

import numpy as np

try:  # POSIX: the partial file is locked while written, so two runs cannot write one target
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Mp4Writer", "check_output", "check_writable", "partial_path", "CONTAINERS", "MAX_FRAMES",
           "OutputPathError"]

# Extension -> FFmpeg muxer. Only containers that hold H.264 and that players open; the name is the contract,
# so a typo such as `--out notes.txt` is refused instead of guessed.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# x264 counts input frames in a C int and MP4 sample tables in 32-bit fields: one file holds fewer frames.
MAX_FRAMES = 2**31 - 1
# Fragmented MP4: an empty moov up front, then a moof+mdat fragment about every second (frag_duration in us).
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000"}


class OutputPathError(ValueError):
    """An output path the writer refuses (unknown container, an input of the run, a path another run writes)."""


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Mp4Writer needs PyAV (pip install 'rfrt[video]')") from e
    return av


def partial_path(path: str | os.PathLike) -> str:
    """Where the video for `path` is written until it is complete: `dir/video.mp4` -> `dir/video.partial.mp4`.

    Symbolic links are followed, so the partial file sits on the target's file system (the rename is atomic).
    """
    real = os.path.realpath(os.fspath(path))
    stem, ext = os.path.splitext(real)
    return f"{stem}.partial{ext}"


def _container(path: str) -> str:
    ext = os.path.splitext(path)[1]
    if ext.lower() in CONTAINERS:
        return CONTAINERS[ext.lower()]
    known = ", ".join(CONTAINERS)
    what = "has no extension" if not ext else f"has the extension {ext!r}, which is not a video container"
    raise OutputPathError(f"output video {path!r} {what}: name it with one of {known} (e.g. video.mp4); "
                          "nothing was written")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _lock(fd: int) -> bool:
    """Take the writer's lock on an open partial file; False when a live writer holds it."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _partial_is_live(partial: str) -> bool:
    """True when another writer (this process or another) holds the partial file's lock."""
    try:
        fd = os.open(partial, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _lock(fd)
    finally:
        os.close(fd)  # closing drops a lock taken through this descriptor


def _check_path(path: str, what: str) -> None:
    """The checks every output file shares: a name, an existing directory, not a directory, and an existing
    file that can be written (append mode, no write: changes neither content nor modification time)."""
    if not path:
        raise FileNotFoundError(f"the {what} path is empty")
    if path.endswith(os.sep) or os.path.isdir(path):
        raise IsADirectoryError(f"output path {path!r} is a directory; name a file such as "
                                f"{os.path.join(path, 'video.mp4' if what == 'output video' else 'out')!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        state = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise FileNotFoundError(f"output directory {parent!r} {state}")
    if os.path.exists(path):
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise PermissionError(f"cannot write {what} {path!r}: {e.strerror or e}") from e


def _probe_create(path: str, what: str, shown: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise PermissionError(f"cannot write {what} {shown!r}: {e.strerror or e}") from e
    os.close(fd)
    os.remove(path)


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, naming the path, when any output file (a report, a plot) could not be written there.

    Opening is the only reliable test (permissions, read-only mounts, ACLs); a file created to test it is
    removed again, and an existing file is not changed.
    """
    path = os.fspath(path)
    _check_path(path, "output file")
    if not os.path.exists(path):
        _probe_create(path, "output file", path)


def check_output(path: str | os.PathLike, inputs=()) -> None:
    """Fail now, with a message naming the path, rather than after the model loads or the first frames.

    Checks the container (from the extension), the directory, that the path is neither a directory nor one of
    `inputs` (files the run reads, e.g. its checkpoint), that an existing target and the directory can be
    written, and that no live writer holds the partial file. Writes nothing and changes no file.
    """
    path = os.fspath(path)
    if not path:
        raise OutputPathError("the output video path is empty")
    _check_path(path, "output video")
    _container(path)
    for source in inputs:
        if source is not None and _same_file(path, os.fspath(source)):
            raise OutputPathError(f"output video {path!r} is also an input of this run ({os.fspath(source)!r}); "
                                  "writing it would destroy the input: choose another --out")
    partial = partial_path(path)
    if os.path.isdir(partial):
        raise IsADirectoryError(f"the partial file of {path!r}, {partial!r}, is a directory; move it away")
    if os.path.exists(partial):
        if _partial_is_live(partial):
            raise OutputPathError(f"another writer is writing {path!r} right now (it holds {partial!r}); "
                                  "wait for it or choose another --out")
        return  # a stale partial file of an interrupted run: the writer replaces it
    _probe_create(partial, "output video", path)


class Mp4Writer:
    """Writes uint8 frames [T, H, W, 3] (RGB) to an H.264 / yuv420p video, incrementally and atomically.

    path:          output file: .mp4 / .m4v / .mov (fragmented MP4) or .mkv (Matroska); its directory must
                   exist. It is replaced only by a complete video (close() without an error); until then the
                   frames are in `partial_path(path)` (see the module docstring).
    fps:           frame rate (16, the Wan2.1 rate, by default); an int or a Fraction.
    crf:           x264 constant-rate factor (0 lossless .. 51; 18 is close to lossless at common sizes; at
                   16x16 px chroma subsampling alone costs ~20/255).
    codec_options: extra libx264 options (e.g. {"preset": "veryfast", "tune": "zerolatency"}; zerolatency
                   makes packets appear from the first frame instead of after x264's look-ahead).
    inputs:        files the run reads; an output path equal to one of them is refused.
    metadata:      container tags (e.g. {"comment": ...}; rfrt.inspect.rfrt_chunk_metadata records the chunk
                   length there, so `rfrt inspect` finds the chunk seams).
    fragmented:    write MP4 / MOV as fragments (default True: playable after a kill; players and browsers
                   open it); False writes one index at the end.

    Use as a context manager, or call close() (complete) / abort() (interrupted). Width and height are fixed by
    the first batch and must be even (yuv420p subsamples chroma 2x2). No frame written: no file, the target is
    left as it was. `video_path` says where the video is after closing.
    """

    def __init__(self, path: str | os.PathLike, fps: int | Fraction = 16, *, crf: int = 18,
                 codec_options: dict[str, str] | None = None, metadata: dict[str, str] | None = None, inputs=(),
                 fragmented: bool = True):
        if isinstance(fps, bool) or not isinstance(fps, (int, Fraction)) or fps <= 0:
            raise ValueError(f"Mp4Writer: fps must be a positive int or Fraction, got {fps!r}")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"Mp4Writer: crf must be an int in [0, 51], got {crf!r}")
        self._av = _import_av()
        self.path = os.fspath(path)
        self.fps = fps
        self._options = {"crf": str(crf), **{str(k): str(v) for k, v in (codec_options or {}).items()}}
        check_output(self.path, inputs)
        self._format = _container(self.path)
        self._target = os.path.realpath(self.path)
        self.partial_path = partial_path(self.path)
        self.replaced_partial = False  # True when a stale partial file of an interrupted run was replaced
        self._fd = self._create_partial()
        # flush_packets: without it the muxed bytes sit in PyAV's output buffer until close, so the file on disk
        # would not grow while generating.
        options = {"flush_packets": "1"}
        if fragmented and self._format in ("mp4", "mov"):
            options.update(_FRAGMENTED)
        try:
            self._container = self._av.open(self.partial_path, mode="w", format=self._format, options=options)
        except BaseException:
            os.close(self._fd)
            self._discard()
            raise
        self._container.metadata.update({str(k): str(v) for k, v in (metadata or {}).items()})  # before the header
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W)
        self._frames_written = 0
        self._closed = False
        self.video_path: str | None = None  # where the video is once closed (None: no frame, no file)

    def _create_partial(self) -> int:
        """Create and lock the partial file; a stale one (no live writer) is replaced."""
        for attempt in range(2):
            try:
                fd = os.open(self.partial_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                if attempt or _partial_is_live(self.partial_path):
                    raise OutputPathError(f"another writer is writing {self.path!r} right now (it holds "
                                          f"{self.partial_path!r}); wait for it or choose another path") from None
                os.remove(self.partial_path)
                self.replaced_partial = True
                continue
            except OSError as e:
                raise PermissionError(f"cannot write output video {self.path!r} (creating "
                                      f"{self.partial_path!r}): {e.strerror or e}") from e
            if not _lock(fd):  # pragma: no cover - a writer raced us between create and lock
                os.close(fd)
                raise OutputPathError(f"another writer is writing {self.path!r} right now")
            return fd
        raise AssertionError("unreachable")  # pragma: no cover

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
        if self._frames_written + frames.shape[0] > MAX_FRAMES:
            raise ValueError(f"Mp4Writer.write: one video file holds at most {MAX_FRAMES} frames")
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
        """The video is complete: flush the encoder, finalise the file and rename it over the target.
        Idempotent."""
        self._finish(complete=True)

    def abort(self) -> None:
        """The run was interrupted or failed: finalise the frames written so far without replacing an existing
        target (the video stays in `partial_path`, or moves to the target if there is none). Idempotent."""
        self._finish(complete=False)

    def _finish(self, complete: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            try:
                if self._stream is not None:
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
            finally:
                self._container.close()
            if self._frames_written == 0:
                self._discard()
                return
            os.fsync(self._fd)  # the data is on disk before the rename makes it the target
            if complete:
                self._match_mode()
                os.replace(self.partial_path, self._target)
                self.video_path = self.path
            else:
                self.video_path = self._keep_partial()
        except BaseException:
            if self.video_path is None and os.path.exists(self.partial_path) and self._frames_written:
                self.video_path = self.partial_path
            raise
        finally:
            os.close(self._fd)

    def _match_mode(self) -> None:
        """A replaced file keeps its permission bits; a new one keeps the partial file's, which os.open gave
        the umask's mode (0644 usually)."""
        try:
            mode = stat.S_IMODE(os.stat(self._target).st_mode)
        except FileNotFoundError:
            return
        os.chmod(self.partial_path, mode)

    def _keep_partial(self) -> str:
        """Interrupted: move the video to the target only where that replaces nothing."""
        self._match_mode()
        try:
            os.link(self.partial_path, self._target)  # fails if the target exists: never clobbers
        except OSError:
            return self.partial_path
        os.remove(self.partial_path)
        return self.path

    def _discard(self) -> None:
        try:
            os.remove(self.partial_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        # Finalise what was written (exception, KeyboardInterrupt, a signal), without masking the original error.
        try:
            self.abort()
        except Exception as close_err:  # noqa: BLE001 - reported with the original exception, which propagates
            exc.add_note(f"Mp4Writer: finalising {self.partial_path!r} failed: {close_err}")
        if self.video_path is not None:
            exc.add_note(f"Mp4Writer: the {self._frames_written} frames written so far are in {self.video_path!r}")
        return False
