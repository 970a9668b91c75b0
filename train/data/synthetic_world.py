"""A synthetic video world the project generates itself: coloured shapes that move, bounce, turn and appear.

Every sample is a function of (seed, index) only, so a dataset is deterministic per seed and identical however
it is sharded over ranks and workers. A scene is sampled first (`sample_scene`), then rendered
(`render_scene` -> [T, 3, H, W] float in [-1, 1]) and described (`describe_scene` -> "a small red circle
moves right on a blue background"). Image coordinates: x grows to the right, y grows downwards ("up" = -y).

The prompt only says what the pixels show: "moves <dir>" objects never touch a wall, "turns" objects change
direction once by 90 degrees, "bounces" objects hit a wall at least once, and "appears" objects are invisible
for their first frames.

Two layouts. "random" draws radius, start, speed and timing freely, so a prompt leaves much to chance.
"canonical" fixes them from the prompt's words (a fixed radius per size; a mover starts at the wall it moves
away from, centred on the other axis; still and bouncing objects start in the centre; a turn comes mid-clip),
so the prompt determines the video. The embedded default model is trained on "canonical": a 0.25M-parameter
model trained for CPU-minutes could not learn where to put a randomly placed object (objects drawn in 20 % of
frames after 3000 steps, train/results/default_model.md), and a prompt-determined world is the one a newcomer
can check by eye.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
CANONICAL_RADIUS = {"small": 0.12, "large": 0.2}  # fraction of min(H, W), inside SIZES' ranges
CANONICAL_TRAVEL = 0.8  # fraction of the free room a mover crosses over the clip


@dataclass(frozen=True)
class ObjectSpec:
    """One object. Positions/radius in pixels; velocity in pixels per frame.

    motion "turns": velocity `velocity` until `turn_frame`, then `velocity2` (perpendicular).
    motion "appears": invisible before `appear_frame`.
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


def _sample_object(rng: np.random.Generator, colour: str, H: int, W: int, T: int) -> ObjectSpec:
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = ("small", "large")[rng.integers(2)]
    r = float(rng.uniform(*SIZES[size]) * min(H, W))
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    lo_x, hi_x, lo_y, hi_y = r, W - 1 - r, r, H - 1 - r
    room = min(hi_x - lo_x, hi_y - lo_y)
    steps = max(T - 1, 1)
    names = list(DIRECTIONS)
    d1 = names[rng.integers(4)]
    dx, dy = DIRECTIONS[d1]

    def start_for(travel_x: float, travel_y: float) -> tuple[float, float]:
        # Start so that the whole straight-line travel (signed, per axis) stays inside the walls.
        x = rng.uniform(lo_x + max(0.0, -travel_x), hi_x - max(0.0, travel_x))
        y = rng.uniform(lo_y + max(0.0, -travel_y), hi_y - max(0.0, travel_y))
        return float(x), float(y)

    common = dict(shape=shape, colour=colour, size=size, radius=r)
    if motion == "still":
        return ObjectSpec(**common, start=start_for(0, 0), velocity=(0.0, 0.0), motion=motion)
    if motion == "bounces":
        # Fast enough to cover more than the free room, so at least one wall is hit within the clip.
        speed = float(rng.uniform(1.3, 2.0) * room / steps)
        start = start_for(0, 0)
        return ObjectSpec(**common, start=start, velocity=(dx * speed, dy * speed), motion=motion, direction=d1)
    if motion == "turns":
        turn = int(rng.integers(max(1, steps // 3), max(2, steps - steps // 3 + 1)))
        d2 = [n for n in names if DIRECTIONS[n][0] * dx + DIRECTIONS[n][1] * dy == 0][rng.integers(2)]
        ex, ey = DIRECTIONS[d2]
        speed = float(rng.uniform(0.5, 0.9) * room / steps)
        tx, ty = speed * (dx * turn + ex * (steps - turn)), speed * (dy * turn + ey * (steps - turn))
        return ObjectSpec(**common, start=start_for(tx, ty), velocity=(dx * speed, dy * speed), motion=motion,
                          direction=d1, direction2=d2, velocity2=(ex * speed, ey * speed), turn_frame=turn)
    speed = float(rng.uniform(0.5, 0.9) * room / steps)
    appear = int(rng.integers(1, max(2, T // 2 + 1))) if motion == "appears" else 0
    return ObjectSpec(**common, start=start_for(dx * speed * steps, dy * speed * steps),
                      velocity=(dx * speed, dy * speed), motion=motion, direction=d1, appear_frame=appear)


def _canonical_object(rng: np.random.Generator, colour: str, H: int, W: int, T: int) -> ObjectSpec:
    """An object whose radius, start, speed and timing follow from its words alone (module docstring)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = ("small", "large")[rng.integers(2)]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    names = list(DIRECTIONS)
    d1 = names[rng.integers(4)]
    r = CANONICAL_RADIUS[size] * min(H, W)
    lo_x, hi_x, lo_y, hi_y = r, W - 1 - r, r, H - 1 - r
    centre = ((lo_x + hi_x) / 2, (lo_y + hi_y) / 2)
    steps = max(T - 1, 1)
    room = min(hi_x - lo_x, hi_y - lo_y)
    dx, dy = DIRECTIONS[d1]

    def away_from(dx: int, dy: int, x: float, y: float) -> tuple[float, float]:
        # On each axis of motion, start at the wall the object moves away from.
        return (x if dx == 0 else (lo_x if dx > 0 else hi_x), y if dy == 0 else (lo_y if dy > 0 else hi_y))

    common = dict(shape=shape, colour=colour, size=size, radius=r)
    if motion == "still":
        return ObjectSpec(**common, start=centre, velocity=(0.0, 0.0), motion=motion)
    if motion == "bounces":
        # Always sets off right / down; 1.5 x the free room per clip, so it meets a wall.
        d1 = "right" if d1 in ("left", "right") else "down"
        dx, dy = DIRECTIONS[d1]
        speed = 1.5 * room / steps
        return ObjectSpec(**common, start=centre, velocity=(dx * speed, dy * speed), motion=motion, direction=d1)
    if motion == "turns":
        turn = steps // 2
        d2 = [n for n in names if DIRECTIONS[n][0] * dx + DIRECTIONS[n][1] * dy == 0][rng.integers(2)]
        ex, ey = DIRECTIONS[d2]
        speed = CANONICAL_TRAVEL * room / max(turn, steps - turn)
        return ObjectSpec(**common, start=away_from(dx + ex, dy + ey, *centre), velocity=(dx * speed, dy * speed),
                          motion=motion, direction=d1, direction2=d2, velocity2=(ex * speed, ey * speed),
                          turn_frame=turn)
    speed = CANONICAL_TRAVEL * room / steps
    appear = T // 3 if motion == "appears" else 0
    return ObjectSpec(**common, start=away_from(dx, dy, *centre), velocity=(dx * speed, dy * speed), motion=motion,
                      direction=d1, appear_frame=appear)


def sample_scene(rng: np.random.Generator, height: int, width: int, num_frames: int, max_objects: int = 2,
                 layout: str = "random") -> Scene:
    """Draw a background and 1..max_objects objects with distinct colours, all different from the background."""
    if min(height, width) < 8 or num_frames < 2:
        raise ValueError(f"need height, width >= 8 and num_frames >= 2, got {height}x{width}x{num_frames}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    free = [c for c in names if c != background]
    n = int(rng.integers(1, max_objects + 1))
    colours = [free[i] for i in rng.permutation(len(free))[:n]]
    draw = _canonical_object if layout == "canonical" else _sample_object
    objects = tuple(draw(rng, c, height, width, num_frames) for c in colours)
    return Scene(background, objects, height, width, num_frames)


def trajectory(obj: ObjectSpec, scene: Scene) -> np.ndarray:
    """Centre positions [T, 2] (x, y) of `obj` over the clip."""
    t = np.arange(scene.num_frames, dtype=np.float64)
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
    """Render a scene to a float32 video [T, 3, H, W] in [-1, 1] (objects drawn in order, later on top).

    Drawn with numpy: these tensors are small and torch's intra-op threading only adds overhead here.
    """
    T, H, W = scene.num_frames, scene.height, scene.width
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij")
    video = np.empty((T, H, W, 3), dtype=np.float32)
    video[:] = np.asarray(COLOURS[scene.background], dtype=np.float32)
    for obj in scene.objects:
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        for t, (cx, cy) in enumerate(trajectory(obj, scene)):
            if t >= obj.appear_frame:
                video[t][_mask(obj.shape, float(cx), float(cy), obj.radius, xs, ys)] = colour
    return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 3, 1, 2) * 2.0 - 1.0))


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

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 8 or self.num_frames < 2 or self.max_objects < 1:
            raise ValueError(f"invalid SyntheticWorld {self}: need H, W >= 8, num_frames >= 2, max_objects >= 1")
        if self.layout not in LAYOUTS:
            raise ValueError(f"invalid SyntheticWorld layout {self.layout!r}; expected one of {LAYOUTS}")

    def scene(self, index: int) -> Scene:
        return sample_scene(sample_rng(self.seed, index), self.height, self.width, self.num_frames,
                            self.max_objects, self.layout)

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
        world = SyntheticWorld(data_cfg.height, data_cfg.width, data_cfg.num_frames, data_cfg.max_objects,
                               data_cfg.seed, data_cfg.layout)
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
