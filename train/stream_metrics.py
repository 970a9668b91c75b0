"""Object tracking on generated streams of the synthetic world: presence and motion along the prompted way.

The world's frame is a torus (movers wrap, train/data/synthetic_world.py), so an object may be split over an
edge. The tracker therefore works per frame on the pixels whose nearest palette colour is the prompted
object's colour and takes their *circular* mean per axis (an object split over the right and left edge is one
object at the edge); the step between two frames is wrapped into (-n/2, n/2].

For a video [T, 3, H, W] in [-1, 1] and its single-object Scene:
  present [T]:   the object-colour pixel count lies within [0.4, 2.5] x the object's drawn area (as
                 train/world_eval.py counts) and the frame's median colour is the prompted background;
  along [T - 1]: the step (px) of the centroid between frames t and t + 1 along the prompted direction
                 ("moves", "appears": the direction; "turns": the second direction, i.e. after the turn;
                 "bounces": the absolute step along the bounce axis; "still": minus the step's length, so any
                 motion counts against it); NaN where either frame lacks the object.
Per second (fps frames): presence = mean of present, speed = mean of along (px/frame) over its valid steps.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from train.data.synthetic_world import COLOURS, DIRECTIONS, ObjectSpec, Scene, render_scene

_NAMES = list(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _NAMES]) * 2 - 1  # [10, 3] in [-1, 1]


def labels_of(video: torch.Tensor) -> torch.Tensor:
    """video [T, 3, H, W] in [-1, 1] -> nearest palette index per pixel [T, H, W]."""
    pix = video.clamp(-1, 1).permute(0, 2, 3, 1).reshape(-1, 3).float()
    return torch.cdist(pix, _PALETTE).argmin(-1).reshape(video.shape[0], *video.shape[2:])


def object_area(scene: Scene) -> float:
    """Median drawn area (pixels) of the scene's first object over its first visible 9 frames."""
    obj = scene.objects[0]
    probe = Scene(scene.background, (obj,), scene.height, scene.width, obj.appear_frame + 9, 0)
    lab = labels_of(render_scene(probe)[obj.appear_frame:])
    return float((lab == _NAMES.index(obj.colour)).flatten(1).sum(1).float().median())


def circular_centroids(mask: torch.Tensor) -> np.ndarray:
    """mask [T, H, W] bool -> centroid (x, y) [T, 2] on the torus (NaN where the mask is empty)."""
    T, H, W = mask.shape
    out = np.full((T, 2), np.nan)
    m = mask.double()
    n = m.flatten(1).sum(1)
    for axis, size in ((0, W), (1, H)):
        ang = torch.arange(size, dtype=torch.float64) * 2 * math.pi / size
        w = m.sum(1) if axis == 0 else m.sum(2)  # [T, size]: pixel counts per column (x) / row (y)
        s, c = (w * ang.sin()).sum(1), (w * ang.cos()).sum(1)
        pos = torch.remainder(torch.atan2(s, c) * size / (2 * math.pi), size)
        out[:, axis] = torch.where(n > 0, pos, torch.nan).numpy()
    return out


def torus_offset(a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """a - b per (x, y) axis on the torus of `size` (width, height), wrapped into [-size / 2, size / 2]: the
    shortest way round, as the world's movers wrap."""
    n = np.asarray(size, dtype=np.float64)
    d = np.asarray(a, dtype=np.float64) - b
    return d - n * np.round(d / n)


def prompted_direction(obj: ObjectSpec) -> tuple[np.ndarray | None, str]:
    """(unit vector, mode): mode "signed" (moves/appears/turns), "axis" (bounces) or "still"."""
    if obj.motion == "still":
        return None, "still"
    if obj.motion == "bounces":
        return np.abs(np.array(DIRECTIONS[obj.direction], dtype=np.float64)), "axis"
    name = obj.direction2 if obj.motion == "turns" else obj.direction
    return np.array(DIRECTIONS[name], dtype=np.float64), "signed"


def track(video: torch.Tensor, scene: Scene) -> dict[str, np.ndarray]:
    """present [T] (bool) and along [T - 1] (px/frame, NaN where untracked) of one stream (module docstring)."""
    obj = scene.objects[0]
    lab = labels_of(video)
    mask = lab == _NAMES.index(obj.colour)
    area = object_area(scene)
    count = mask.flatten(1).sum(1).float()
    bg = lab.flatten(1).median(1).values == _NAMES.index(scene.background)
    present = ((count >= 0.4 * area) & (count <= 2.5 * area) & bg).numpy()
    c = circular_centroids(mask)
    c[~present] = np.nan
    d = torus_offset(c[1:], c[:-1], (scene.width, scene.height))
    direction, mode = prompted_direction(obj)
    if mode == "signed":
        along = d @ direction
    elif mode == "axis":
        along = np.abs(d @ direction)
    else:
        along = -np.hypot(d[:, 0], d[:, 1])
    return {"present": present, "along": along}


def per_second(tr: dict[str, np.ndarray], fps: int) -> dict[str, np.ndarray]:
    """presence [S] and speed [S] (px/frame along the prompted way; NaN for a second with no tracked step)."""
    T = len(tr["present"])
    S = T // fps
    presence = tr["present"][:S * fps].reshape(S, fps).mean(1)
    speed = np.full(S, np.nan)
    for s in range(S):
        a = tr["along"][s * fps:min((s + 1) * fps, T - 1)]
        a = a[~np.isnan(a)]
        if len(a):
            speed[s] = a.mean()
    return {"presence": presence, "speed": speed}


def moving_seconds(sec: dict[str, np.ndarray], min_speed: float) -> np.ndarray:
    """bool [S]: the second shows the object (presence >= 0.5) moving the prompted way at >= min_speed."""
    return (sec["presence"] >= 0.5) & (np.nan_to_num(sec["speed"], nan=-1.0) >= min_speed)


def stall_onset(ok: np.ndarray) -> int:
    """First second from which the object never again moves the prompted way (len(ok) if it never stalls)."""
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return 0
    return int(idx[-1]) + 1  # == len(ok) when the last second still moves


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0, q: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean over the first axis (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - q) / 2, 1 - (1 - q) / 2])
    return float(v.mean()), float(lo), float(hi)
