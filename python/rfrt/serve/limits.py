"""What one client may cost the server: a token bucket per client, and a bounded, coalescing command queue per
stream.

Why: the generator thread applies every pending command between two chunks, so each command delays the next
chunk for every viewer (the probe froze another viewer for 22.7 s with 1,729 re-cached prompt switches). The
bucket bounds how many commands one client gets in (`rate` per second, `burst` at once); the queue bounds how
many can wait at all, whoever sent them; and coalescing makes a run of the same command cost one: of several
prompt switches waiting behind a chunk only the latest is applied, which is also what the typist wants.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

__all__ = ["TokenBucket", "CommandQueue"]


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; take() spends one if there is one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until take() can succeed (0 if it can now)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)


class CommandQueue:
    """A FIFO of (command, arguments, origin) shared by the event loop (put) and a generator thread (get).

    put() merges a command into the last waiting one when both are the same command (a later field wins: the
    latest prompt, the latest seed), and refuses (returns False) when `maxsize` commands already wait.
    put_control() always gets in (shutdown must never be refused)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"CommandQueue maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque = collections.deque()
        self._ready = threading.Condition()

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)

    def put(self, cmd: str, kw: dict, origin=None) -> bool:
        with self._ready:
            if self._items and self._items[-1][0] == cmd:
                _, old, _ = self._items[-1]
                self._items[-1] = (cmd, {**old, **kw}, origin)
            elif len(self._items) >= self.maxsize:
                return False
            else:
                self._items.append((cmd, dict(kw), origin))
            self._ready.notify()
            return True

    def put_control(self, cmd: str) -> None:
        with self._ready:
            self._items.append((cmd, {}, None))
            self._ready.notify()

    def get(self, timeout: float | None) -> tuple | None:
        """The oldest command; waits up to `timeout` seconds (None: for ever, 0: not at all); None if none came."""
        with self._ready:
            if not self._items and timeout != 0:
                self._ready.wait_for(lambda: self._items, timeout)
            return self._items.popleft() if self._items else None
