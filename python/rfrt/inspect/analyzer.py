"""The streaming analysis: frames in, one at a time; an `InspectReport` out.

Memory is bounded by the frame size, not the stream length: per frame only a few floats are kept (its motion,
colour and sharpness), plus two mean grey images (the first second's and the current second's) and the previous
grey frame for the flow. An hour at 30 fps keeps ~108k frames x 6 floats, about 5 MB.
"""
from __future__ import annotations

import math
from array import array
from fractions import Fraction
from typing import Iterable

import numpy as np

from .metrics import FrameMeasurer, psnr, ssim
from .report import InspectConfig, InspectReport, Seam, SecondCurves, Summary
from .summary import (STILL_MOTION, chunk_boundaries, delta_e, equal_chunks, late_early, seam_ratios, stall_onset,
                      vde, vde_colour)

__all__ = ["StreamAnalyzer", "inspect_frames"]


def _as_fps(fps) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1_000_000)


def _to_numpy(x):
    # StreamGenerator chunks hold torch tensors; torch is not needed for numpy frames.
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _check_chunks(chunk_frames, first_chunk_frames):
    for name, v in (("chunk_frames", chunk_frames), ("first_chunk_frames", first_chunk_frames)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if first_chunk_frames is not None and chunk_frames is None:
        raise ValueError("first_chunk_frames needs chunk_frames")


class StreamAnalyzer:
    """Feed frames with add(); finish() returns the report over the frames so far (and may be called again later,
    e.g. for a running stream).

    fps: frames per second (int, float or Fraction). Frames: uint8 [H, W, 3] RGB, all of one size.
    """

    def __init__(self, fps, config: InspectConfig | None = None):
        self.fps = _as_fps(fps)
        self.config = config or InspectConfig()
        self._measurer: FrameMeasurer | None = None
        self._n = 0
        self._motion, self._p95, self._sharp = array("d"), array("d"), array("d")
        self._lab = array("d")  # 3 per frame
        self._first_mean: np.ndarray | None = None
        self._sec_sum: np.ndarray | None = None
        self._sec_frames = 0
        self._sec_index = 0
        self._copy_ssim: list[float] = []
        self._copy_psnr: list[float] = []

    @property
    def frames_seen(self) -> int:
        return self._n

    def _second_of(self, t: int) -> int:
        return math.floor(t / self.fps)

    def _similarity(self, sec_sum: np.ndarray, frames: int) -> tuple[float, float]:
        mean = sec_sum / frames
        first = self._first_mean if self._first_mean is not None else mean
        return ssim(mean, first), psnr(mean, first)

    def _close_second(self) -> None:
        if self._first_mean is None:
            self._first_mean = self._sec_sum / self._sec_frames
        s, p = self._similarity(self._sec_sum, self._sec_frames)
        self._copy_ssim.append(s)
        self._copy_psnr.append(p)
        self._sec_sum, self._sec_frames = None, 0

    def add(self, frame: np.ndarray) -> None:
        """One uint8 RGB frame [H, W, 3] (numpy, or a torch tensor on any device)."""
        frame = _to_numpy(frame)
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"frame {self._n}: expected a numpy uint8 array [H, W, 3], got {type(frame).__name__}")
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"frame {self._n}: expected [H, W, 3] RGB with H, W > 0, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame {self._n}: expected uint8, got {frame.dtype}")
        if self._measurer is None:
            self._measurer = FrameMeasurer(frame.shape[0], frame.shape[1], self.config.analysis_size,
                                           self.config.flow)
        elif frame.shape[:2] != (self._measurer.height, self._measurer.width):
            raise ValueError(f"frame {self._n}: size {frame.shape[0]}x{frame.shape[1]} differs from the first "
                             f"frame's {self._measurer.height}x{self._measurer.width}")
        second = self._second_of(self._n)
        if second != self._sec_index and self._sec_frames:
            self._close_second()
        self._sec_index = second
        m, grey = self._measurer.measure(np.ascontiguousarray(frame))
        self._motion.append(math.nan if m.motion_mean is None else m.motion_mean)
        self._p95.append(math.nan if m.motion_p95 is None else m.motion_p95)
        self._sharp.append(m.sharpness)
        self._lab.extend(m.lab)
        self._sec_sum = grey.astype(np.float64) if self._sec_sum is None else self._sec_sum + grey
        self._sec_frames += 1
        self._n += 1

    def finish(self, chunk_frames: int | None = None, first_chunk_frames: int | None = None, *,
               chunk_source: str | None = None, complete: bool = True, source: str | None = None,
               notes: Iterable[str] = ()) -> InspectReport:
        """The report over the frames added so far (at least one)."""
        _check_chunks(chunk_frames, first_chunk_frames)
        if self._n == 0:
            raise ValueError("no frames to inspect")
        copy_ssim, copy_psnr = list(self._copy_ssim), list(self._copy_psnr)
        if self._sec_frames:  # the current (possibly partial) second; finish() changes no state, add() may go on
            s, p = self._similarity(self._sec_sum, self._sec_frames)
            copy_ssim.append(s)
            copy_psnr.append(p)
        cfg, fps = self.config, float(self.fps)
        notes = list(notes)
        # Copies, not np.frombuffer views: a view would pin the arrays and make a later add() fail to grow them.
        motion, p95 = np.array(self._motion), np.array(self._p95)
        sharp, lab = np.array(self._sharp), np.array(self._lab).reshape(-1, 3)
        if not self._measurer.flow_possible:
            notes.append(f"frames of {self._measurer.height}x{self._measurer.width} are too small for optical "
                         "flow: no motion numbers")
        elif self._n < 2:
            notes.append("one frame: no motion numbers")

        seconds = self._curves(motion, p95, sharp, lab, copy_ssim, copy_psnr)
        n_sec = len(seconds.time_s)
        late_secs = slice(max(1, n_sec - max(1, n_sec // 4)), n_sec) if n_sec > 1 else slice(0, 1)
        has_motion = not np.isnan(motion[1:]).all() if self._n > 1 else False
        m_early, m_late, m_ratio = (late_early(motion, skip_first=True, min_early=STILL_MOTION) if has_motion
                                    else (None, None, None))
        stall = stall_onset(motion, fps, cfg.opening_s, cfg.stall_fraction, cfg.min_still_s)
        s_early, s_late, s_ratio = late_early(sharp)

        parts = equal_chunks(self._n, cfg.vde_chunks)
        motion_parts = [motion[p][~np.isnan(motion[p])] for p in parts]
        vde_motion = (vde([x.mean() for x in motion_parts])
                      if parts and len(parts) >= 2 and all(x.size for x in motion_parts) else None)

        seams: tuple[Seam, ...] = ()
        if chunk_frames is not None and has_motion:
            found = seam_ratios(motion, chunk_boundaries(self._n, chunk_frames, first_chunk_frames), chunk_frames,
                                cfg.seam_floor)
            seams = tuple(Seam(t, t / fps, mot, base, r) for t, mot, base, r in found)
        worst = max(seams, key=lambda s: s.ratio) if seams else None
        summary = Summary(
            motion_mean=float(np.nanmean(motion)) if has_motion else None,
            motion_early=m_early, motion_late=m_late, motion_late_early=m_ratio,
            opening_motion=stall.opening_motion, stall_threshold=stall.threshold, stall_onset_s=stall.onset_s,
            copy_ssim_late=float(np.mean(seconds.copy_ssim[late_secs])),
            copy_psnr_late=float(np.mean(seconds.copy_psnr[late_secs])),
            colour_de_late=float(np.mean(seconds.colour_de[late_secs])),
            colour_de_max=float(max(seconds.colour_de)),
            sharpness_early=s_early, sharpness_late=s_late, sharpness_decay=s_ratio,
            vde_chunks=len(parts),
            vde_sharpness=vde([sharp[p].mean() for p in parts]) if len(parts) >= 2 else None,
            vde_colour=vde_colour(np.array([lab[p].mean(0) for p in parts])) if len(parts) >= 2 else None,
            vde_motion=vde_motion,
            seam_ratio_mean=float(np.mean([s.ratio for s in seams])) if seams else None,
            seam_ratio_max=worst.ratio if worst else None,
            seam_worst_frame=worst.frame if worst else None,
            seam_baseline=float(np.median([x.baseline for x in seams])) if seams else None)
        if chunk_frames is None:
            chunk_source = "none"
        return InspectReport(fps=fps, frames=self._n, height=self._measurer.height, width=self._measurer.width,
                             analysis_size=self._measurer.small, chunk_frames=chunk_frames,
                             first_chunk_frames=(first_chunk_frames if chunk_frames is not None and first_chunk_frames
                                                 is not None else chunk_frames),
                             chunk_source=chunk_source or "argument", complete=complete, seconds=seconds,
                             seams=seams, summary=summary, config=cfg, source=source, notes=tuple(notes))

    def _curves(self, motion, p95, sharp, lab, copy_ssim, copy_psnr) -> SecondCurves:
        starts = [0]
        for t in range(1, self._n):
            if self._second_of(t) != self._second_of(t - 1):
                starts.append(t)
        bounds = list(zip(starts, starts[1:] + [self._n]))
        first_lab = lab[bounds[0][0]:bounds[0][1]].mean(0)

        def nanmean(x):
            x = x[~np.isnan(x)]
            return float(x.mean()) if x.size else None

        return SecondCurves(
            time_s=tuple(self._second_of(a) * 1.0 for a, _ in bounds),
            frames=tuple(b - a for a, b in bounds),
            motion_mean=tuple(nanmean(motion[a:b]) for a, b in bounds),
            motion_p95=tuple(nanmean(p95[a:b]) for a, b in bounds),
            copy_ssim=tuple(copy_ssim), copy_psnr=tuple(copy_psnr),
            colour_de=tuple(delta_e(lab[a:b].mean(0), first_lab) for a, b in bounds),
            sharpness=tuple(float(sharp[a:b].mean()) for a, b in bounds))


def inspect_frames(frames: Iterable[np.ndarray], fps, chunk_frames: int | None = None,
                   first_chunk_frames: int | None = None, config: InspectConfig | None = None) -> InspectReport:
    """Long-stream diagnostics of a stream of frames (see the module docs of rfrt.inspect for each metric).

    frames: an iterable of uint8 RGB frames [H, W, 3] (or batches [T, H, W, 3], e.g. StreamGenerator chunks'
            frames), numpy arrays or torch tensors, consumed once, one frame at a time (a generator keeps memory
            bounded).
    fps:    frame rate; chunk_frames / first_chunk_frames: the generator's chunk length in frames (the first
            chunk may differ, e.g. a causal VAE's 1 + 4 (k - 1)), for the seam metric; None skips seams.
    """
    _check_chunks(chunk_frames, first_chunk_frames)
    analyzer = StreamAnalyzer(fps, config)
    for item in frames:
        item = _to_numpy(item)
        if isinstance(item, np.ndarray) and item.ndim == 4:
            for frame in item:
                analyzer.add(frame)
        else:
            analyzer.add(item)
    return analyzer.finish(chunk_frames, first_chunk_frames)
