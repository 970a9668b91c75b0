"""A synthetic video world the project generates itself: coloured shapes that move, bounce, turn and appear.

Every prompt is defined for any number of frames and is stationary in time, so a stream of any length has a
ground truth (SPEC 7). Every sample is a function of (seed, index) only, so a dataset is deterministic per seed
and identical however it is sharded over ranks and workers. A scene is sampled first (`sample_scene`), then
rendered (`render_scene` -> [T, 3, H, W] float in [-1, 1]) and described (`describe_scene` -> "a small red
circle moves right on a blue background"). Image coordinates: x grows to the right, y grows downwards.

Motion, for any stream frame t >= 0 (closed form in `path`):
  * "moves <dir>": constant velocity; the frame is a torus, so the object leaves through one edge and enters
    through the opposite one (drawn on both sides while it crosses). Period: W / speed frames (H / speed
    vertically).
  * "bounces left and right" / "up and down": elastic bounces between the walls (the shape's centre stays in
    [r, W - 1 - r]); period 2 (W - 1 - 2r) / speed.
  * "moves <d1> then turns <d2>": d1 until `turn_frame`, then d2 forever (the turn happens once), wrapping.
  * "appears and moves <dir>": invisible before `appear_frame`, then a mover.
  * "stays still": never moves.
Events (a turn, an appearance) happen within the first `event_frames` frames of the stream (9: the training
clip), so a clip that starts at frame 0 shows them; after them every motion is stationary.

What the prompt fixes and what it leaves to chance: the prompt fixes colour, shape, size, background and
direction (the axis, for bouncers). The speed is drawn per object from U[speed_min, speed_max] px/frame and the
phase (the position along the axis of motion, or the point of the bounce cycle) uniformly over its period, so
any window of a long stream is a sample of the same distribution (stationarity) and a motion reward has slow
and fast samples to choose between. A clip may start at a random stream frame in [0, max_start_frame] (a window
of a longer stream; this only changes anything for turns and appearances).

Two layouts differ in what else is chance. "canonical" fixes the radius per size word and puts the object in the
middle of the frame across its axis of motion (still objects in the centre). "random" draws the radius within
the size word's range and the cross-axis (or still) position between the walls. The embedded default model is
trained on "canonical": a 0.25M-parameter model trained for CPU-minutes could not learn where to put a freely
placed object (objects drawn in 20 % of frames after 3000 steps, train/results/default_model.md).

phase "fixed" (not the default) removes the phase from chance: at stream frame 0 a mover starts at the wall it
moves away from and a bouncer in the middle (the previous finite world's canonical start), and events come at
fixed frames. With speed_min == speed_max the prompt then determines the whole endless stream, which a
regression loss can learn (train/stages/regress.py): the 0.25M-parameter teacher and students trained for
CPU-minutes on the random phase drew smeared stripes along the axis of motion instead of an object
(train/results/default_model.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Literal

import numpy as np
import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.9, 0.1),
    "cyan": (0.1, 0.85, 0.9), "magenta": (0.9, 0.15, 0.85), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5), "orange": (1.0, 0.55, 0.0),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.10, 0.14), "large": (0.17, 0.22)}  # radius as a fraction of min(H, W)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
Motion = Literal["moves", "turns", "bounces", "still", "appears"]
MOTIONS: tuple[str, ...] = ("moves", "turns", "bounces", "still", "appears")
LAYOUTS = ("random", "canonical")
PHASES = ("random", "fixed")
CANONICAL_RADIUS = {"small": 0.12, "large": 0.2}  # fraction of min(H, W), inside SIZES' ranges
SPEED_RANGE = (0.5, 1.5)  # default speed_min, speed_max of SyntheticWorld, pixels per frame


def fixed_appear_frame(event_frames: int) -> int:
    """The stream frame where an "appears" object of the fixed phase first shows."""
    return min(3, event_frames // 2)


EVENT_FRAMES = 9  # default SyntheticWorld.event_frames: turns and appearances happen before this stream frame


@dataclass(frozen=True)
class ObjectSpec:
    """One object. Positions/radius in pixels; velocity in pixels per frame; frames are stream frames.

    start: the (unwrapped) centre at stream frame 0; motion "turns": velocity `velocity` until `turn_frame`,
    then `velocity2` (perpendicular); motion "appears": invisible before `appear_frame`.
    """

    shape: str
    colour: str
    size: str
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    motion: str
    direction: str = ""
    direction2: str = ""
    velocity2: tuple[float, float] = (0.0, 0.0)
    turn_frame: int = 0
    appear_frame: int = 0


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ObjectSpec, ...]
    height: int
    width: int
    num_frames: int
    start_frame: int = 0  # the clip shows stream frames start_frame .. start_frame + num_frames - 1


def vocabulary() -> tuple[str, ...]:
    """Every word `describe_scene` can produce, sorted (the world's whole vocabulary)."""
    words = {"a", "an", "and", "on", "background", "then", "moves", "turns", "bounces", "stays", "still", "appears",
             "left", "right", "up", "down"}
    words |= set(COLOURS) | set(SHAPES) | set(SIZES)
    return tuple(sorted(words))


def encode_prompt(prompt: str, max_words: int = 32) -> torch.Tensor:
    """Word ids (1-based into `vocabulary()`, 0 = padding) -> LongTensor [max_words]. Unknown words are errors."""
    index = {w: i + 1 for i, w in enumerate(vocabulary())}
    words = prompt.split()
    if len(words) > max_words:
        raise ValueError(f"prompt has {len(words)} words, more than max_words={max_words}")
    unknown = [w for w in words if w not in index]
    if unknown:
        raise ValueError(f"words outside the synthetic world's vocabulary: {unknown}")
    ids = torch.zeros(max_words, dtype=torch.long)
    ids[: len(words)] = torch.tensor([index[w] for w in words], dtype=torch.long)
    return ids


# ---------------------------------------------------------------------------------------------- scenes

def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi]: the trajectory of a point bouncing elastically between two walls."""
    span = hi - lo
    u = np.mod(p - lo, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def _sample_object(rng: np.random.Generator, colour: str, H: int, W: int, world: "SyntheticWorld") -> ObjectSpec:
    """One object of either layout; only the radius and the cross-axis / still position differ between them."""
    canonical = world.layout == "canonical"
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = ("small", "large")[rng.integers(2)]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    names = list(DIRECTIONS)
    d1 = names[rng.integers(4)]
    r = CANONICAL_RADIUS[size] * min(H, W) if canonical else float(rng.uniform(*SIZES[size]) * min(H, W))
    lo = np.array([r, r])
    hi = np.array([W - 1 - r, H - 1 - r])
    if canonical:  # the prompt fixes the place off the motion's axis: the middle of the frame
        inside = (lo + hi) / 2
    else:
        inside = rng.uniform(lo, hi)
    period = np.array([W, H], dtype=np.float64)
    speed = float(rng.uniform(world.speed_min, world.speed_max))
    dx, dy = DIRECTIONS[d1]
    axis = 0 if dx else 1
    common = dict(shape=shape, colour=colour, size=size, radius=r)
    if motion == "still":
        return ObjectSpec(**common, start=tuple(map(float, inside)), velocity=(0.0, 0.0), motion=motion)
    start = inside.copy()
    if world.phase == "fixed":
        return _fixed_phase_object(common, motion, d1, speed, lo, hi, inside, names, rng, world)
    if motion == "bounces":
        # The phase is uniform over one back-and-forth period 2 * span of the unfolded coordinate, so the object
        # is anywhere between the walls, going either way; the prompt names only the axis.
        d1 = "right" if axis == 0 else "down"
        dx, dy = DIRECTIONS[d1]
        span = hi[axis] - lo[axis]
        start[axis] = lo[axis] + rng.uniform(0, 2 * span)
        return ObjectSpec(**common, start=tuple(map(float, start)), velocity=(dx * speed, dy * speed),
                          motion=motion, direction=d1)
    # Movers live on the torus [0, W) x [0, H): uniform phase along the axis of motion.
    start[axis] = rng.uniform(0, period[axis])
    if motion == "turns":
        turn = int(rng.integers(2, max(3, world.event_frames - 2)))
        d2 = [n for n in names if DIRECTIONS[n][0] * dx + DIRECTIONS[n][1] * dy == 0][rng.integers(2)]
        ex, ey = DIRECTIONS[d2]
        return ObjectSpec(**common, start=tuple(map(float, start)), velocity=(dx * speed, dy * speed),
                          motion=motion, direction=d1, direction2=d2, velocity2=(ex * speed, ey * speed),
                          turn_frame=turn)
    appear = int(rng.integers(1, max(2, world.event_frames // 2 + 1))) if motion == "appears" else 0
    return ObjectSpec(**common, start=tuple(map(float, start)), velocity=(dx * speed, dy * speed), motion=motion,
                      direction=d1, appear_frame=appear)


def _fixed_phase_object(common: dict, motion: str, d1: str, speed: float, lo: np.ndarray, hi: np.ndarray,
                        inside: np.ndarray, names: list, rng: np.random.Generator,
                        world: "SyntheticWorld") -> ObjectSpec:
    """phase "fixed": at stream frame 0 a mover sits at the wall it moves away from (as the previous, finite
    world's canonical layout) and a bouncer in the middle going right / down; a turn comes at frame 4, an
    appearance at frame 3. With speed_min == speed_max the prompt then determines the whole stream."""
    dx, dy = DIRECTIONS[d1]

    def away_from(dx: int, dy: int) -> tuple[float, float]:
        return (float(inside[0]) if dx == 0 else float(lo[0] if dx > 0 else hi[0]),
                float(inside[1]) if dy == 0 else float(lo[1] if dy > 0 else hi[1]))

    if motion == "bounces":
        d1 = "right" if dx else "down"
        dx, dy = DIRECTIONS[d1]
        return ObjectSpec(**common, start=tuple(map(float, inside)), velocity=(dx * speed, dy * speed),
                          motion=motion, direction=d1)
    if motion == "turns":
        d2 = [n for n in names if DIRECTIONS[n][0] * dx + DIRECTIONS[n][1] * dy == 0][rng.integers(2)]
        ex, ey = DIRECTIONS[d2]
        return ObjectSpec(**common, start=away_from(dx + ex, dy + ey), velocity=(dx * speed, dy * speed),
                          motion=motion, direction=d1, direction2=d2, velocity2=(ex * speed, ey * speed),
                          turn_frame=min(4, world.event_frames - 2))
    appear = fixed_appear_frame(world.event_frames) if motion == "appears" else 0
    return ObjectSpec(**common, start=away_from(dx, dy), velocity=(dx * speed, dy * speed), motion=motion,
                      direction=d1, appear_frame=appear)


def sample_scene(rng: np.random.Generator, world: "SyntheticWorld") -> Scene:
    """Draw a background and 1..max_objects objects with distinct colours, all different from the background."""
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    free = [c for c in names if c != background]
    n = int(rng.integers(1, world.max_objects + 1))
    colours = [free[i] for i in rng.permutation(len(free))[:n]]
    objects = tuple(_sample_object(rng, c, world.height, world.width, world) for c in colours)
    start = int(rng.integers(0, world.max_start_frame + 1))
    return Scene(background, objects, world.height, world.width, world.num_frames, start)


def scene_frames(scene: Scene) -> np.ndarray:
    """Stream frame indices [T] the scene's clip shows: start_frame, ..., start_frame + num_frames - 1."""
    return scene.start_frame + np.arange(scene.num_frames, dtype=np.float64)


def path(obj: ObjectSpec, scene: Scene, frames: np.ndarray | None = None) -> np.ndarray:
    """Unwrapped centre positions [N, 2] (x, y) at stream frames `frames` (default: the clip's).

    Straight motion is start + t * velocity (a turn switches to velocity2 after turn_frame); a bouncer's
    coordinate is folded between the walls. Movers are not wrapped here (see `trajectory`): the difference of
    two rows is the true displacement, which evaluation compares against.
    """
    t = scene_frames(scene) if frames is None else np.asarray(frames, dtype=np.float64)
    start, v = np.array(obj.start), np.array(obj.velocity)
    pos = start[None] + t[:, None] * v[None]
    if obj.motion == "turns":
        after = t > obj.turn_frame
        pos[after] = start + obj.turn_frame * v + (t[after, None] - obj.turn_frame) * np.array(obj.velocity2)
    if obj.motion == "bounces":
        r = obj.radius
        pos[:, 0] = _fold(pos[:, 0], r, scene.width - 1 - r)
        pos[:, 1] = _fold(pos[:, 1], r, scene.height - 1 - r)
    return pos


def trajectory(obj: ObjectSpec, scene: Scene, frames: np.ndarray | None = None) -> np.ndarray:
    """Drawn centre positions [N, 2]: `path` wrapped onto the torus [0, W) x [0, H) (bouncers and still objects
    never leave it, so wrapping changes nothing for them)."""
    return np.mod(path(obj, scene, frames), np.array([scene.width, scene.height], dtype=np.float64))


def with_speed(scene: Scene, speed: float) -> Scene:
    """The same scene with every moving object at `speed` px/frame (its start, directions and event frames kept;
    still objects stay still): on the fixed phase with clips from frame 0 the one thing the prompt leaves to
    chance."""
    def scaled(v: tuple[float, float]) -> tuple[float, float]:
        n = math.hypot(*v)
        return v if n == 0 else (v[0] * speed / n, v[1] * speed / n)

    return replace(scene, objects=tuple(replace(o, velocity=scaled(o.velocity), velocity2=scaled(o.velocity2))
                                        for o in scene.objects))


def with_shift(scene: Scene, px: float) -> Scene:
    """The same scene with every moving object's start moved `px` px along its first direction of motion (still
    objects stay): for straight paths the clip of a stream that is px / speed frames ahead (behind, for px < 0),
    the offset a generated stream's start shows against the prompt's place."""
    def shifted(o: ObjectSpec) -> ObjectSpec:
        n = math.hypot(*o.velocity)
        if n == 0:
            return o
        return replace(o, start=(o.start[0] + px * o.velocity[0] / n, o.start[1] + px * o.velocity[1] / n))

    return replace(scene, objects=tuple(shifted(o) for o in scene.objects))


def _mask(shape: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex up, base at cy + r; half-width grows linearly from 0 to r
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) * 0.5)
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene) -> torch.Tensor:
    """Render a scene's clip to a float32 video [T, 3, H, W] in [-1, 1] (objects drawn in order, later on top).

    Wrapping: an object is drawn at its wrapped centre and at the copies one frame-width / -height away, so
    one leaving through an edge enters through the opposite edge in the same frame.
    Drawn with numpy: these tensors are small and torch's intra-op threading only adds overhead here.
    """
    return _render([scene])[0]


def render_variants(scene: Scene, speeds: np.ndarray, shifts: np.ndarray) -> torch.Tensor:
    """`render_scene(with_shift(with_speed(scene, v), s))` for every v in speeds and s in shifts (speed-major),
    as one float32 tensor [len(speeds) * len(shifts), T, 3, H, W]: one broadcast pass of the same renderer, which
    is what makes the world's exact posterior over hundreds of variants per scene (train/stages/world_ode.py)
    cheap enough to run for every ODE pair."""
    return _render([with_shift(with_speed(scene, float(v)), float(s)) for v in speeds for s in shifts])


def _render(variants: list[Scene]) -> torch.Tensor:
    """[N, T, 3, H, W] of scenes that differ only in their objects' paths (render_scene's docstring): every
    object's masks of all N clips and T frames in one broadcast numpy pass."""
    first = variants[0]
    T, H, W = first.num_frames, first.height, first.width
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij")
    video = np.empty((len(variants), T, H, W, 3), dtype=np.float32)
    video[:] = np.asarray(COLOURS[first.background], dtype=np.float32)
    shown = scene_frames(first)[None, :, None, None]
    for k, obj in enumerate(first.objects):
        centres = np.stack([trajectory(v.objects[k], v) for v in variants])  # [N, T, 2]
        m = np.zeros((len(variants), T, H, W), dtype=bool)
        for ox in (-W, 0, W):
            for oy in (-H, 0, H):
                cx = (centres[..., 0] + ox).astype(np.float32)[..., None, None]
                cy = (centres[..., 1] + oy).astype(np.float32)[..., None, None]
                m |= _mask(obj.shape, cx, cy, obj.radius, xs, ys)
        m &= shown >= obj.appear_frame
        video[m] = np.asarray(COLOURS[obj.colour], dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3) * 2.0 - 1.0))


def describe_object(obj: ObjectSpec) -> str:
    noun = f"a {obj.size} {obj.colour} {obj.shape}"
    if obj.motion == "still":
        return f"{noun} stays still"
    if obj.motion == "turns":
        return f"{noun} moves {obj.direction} then turns {obj.direction2}"
    if obj.motion == "bounces":
        axis = "left and right" if obj.direction in ("left", "right") else "up and down"
        return f"{noun} bounces {axis}"
    if obj.motion == "appears":
        return f"{noun} appears and moves {obj.direction}"
    return f"{noun} moves {obj.direction}"


def describe_scene(scene: Scene) -> str:
    """"a small red circle moves right and a large green square stays still on a blue background"."""
    article = "an" if scene.background[0] in "aeiou" else "a"
    return " and ".join(describe_object(o) for o in scene.objects) + f" on {article} {scene.background} background"


def parse_single_object(prompt: str, height: int, width: int, num_frames: int, speed: float = 1.0) -> Scene:
    """The canonical single-object Scene a prompt of this world describes (the inverse of `describe_scene`).

    What the prompt leaves to chance is fixed here: `speed` px/frame, phase 0 (a mover starts at x or y = 0),
    a turn at frame 4, an appearance at frame 2. Evaluation uses it for what the prompt fixes: colour, shape,
    size (area), background, motion and direction.
    """
    words = prompt.split()
    try:
        if words[0] != "a" or words[-1] != "background" or words[-4] != "on":
            raise ValueError
        size, colour, shape, background = words[1], words[2], words[3], words[-2]
        body = words[4:-4]
        if size not in SIZES or colour not in COLOURS or shape not in SHAPES or background not in COLOURS:
            raise ValueError
    except (IndexError, ValueError):
        raise ValueError(f"not a single-object prompt of the synthetic world: {prompt!r}") from None
    r = CANONICAL_RADIUS[size] * min(height, width)
    mid = ((width - 1) / 2, (height - 1) / 2)
    common = dict(shape=shape, colour=colour, size=size, radius=r)

    def mover(d: str) -> tuple[tuple[float, float], tuple[float, float]]:
        dx, dy = DIRECTIONS[d]
        return (0.0 if dx else mid[0], 0.0 if dy else mid[1]), (dx * speed, dy * speed)

    if body == ["stays", "still"]:
        obj = ObjectSpec(**common, start=mid, velocity=(0.0, 0.0), motion="still")
    elif len(body) == 4 and body[0] == "bounces" and body[2] == "and":
        d = "right" if body[1] in ("left", "right") else "down"
        obj = ObjectSpec(**common, start=mid, velocity=mover(d)[1], motion="bounces", direction=d)
    elif len(body) == 2 and body[0] == "moves" and body[1] in DIRECTIONS:
        start, v = mover(body[1])
        obj = ObjectSpec(**common, start=start, velocity=v, motion="moves", direction=body[1])
    elif len(body) == 4 and body[:2] == ["appears", "and"] and body[2] == "moves" and body[3] in DIRECTIONS:
        start, v = mover(body[3])
        obj = ObjectSpec(**common, start=start, velocity=v, motion="appears", direction=body[3], appear_frame=2)
    elif len(body) == 5 and body[0] == "moves" and body[2:4] == ["then", "turns"] and body[1] in DIRECTIONS \
            and body[4] in DIRECTIONS:
        start, v = mover(body[1])
        obj = ObjectSpec(**common, start=start, velocity=v, motion="turns", direction=body[1], direction2=body[4],
                         velocity2=mover(body[4])[1], turn_frame=4)
    else:
        raise ValueError(f"not a single-object prompt of the synthetic world: {prompt!r}")
    return Scene(background, (obj,), height, width, num_frames)


# ---------------------------------------------------------------------------------------------- datasets

def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index`: independent streams per (seed, index), whatever the sharding."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


@dataclass(frozen=True)
class SyntheticWorld:
    """Map from an index to one (video [T, 3, H, W] in [-1, 1], prompt) sample; deterministic per seed."""

    height: int = 32
    width: int = 32
    num_frames: int = 8
    max_objects: int = 2
    seed: int = 0
    layout: str = "random"
    speed_min: float = SPEED_RANGE[0]
    speed_max: float = SPEED_RANGE[1]
    max_start_frame: int = 0
    event_frames: int = EVENT_FRAMES
    phase: str = "random"

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 8 or self.num_frames < 2 or self.max_objects < 1:
            raise ValueError(f"invalid SyntheticWorld {self}: need H, W >= 8, num_frames >= 2, max_objects >= 1")
        if self.layout not in LAYOUTS:
            raise ValueError(f"invalid SyntheticWorld layout {self.layout!r}; expected one of {LAYOUTS}")
        if not 0 < self.speed_min <= self.speed_max < min(self.height, self.width) / 2:
            raise ValueError(f"invalid SyntheticWorld speed range [{self.speed_min}, {self.speed_max}] px/frame: "
                             f"need 0 < speed_min <= speed_max < min(H, W) / 2 (faster aliases on the torus)")
        if self.phase not in PHASES:
            raise ValueError(f"invalid SyntheticWorld phase {self.phase!r}; expected one of {PHASES}")
        if self.max_start_frame < 0 or self.event_frames < 2:
            raise ValueError(f"invalid SyntheticWorld: need max_start_frame >= 0 and event_frames >= 2, got "
                             f"{self.max_start_frame}, {self.event_frames}")

    def scene(self, index: int) -> Scene:
        return sample_scene(sample_rng(self.seed, index), self)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if index < 0:
            raise IndexError(f"index must be >= 0, got {index}")
        s = self.scene(index)
        return render_scene(s), describe_scene(s)


class SyntheticWorldDataset(torch.utils.data.IterableDataset):
    """Endless (or `num_samples`-long) stream of (video, prompt), sharded over ranks and DataLoader workers.

    Rank r of `world_size` takes global indices r, r + world_size, ...; inside a DataLoader, worker w of n
    takes every n-th of those. `state_dict()` records how many samples this rank has consumed (exact with
    num_workers=0; with workers, the trainer should restore from its own step count via `load_state_dict`).
    """

    def __init__(self, world: SyntheticWorld, rank: int = 0, world_size: int = 1, num_samples: int | None = None):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 or None, got {num_samples}")
        self.world, self.rank, self.world_size, self.num_samples = world, rank, world_size, num_samples
        self.position = 0

    @classmethod
    def from_config(cls, data_cfg, rank: int = 0, world_size: int = 1, num_samples: int | None = None):
        """Build from a `train.config.DataSection`."""
        world = world_of(data_cfg)
        return cls(world, rank, world_size, num_samples)

    def _local_indices(self) -> Iterator[int]:
        total = math.inf if self.num_samples is None else self.num_samples
        k = self.position
        while True:
            i = self.rank + k * self.world_size
            if i >= total:
                return
            yield k
            k += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for k in self._local_indices():
            if k % nw != wid:
                continue
            if info is None:
                self.position = k + 1
            yield self.world[self.rank + k * self.world_size]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(f"data state is for rank {state['rank']}/{state['world_size']}, "
                             f"this dataset is rank {self.rank}/{self.world_size}")
        self.position = int(state["position"])


def deciding_frames(world: SyntheticWorld) -> int:
    """Frames of a clip after which nothing of its stream is left to chance, given the prompt.

    A prompt-determined world (phase "fixed", one speed, canonical layout, clips from stream frame 0) needs none.
    With the fixed phase and clips from frame 0 the prompt names the start wall, the turn's direction and the
    event frames, so only the speed (and, in the random layout, radius and cross-axis place) is chance: two
    frames of a visible object show it, and an object that appears at frame a shows it by frame a + 1. Otherwise
    (random phase, or clips that start anywhere) the first `event_frames` frames show the phase, a turn and an
    appearance too."""
    if world.phase == "fixed" and world.max_start_frame == 0:
        if world.speed_min == world.speed_max and world.layout == "canonical":
            return 0
        return fixed_appear_frame(world.event_frames) + 2
    return world.event_frames


def world_of(data_cfg, **overrides) -> SyntheticWorld:
    """The SyntheticWorld of a `train.config.DataSection` (fields overridden by keyword, e.g. num_frames)."""
    fields = dict(height=data_cfg.height, width=data_cfg.width, num_frames=data_cfg.num_frames,
                  max_objects=data_cfg.max_objects, seed=data_cfg.seed, layout=data_cfg.layout,
                  speed_min=data_cfg.speed_min, speed_max=data_cfg.speed_max,
                  max_start_frame=data_cfg.max_start_frame, phase=data_cfg.phase)
    fields.update(overrides)
    return SyntheticWorld(**fields)
