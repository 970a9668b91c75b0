"""`ServeConfig`: every server option, checked when it is made (so `rfrt serve` refuses a bad option at start-up,
before the model loads, instead of failing on the first WebSocket)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from rfrt._checks import MAX_PROMPT_CHARS

from .access import check_exposure

__all__ = ["ServeConfig"]

# The `rfrt serve` option of each field that has one, so that a refusal names what the user typed.
_FLAGS = {"max_streams": "--max-streams", "max_viewers": "--max-viewers", "queue_frames": "--queue-frames",
          "send_buffer_bytes": "--send-buffer-bytes", "commands_per_second": "--commands-per-second",
          "idle_grace_s": "--idle-grace", "port": "--port", "token": "--token", "allowed_hosts": "--allow-host",
          "allowed_origins": "--allow-origin"}


def _name(field: str) -> str:
    return f"ServeConfig.{field}" + (f" ({_FLAGS[field]})" if field in _FLAGS else "")


@dataclass(frozen=True)
class ServeConfig:
    """host/port: where to listen (loopback by default; anything else needs a token).
    token: when set, every request but /app.js must carry ?token=TOKEN.
    allowed_hosts: Host names answered besides the bind address and loopback names ("*": any; needs a token).
    allowed_origins: page origins, e.g. "https://app.example", that may open the WebSocket besides the
    server's own pages ("*": any; needs a token). See access.py for why.
    max_streams: streams that may exist at once. max_viewers: WebSocket clients at once, over all streams.
    queue_frames: frames queued per viewer before its oldest are dropped. max_prompt_chars: longer prompts are
    refused. send_buffer_bytes: when set, caps each viewer's socket and transport buffers, so that a stalled
    viewer is detected (and its frames dropped) after that many bytes rather than after the kernel's megabytes.
    commands_per_second / command_burst: each client's command rate (a token bucket); a prompt over the limit
    waits and is replaced by a later one, any other command is refused. command_queue: commands that may wait
    for the generator thread per stream (a run of the same command counts once).
    idle_grace_s: a running stream that nobody watches is stopped after this many seconds (inf: never).
    pace: generate no faster than the video's frame rate (False: as fast as possible, e.g. to record).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_streams: int = 1
    max_viewers: int = 32
    queue_frames: int = 8
    max_prompt_chars: int = MAX_PROMPT_CHARS  # the generator's own limit (rfrt._checks), not a second one
    send_buffer_bytes: int | None = None
    commands_per_second: float = 10.0
    command_burst: int = 20
    command_queue: int = 16
    idle_grace_s: float = 30.0
    pace: bool = True

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_viewers", "queue_frames", "max_prompt_chars", "command_burst",
                     "command_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{_name(name)} must be an integer >= 1, got {value!r}")
        if self.send_buffer_bytes is not None and (isinstance(self.send_buffer_bytes, bool) or
                                                   not isinstance(self.send_buffer_bytes, int) or
                                                   self.send_buffer_bytes < 1):
            raise ValueError(f"{_name('send_buffer_bytes')} must be an integer >= 1, "
                             f"got {self.send_buffer_bytes!r}")
        if not (isinstance(self.commands_per_second, (int, float)) and math.isfinite(self.commands_per_second)
                and self.commands_per_second > 0):
            raise ValueError(f"{_name('commands_per_second')} must be a finite number > 0, "
                             f"got {self.commands_per_second!r}")
        if not (isinstance(self.idle_grace_s, (int, float)) and self.idle_grace_s >= 0):  # NaN fails too
            raise ValueError(f"{_name('idle_grace_s')} must be >= 0 seconds (inf: never), got {self.idle_grace_s!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(f"{_name('port')} must be in 0..65535, got {self.port!r}")
        if self.token is not None and not self.token:
            raise ValueError(f"{_name('token')} must not be empty (leave it unset for no token)")
        for name in ("allowed_hosts", "allowed_origins"):
            values = getattr(self, name)
            if isinstance(values, str) or not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"{_name(name)} must be a tuple of non-empty strings, got {values!r}")
        check_exposure(self.host, self.token, self.allowed_hosts, self.allowed_origins)
