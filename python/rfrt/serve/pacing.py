"""Camera-like pacing of a live stream: no faster than the video's frame rate, one chunk ahead at most.

Why: a generator faster than real time (74 FPS against a 16 FPS video in the probe) fills every viewer's queue,
and the page drops what it cannot show (318 of 420 frames in 6 s): motion jumps, and a prompt switch waits
behind frames nobody will see. A camera delivers frames at their rate; so does a paced stream. A chunk arrives
as a burst of frames, so the stream keeps one chunk of lead: chunk k is published while chunk k-1 plays, and a
viewer that keeps up always has the next chunk before it needs it, and never more than two chunks queued.
A stream that is slower than real time never waits, and a late chunk (a slow step, a re-cache) starts the
clock again from now instead of bursting to catch up. Unpaced (`enabled=False`) is for recording and
benchmarks; a viewer slower than the stream still drops frames from its own queue either way.
"""
from __future__ import annotations

import time
from typing import Callable

__all__ = ["Pacer"]


class Pacer:
    """wait_s() before generating a chunk, published(frames) once it is out; restart() on start/reset/resume."""

    def __init__(self, fps: float, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if not fps > 0:
            raise ValueError(f"Pacer fps must be > 0, got {fps}")
        self.fps, self.enabled, self._clock = fps, enabled, clock
        self._due: float | None = None  # when the next chunk's first frame is due to be shown
        self._lead = 0.0  # one chunk's duration

    def restart(self) -> None:
        self._due = None

    def published(self, frames: int) -> None:
        now = self._clock()
        if self._due is None or self._due < now:
            self._due = now  # first chunk, or late: this chunk starts playing now
        self._lead = frames / self.fps
        self._due += self._lead

    def wait_s(self) -> float:
        """Seconds to wait before generating the next chunk (0: go)."""
        if not self.enabled or self._due is None:
            return 0.0
        return max(0.0, self._due - self._lead - self._clock())
