"""From per-frame numbers to the long-stream summary: stall onset, late/early ratios, VDE, seams.

Frame t's motion is the flow from frame t-1 to frame t (so frame 0 has none, stored as NaN). "Early" and
"late" are the first and last quarter of the frames (at least one frame each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StallResult", "stall_onset", "late_early", "equal_chunks", "vde", "vde_colour", "seam_ratios",
           "chunk_boundaries", "delta_e"]

# Opening motion below this (px/frame) counts as a video that never moves.
STILL_MOTION = 1e-3


@dataclass(frozen=True)
class StallResult:
    onset_s: float | None   # None: still moving at the end (or no motion measured)
    onset_frame: int | None
    opening_motion: float | None  # mean motion of the opening seconds, px/frame
    threshold: float | None       # px/frame


def _median3(x: np.ndarray) -> np.ndarray:
    """3-tap running median, edges replicated: removes one-frame spikes, keeps a step edge where it is."""
    if x.size < 3:
        return x.copy()
    padded = np.concatenate([x[:1], x, x[-1:]])
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def stall_onset(motion: np.ndarray, fps: float, opening_s: float, fraction: float,
                min_still_s: float) -> StallResult:
    """motion [T] px/frame (NaN at frame 0) -> when the stream stops moving.

    The opening motion is the mean over the first `opening_s` seconds (capped at half the stream). The stall
    onset is the time of the last frame whose (3-frame median filtered) motion is still >= `fraction` x the
    opening motion: from that frame on the picture stays below the threshold. It is reported only when that
    still tail lasts at least `min_still_s` (a stream still moving at its end has no stall onset). A stream
    whose opening motion is ~0 never moved: onset 0.
    """
    m = np.asarray(motion, dtype=np.float64)[1:]
    if m.size == 0 or np.isnan(m).all():
        return StallResult(None, None, None, None)
    n_open = max(1, min(round(opening_s * fps), m.size // 2))
    opening = float(m[:n_open].mean())
    if opening < STILL_MOTION:
        return StallResult(0.0, 0, opening, 0.0)
    threshold = fraction * opening
    moving = np.flatnonzero(_median3(m) >= threshold)
    last = int(moving[-1]) + 1 if moving.size else 0  # frame index (m[i] is frame i + 1)
    still_frames = m.size - last  # frames after `last`
    if still_frames < max(1, round(min_still_s * fps)):
        return StallResult(None, None, opening, threshold)
    return StallResult(last / fps, last, opening, threshold)


def late_early(values: np.ndarray, skip_first: bool = False,
               min_early: float = 1e-12) -> tuple[float | None, float | None, float | None]:
    """values [T] per frame -> (early mean, late mean, late / early); quarters of the frames. The ratio is None
    when the early mean is below `min_early` (nothing to compare with)."""
    v = np.asarray(values, dtype=np.float64)[1 if skip_first else 0:]
    if v.size == 0:
        return None, None, None
    q = max(1, v.size // 4)
    early, late = float(v[:q].mean()), float(v[-q:].mean())
    return early, late, (late / early if abs(early) >= min_early else None)


def equal_chunks(n_frames: int, n_chunks: int) -> list[slice]:
    """LV-Bench's split: n_chunks equal runs of n_frames // n_chunks frames, the remainder dropped at the end."""
    n = min(n_chunks, n_frames)
    size = n_frames // n if n else 0
    return [slice(i * size, (i + 1) * size) for i in range(n)] if size else []


def _weights(n: int) -> np.ndarray:
    # Chunk i = 2..N weighs N - i + 1 (LV-Bench's linear weighting): the earliest drift weighs most.
    return np.arange(n - 1, 0, -1, dtype=np.float64)


def vde(chunk_values: np.ndarray) -> float | None:
    """Video drift error of per-chunk scalars m_1..m_N (LV-Bench, BlockVid arXiv 2511.22973, its `vde.py`):

        VDE = sum_{i=2..N} (N - i + 1) * |m_i - m_1| / m_1

    0 = no drift. None when N < 2 or m_1 == 0 (LV-Bench returns infinity there; JSON has no infinity).
    """
    m = np.asarray(chunk_values, dtype=np.float64)
    if m.size < 2 or not np.isfinite(m).all() or m[0] == 0:
        return None
    return float((_weights(m.size) * np.abs(m[1:] - m[0]) / abs(m[0])).sum())


def delta_e(lab_a, lab_b) -> float:
    """CIE76 colour difference of two L*a*b* colours."""
    return float(np.linalg.norm(np.asarray(lab_a, dtype=np.float64) - np.asarray(lab_b, dtype=np.float64)))


def vde_colour(chunk_labs: np.ndarray) -> float | None:
    """VDE-style colour drift of per-chunk mean L*a*b* colours [N, 3]: sum_{i=2..N} (N - i + 1) * dE76(c_i, c_1).

    Our adaptation, not LV-Bench's: a colour is a 3-vector with no natural 'relative' change, so each term is the
    CIE76 distance itself (dE units), with LV-Bench's weights. None when N < 2.
    """
    c = np.asarray(chunk_labs, dtype=np.float64)
    if c.shape[0] < 2:
        return None
    return float((_weights(c.shape[0]) * np.linalg.norm(c[1:] - c[0], axis=-1)).sum())


def chunk_boundaries(n_frames: int, chunk_frames: int, first_chunk_frames: int | None = None) -> list[int]:
    """First frames of chunks 2, 3, ...: first_chunk_frames + k * chunk_frames (< n_frames)."""
    first = chunk_frames if first_chunk_frames is None else first_chunk_frames
    return list(range(first, n_frames, chunk_frames))


def seam_ratios(motion: np.ndarray, boundaries: list[int], window: int,
                floor: float) -> list[tuple[int, float, float, float]]:
    """motion [T] (NaN at frame 0), boundary frames -> [(frame, motion, baseline, ratio)] per boundary.

    The flow into boundary frame b (from b - 1, the last frame of the previous chunk) over the baseline: the median
    flow of the other frames within `window` frames of b (a chunk on each side), floored at `floor` px/frame so
    that a still stream does not divide by ~0. The baseline is local because a long stream's motion changes over
    time (it may stall halfway): a boundary is compared with its own neighbourhood.
    """
    m = np.asarray(motion, dtype=np.float64)
    bset = set(boundaries)
    out = []
    for t in boundaries:
        if not 0 < t < m.size or math.isnan(m[t]):
            continue
        near = [m[i] for i in range(max(1, t - window), min(m.size, t + window + 1))
                if i not in bset and not math.isnan(m[i])]
        if not near:
            continue
        baseline = float(np.median(near))
        out.append((t, float(m[t]), baseline, float(m[t] / max(baseline, floor))))
    return out
