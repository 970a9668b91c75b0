"""The streaming decoder protocol shared by every latent-to-pixel decoder.

Shaped like a stateful decoder (SPEC §5.6, after taehv): latents arrive in stream order as chunks of latent
frames, each `decode` returns the frames that chunk completes, `flush` returns whatever is still held back, and
`reset` starts a new stream. The causal decoders here hold nothing back, but a decoder with look-ahead would.
"""
from __future__ import annotations

import abc

import torch

__all__ = ["StreamingDecoder", "StreamingEncoder", "to_uint8_frames"]



def stream_frames(num_latent_frames: int, start: int, first_latent_frames: int, per_latent_frame: int) -> int:
    """Video frames of latent frames [start, start + num_latent_frames) of a causal stream: latent frame 0 stands
    for `first_latent_frames` frames, every later one for `per_latent_frame` (decoders and encoders alike)."""
    if num_latent_frames < 0 or start < 0:
        raise ValueError(f"frames_for: counts must be >= 0, got {num_latent_frames}, {start}")
    first = 1 if (start == 0 and num_latent_frames > 0) else 0
    return first * first_latent_frames + (num_latent_frames - first) * per_latent_frame

class StreamingDecoder(abc.ABC):
    """Latents [B, F, C, h, w] in, frames [B, T, 3, H, W] (float, in [-1, 1]) out, state carried across calls.

    The first latent frame of a stream yields `first_latent_frames` frames, every later one
    `temporal_upsample` frames (1 and 4 for the Wan2.1 family: 21 latent frames -> 81 frames).
    """

    first_latent_frames: int = 1

    def __init__(self) -> None:
        self._latent_frames_seen = 0
        self._stream_shape: tuple[int, int, int] | None = None  # (B, h, w) of the current stream
        self._out_like: tuple[int, int, int, torch.dtype, torch.device] | None = None

    # ---- facts every decoder reports ----
    @property
    @abc.abstractmethod
    def temporal_upsample(self) -> int:
        """Frames per latent frame after the first."""

    @property
    @abc.abstractmethod
    def spatial_upsample(self) -> int:
        """Pixels per latent pixel along each of height and width."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int:
        """C of the latents this decoder takes."""

    def frames_for(self, num_latent_frames: int, start: int = 0) -> int:
        """Frames yielded by latent frames [start, start + num_latent_frames) of a stream."""
        return stream_frames(num_latent_frames, start, self.first_latent_frames, self.temporal_upsample)

    @property
    def latent_frames_seen(self) -> int:
        """Latent frames decoded since the last reset."""
        return self._latent_frames_seen

    # ---- the protocol ----
    def reset(self) -> None:
        """Forget the stream: the next latent frame is frame 0 of a new video."""
        self._latent_frames_seen = 0
        self._stream_shape = None
        self._out_like = None
        self._reset_state()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk of the stream.

        latents: [B, F, C, h, w], F >= 1, the next F latent frames in stream order (same B, h, w as the rest of
        the stream). Returns [B, T, 3, h*s, w*s] float in [-1, 1] with T = frames_for(F, latent_frames_seen).
        """
        self._check_latents(latents)
        frames = self._decode_chunk(latents)
        self._latent_frames_seen += latents.shape[1]
        self._out_like = (frames.shape[0], frames.shape[3], frames.shape[4], frames.dtype, frames.device)
        return frames

    def flush(self) -> torch.Tensor:
        """Frames still held back at the end of a stream: [B, T, 3, H, W] (T = 0 for causal decoders; an empty
        [0, 0, 3, 0, 0] tensor when nothing was decoded yet). The stream state is kept; call reset() to end it."""
        if self._out_like is None:
            return torch.empty(0, 0, 3, 0, 0)
        b, h, w, dtype, device = self._out_like
        return torch.empty(b, 0, 3, h, w, dtype=dtype, device=device)

    def encoder(self) -> "StreamingEncoder":
        """The encode path of this decoder's family (a new encoder stream), for priming a stream from frames.
        Raises NotImplementedError, naming the decoder, where the family has none."""
        raise NotImplementedError(f"{type(self).__name__} has no encoder: frames cannot be turned into its "
                                  "latents (pass latents instead)")

    # ---- for implementations ----
    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Drop the decoder's temporal state."""

    @abc.abstractmethod
    def _decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, F, C, h, w] (validated) -> frames [B, T, 3, H, W] in [-1, 1]."""

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"{type(self).__name__}.decode: latents must be a [B, F, C, h, w] tensor, got {shape}")
        b, f, c, h, w = latents.shape
        if f == 0 or b == 0:
            raise ValueError(f"{type(self).__name__}.decode: empty chunk {tuple(latents.shape)}")
        if c != self.latent_channels:
            raise ValueError(f"{type(self).__name__}.decode: latents have {c} channels (dim 2 of [B, F, C, h, w]), "
                             f"the decoder takes {self.latent_channels}")
        if not latents.is_floating_point():
            raise ValueError(f"{type(self).__name__}.decode: latents must be floating point, got {latents.dtype}")
        if self._stream_shape is None:
            self._stream_shape = (b, h, w)
        elif self._stream_shape != (b, h, w):
            raise ValueError(f"{type(self).__name__}.decode: chunk (B, h, w) = {(b, h, w)} differs from the "
                             f"stream's {self._stream_shape}; call reset() to start a new stream")


class StreamingEncoder(abc.ABC):
    """Frames [B, T, 3, H, W] (float, in [-1, 1]) in, latents [B, F, C, h, w] in the DiT's space out.

    The encode path of a decoder family (priming a stream from given frames), causal like its decoder: the first
    call of a stream takes `first_latent_frames` + k * `temporal_downsample` frames (frame 0 alone gives latent
    frame 0; 1 + 4k for the Wan family), every later call k * `temporal_downsample`, and state is carried across
    calls, so encoding a clip in pieces equals encoding it at once. `reset` starts a new stream.
    """

    first_latent_frames: int = 1

    def __init__(self) -> None:
        self._frames_seen = 0

    @property
    @abc.abstractmethod
    def temporal_downsample(self) -> int:
        """Frames per latent frame after the first."""

    @property
    @abc.abstractmethod
    def spatial_downsample(self) -> int:
        """Pixels per latent pixel along each of height and width."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int:
        """C of the latents this encoder produces."""

    def frames_for(self, num_latent_frames: int, start: int = 0) -> int:
        """Frames that latent frames [start, start + num_latent_frames) of a stream are encoded from."""
        return stream_frames(num_latent_frames, start, self.first_latent_frames, self.temporal_downsample)

    def latent_frames_for(self, num_frames: int) -> int:
        """Whole latent frames a stream of num_frames frames gives (frames beyond them cannot be encoded)."""
        if num_frames < self.first_latent_frames:
            return 0
        return 1 + (num_frames - self.first_latent_frames) // self.temporal_downsample

    def reset(self) -> None:
        """Forget the stream: the next frame is frame 0 of a new video."""
        self._frames_seen = 0
        self._reset_state()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode the next frames of the stream.

        frames: [B, T, 3, H, W] float in [-1, 1], H and W multiples of spatial_downsample; T completes whole
        latent frames (see the class docstring). Returns [B, F, C, H / s, W / s] in the encoder's dtype/device.
        """
        name = type(self).__name__
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"{name}.encode: frames must be a [B, T, 3, H, W] tensor, got {shape}")
        if not frames.is_floating_point():
            raise ValueError(f"{name}.encode: frames must be floating point in [-1, 1], got {frames.dtype}")
        b, t, _, h, w = frames.shape
        s = self.spatial_downsample
        if b == 0 or t == 0 or h == 0 or w == 0 or h % s or w % s:
            raise ValueError(f"{name}.encode: frames {tuple(frames.shape)} must be non-empty with H and W "
                             f"multiples of {s}")
        start = self._frames_seen
        first = self.first_latent_frames if start == 0 else 0
        if t < first or (t - first) % self.temporal_downsample:
            raise ValueError(f"{name}.encode: {t} frames do not make whole latent frames at stream frame {start} "
                             f"(need {first} + k * {self.temporal_downsample})")
        latents = self._encode_frames(frames)
        self._frames_seen += t
        return latents

    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Drop the encoder's temporal state."""

    @abc.abstractmethod
    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, H, W] (validated) -> latents [B, F, C, h, w]."""


def uint8_frames_on_device(frames: torch.Tensor) -> torch.Tensor:
    """Float frames [B, T, 3, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3] on the frames' device (values clamped,
    rounded)."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"uint8 frames: expected [B, T, 3, H, W], got {tuple(frames.shape)}")
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()


def to_uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    """`uint8_frames_on_device`, then on the CPU: [B, T, 3, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3]."""
    return uint8_frames_on_device(frames).cpu()
