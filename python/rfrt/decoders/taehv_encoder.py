"""The TAEHV family's encoder (the encode path of `TAEHVDecoder`), streaming, from user-provided weights.

Architecture (after madebyollin/taehv's published design): per-frame 2D convs at width 64; three stages, each
a temporal pool (`stride` consecutive frames stacked on channels, then a 1x1 conv), a stride-2 3x3 conv and
three memory blocks; then a 3x3 conv to the latent channels. Input frames are in [0, 1]. Parameter names follow
the public checkpoints' `encoder.<index>.…` of one nn.Sequential, so a full TAEHV file loads into
`TAEHVDecoder` (decoder.*) and `TAEHVEncoder` (encoder.*) alike.

Frame alignment, chosen to match the decoder: the decoder turns latent 0 into temporal_upsample frames and
drops all but the last, so latent i stands for frames 4i-3 .. 4i (with 4 = temporal_downsample). The encoder
therefore repeats frame 0 three times at the start of a stream: 1 + 4k frames -> 1 + k latents, the Wan VAE's
count, and frame 0 alone gives latent frame 0.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .base import StreamingEncoder
from .taehv import TAEHVConfig, _conv3x3, _load_checked, _MemBlock, _read_state_dict, _run_stream, _TPool

__all__ = ["TAEHVEncoderNet", "TAEHVEncoder"]

ENCODER_WIDTH = 64  # the public TAEHV encoders' width at every stage


class TAEHVEncoderNet(nn.Module):
    """The encoder network; `encoder` is one nn.Sequential whose indices are the checkpoint's key names.

    The temporal pools mirror the decoder's growths (config.time_upscale, last growth first) and the stride-2
    convs its spatial upsamplings, so encoder and decoder of one config have the same strides.
    """

    def __init__(self, config: TAEHVConfig = TAEHVConfig()):
        super().__init__()
        self.config = config
        n = ENCODER_WIDTH
        pools = tuple(2 if t else 1 for t in reversed(config.time_upscale)) + (1,)
        layers: list[nn.Module] = [_conv3x3(config.image_channels, n), nn.ReLU()]
        for stage in range(3):
            stride = 2 if config.space_upscale[2 - stage] else 1
            layers += [_TPool(n, pools[stage]), nn.Conv2d(n, n, 3, stride=stride, padding=1, bias=False),
                       _MemBlock(n, n), _MemBlock(n, n), _MemBlock(n, n)]
        layers.append(_conv3x3(n, config.latent_channels))
        self.encoder = nn.Sequential(*layers)

    @property
    def num_memory_blocks(self) -> int:
        return sum(isinstance(m, _MemBlock) for m in self.encoder)


class TAEHVEncoder(StreamingEncoder):
    """Streaming TAEHV encoder: frames [B, T, 3, H, W] in [-1, 1] -> latents [B, F, C, H/8, W/8] (the DiT's
    normalised Wan latents, which TAEHV is trained on), memory-block state carried across calls."""

    def __init__(self, net: TAEHVEncoderNet):
        super().__init__()
        if not isinstance(net, TAEHVEncoderNet):
            raise TypeError(f"TAEHVEncoder: expected a TAEHVEncoderNet, got {type(net).__name__}")
        self.net = net.eval()
        self._memory: list[torch.Tensor | None] = [None] * net.num_memory_blocks

    @classmethod
    def from_file(cls, path: str | os.PathLike, config: TAEHVConfig = TAEHVConfig(), *,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> "TAEHVEncoder":
        """Load the `encoder.*` keys of a TAEHV weights file (.safetensors or a weights_only torch file).

        A file without encoder keys (a decoder-only checkpoint) is a ValueError saying so; missing, unexpected
        or mis-shaped keys are errors naming them.
        """
        sd = {k: v for k, v in _read_state_dict(path).items() if k.startswith("encoder.")}
        if not sd:
            raise ValueError(f"TAEHV weights {os.fspath(path)!r} have no encoder (no encoder.* keys): frames "
                             "cannot be encoded with them; pass latents, or weights that include the encoder")
        net = TAEHVEncoderNet(config)
        _load_checked(net, sd, path, config)
        return cls(net.to(device=device, dtype=dtype))

    @property
    def temporal_downsample(self) -> int:
        return self.net.config.temporal_upsample

    @property
    def spatial_downsample(self) -> int:
        return self.net.config.spatial_upsample

    @property
    def latent_channels(self) -> int:
        return self.net.config.latent_channels

    def _reset_state(self) -> None:
        self._memory = [None] * self.net.num_memory_blocks

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        p = next(self.net.parameters())
        x = (frames.to(device=p.device, dtype=p.dtype) + 1) / 2
        if self._frames_seen == 0:  # frame 0 stands for the frames latent 0's decode hides (module docstring)
            x = torch.cat([x[:, :1].expand(-1, self.temporal_downsample - 1, -1, -1, -1), x], dim=1)
        return _run_stream(self.net.encoder, x, self._memory)
