"""The typed result of `rfrt inspect`, its JSON form (written atomically) and its short text summary."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field

__all__ = ["InspectConfig", "SecondCurves", "Seam", "Summary", "InspectReport", "atomic_write"]


@dataclass(frozen=True)
class InspectConfig:
    """Knobs of the analysis (the defaults are what the README documents).

    analysis_size: longer side, in pixels, of the frame that flow, colour and copy similarity are measured on.
    flow:          "farneback" or "dis".
    opening_s:     seconds whose mean motion is the stall reference.
    stall_fraction: motion below this fraction of the opening motion counts as stalled.
    min_still_s:   a stall must last at least this long to be reported.
    vde_chunks:    N, the equal parts the video is split into for the VDE sums.
    seam_floor:    px/frame floor of a seam's baseline (the median motion of the non-boundary frames within a
                   chunk of the boundary).
    """

    analysis_size: int = 256
    flow: str = "farneback"
    opening_s: float = 2.0
    stall_fraction: float = 0.25
    min_still_s: float = 1.0
    vde_chunks: int = 10
    seam_floor: float = 0.1

    def __post_init__(self):
        if isinstance(self.analysis_size, bool) or not isinstance(self.analysis_size, int) or self.analysis_size < 1:
            raise ValueError(f"analysis_size must be a positive int, got {self.analysis_size!r}")
        if self.flow not in ("farneback", "dis"):
            raise ValueError(f"flow must be 'farneback' or 'dis', got {self.flow!r}")
        for name in ("opening_s", "min_still_s", "seam_floor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.stall_fraction, (int, float)) and 0 < self.stall_fraction < 1):
            raise ValueError(f"stall_fraction must be in (0, 1), got {self.stall_fraction!r}")
        if isinstance(self.vde_chunks, bool) or not isinstance(self.vde_chunks, int) or self.vde_chunks < 2:
            raise ValueError(f"vde_chunks must be an int >= 2, got {self.vde_chunks!r}")


@dataclass(frozen=True)
class SecondCurves:
    """Per-second curves; index s covers frames [s * fps, (s + 1) * fps). None where a value is undefined
    (no flow in that second, frames too small for flow)."""

    time_s: tuple[float, ...]
    frames: tuple[int, ...]
    motion_mean: tuple[float | None, ...]  # px/frame, mean over pixels and frames
    motion_p95: tuple[float | None, ...]   # px/frame, per-frame 95th percentile over pixels, mean over frames
    copy_ssim: tuple[float, ...]           # SSIM of this second's mean grey image vs the first second's
    copy_psnr: tuple[float, ...]           # dB, capped at 100
    colour_de: tuple[float, ...]           # CIE76 dE of this second's mean L*a*b* vs the first second's
    sharpness: tuple[float, ...]           # mean Laplacian variance, grey-level^2


@dataclass(frozen=True)
class Seam:
    frame: int        # first frame of a chunk (the flow from frame - 1 crosses the boundary)
    time_s: float
    motion: float     # px/frame
    baseline: float   # px/frame: median motion of the other frames within a chunk of it
    ratio: float      # motion / max(baseline, seam_floor)


@dataclass(frozen=True)
class Summary:
    """Whole-stream numbers; None where undefined (see the README's metric table)."""

    motion_mean: float | None
    motion_early: float | None
    motion_late: float | None
    motion_late_early: float | None
    opening_motion: float | None
    stall_threshold: float | None
    stall_onset_s: float | None
    copy_ssim_late: float
    copy_psnr_late: float
    colour_de_late: float
    colour_de_max: float
    sharpness_early: float
    sharpness_late: float
    sharpness_decay: float | None  # late / early
    vde_chunks: int
    vde_sharpness: float | None
    vde_colour: float | None
    vde_motion: float | None
    seam_ratio_mean: float | None
    seam_ratio_max: float | None
    seam_worst_frame: int | None
    seam_baseline: float | None  # median of the seams' baselines, px/frame


@dataclass(frozen=True)
class InspectReport:
    fps: float
    frames: int
    height: int
    width: int
    analysis_size: tuple[int, int]  # (h, w) of the analysis frame
    chunk_frames: int | None
    first_chunk_frames: int | None
    chunk_source: str               # "argument", "metadata" or "none"
    complete: bool                  # False when the file ended in a decode error (frames up to it analysed)
    seconds: SecondCurves
    seams: tuple[Seam, ...]
    summary: Summary
    config: InspectConfig
    source: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["duration_s"] = self.duration_s
        return _finite(d)

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    def summary_text(self) -> str:
        s = self.summary

        def f(v, spec=".3f", unit=""):
            return "n/a" if v is None else f"{v:{spec}}{unit}"

        if s.stall_onset_s is None:
            stall = "none (still moving at the end)" if s.opening_motion is not None else "n/a"
        elif s.stall_threshold == 0:
            stall = "0 s (the stream never moves)"
        else:
            stall = f"{s.stall_onset_s:.2f} s"
        chunks = (f"{self.chunk_frames} frames ({self.chunk_source})" if self.chunk_frames else
                  "unknown (pass --chunk-frames for seams)")
        seams = ("n/a" if s.seam_ratio_mean is None else
                 f"mean {s.seam_ratio_mean:.2f}x, max {s.seam_ratio_max:.2f}x at frame {s.seam_worst_frame}")
        lines = [
            f"{self.source or 'frames'}: {self.frames} frames, {self.width}x{self.height}, {self.fps:.3f} fps, "
            f"{self.duration_s:.2f} s; chunk length {chunks}",
            f"motion      mean {f(s.motion_mean)} px/frame, early {f(s.motion_early)} -> late {f(s.motion_late)} "
            f"(late/early {f(s.motion_late_early, '.2f')})",
            f"stall onset {stall} (threshold {f(s.stall_threshold)} px/frame)",
            f"copy        late seconds vs first second: SSIM {s.copy_ssim_late:.3f}, PSNR {s.copy_psnr_late:.1f} dB",
            f"colour      dE late {s.colour_de_late:.2f}, max {s.colour_de_max:.2f}; "
            f"VDE({s.vde_chunks}) {f(s.vde_colour, '.2f')}",
            f"sharpness   late/early {f(s.sharpness_decay, '.3f')}; VDE({s.vde_chunks}) {f(s.vde_sharpness, '.3f')}",
            f"seams       {seams} (boundary flow / median flow elsewhere)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _finite(x):
    """JSON has no NaN / infinity: those become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: a reader (or a crash) never
    sees a half-written file and an existing file is replaced only by a complete one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # mkstemp makes the file 0600; the result gets the replaced file's mode, or the usual 0644.
    mode = os.stat(path).st_mode & 0o777 if os.path.isfile(path) else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
