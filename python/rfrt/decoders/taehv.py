"""A TAEHV-family tiny video decoder (SPEC §1.2), streaming, loaded only from user-provided weights.

Architecture (after madebyollin/taehv, written here from its published design): per-frame 2D convs, with
"memory blocks" whose residual branch also sees the previous frame's input features, and 1x1 "temporal grow"
convs that turn one frame's channels into `stride` consecutive frames. Three stages of three memory blocks,
each followed by optional x2 spatial upsampling and x1/x2 temporal growth. The first `temporal_upsample - 1`
output frames of a stream are dropped, so latent frame 0 yields one frame and later ones `temporal_upsample`
each, matching the Wan VAE's frame count. The output is in [0, 1] and is mapped to [-1, 1] here.

Module and parameter names follow the public checkpoints (`decoder.<index>.…` of one nn.Sequential), so their
weights load directly; encoder keys in a full checkpoint are ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from rfrt._checks import positive_int
from .base import StreamingDecoder

__all__ = ["TAEHVConfig", "TAEHVNet", "TAEHVDecoder"]


@dataclass(frozen=True)
class TAEHVConfig:
    """latent_channels: C of the latents (16 for Wan2.1). channels: widths of the three stages and the head.
    time_upscale: x2 temporal growth after stages 2 and 3. space_upscale: x2 spatial upsampling after each
    stage."""

    latent_channels: int = 16
    image_channels: int = 3
    channels: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_upscale: tuple[bool, bool] = (True, True)
    space_upscale: tuple[bool, bool, bool] = (True, True, True)

    def __post_init__(self) -> None:
        for name in ("latent_channels", "image_channels"):
            positive_int(f"TAEHVConfig.{name}", getattr(self, name))
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "time_upscale", tuple(self.time_upscale))
        object.__setattr__(self, "space_upscale", tuple(self.space_upscale))
        if len(self.channels) != 4 or any(not isinstance(c, int) or isinstance(c, bool) or c <= 0
                                          for c in self.channels):
            raise ValueError(f"TAEHVConfig.channels must be 4 positive ints, got {self.channels!r}")
        if len(self.time_upscale) != 2 or not all(isinstance(b, bool) for b in self.time_upscale):
            raise ValueError(f"TAEHVConfig.time_upscale must be 2 bools, got {self.time_upscale!r}")
        if len(self.space_upscale) != 3 or not all(isinstance(b, bool) for b in self.space_upscale):
            raise ValueError(f"TAEHVConfig.space_upscale must be 3 bools, got {self.space_upscale!r}")

    @property
    def temporal_upsample(self) -> int:
        return 2 ** sum(self.time_upscale)

    @property
    def spatial_upsample(self) -> int:
        return 2 ** sum(self.space_upscale)


def _conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Smoothly bounds latents to (-3, 3) so out-of-range values cannot blow up the tiny decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _MemBlock(nn.Module):
    """relu(convs(cat[x_t, x_{t-1}]) + skip(x_t)): x [N, C, H, W] and past, the previous frame's x, alike."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(2 * n_in, n_out), nn.ReLU(), _conv3x3(n_out, n_out), nn.ReLU(),
                                  _conv3x3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class _TGrow(nn.Module):
    """[N*T, C, H, W] -> [N*T*stride, C, H, W]: a 1x1 conv to stride*C channels, channel group k becoming the
    k-th of `stride` consecutive frames."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)


class _TPool(nn.Module):
    """[N*T, C, H, W] -> [N*T/stride, C, H, W]: `stride` consecutive frames stacked on channels, a 1x1 conv back
    to C (the encoder's temporal downsampling; the inverse layout of _TGrow)."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))


def _run_stream(seq: nn.Sequential, x: torch.Tensor, memory: list[torch.Tensor | None]) -> torch.Tensor:
    """Run a TAEHV encoder or decoder `seq` over x [B, T, C, h, w] -> [B, T', C', H', W'], batched over frames.

    memory: per memory block in order, the last input frame [B, C, H, W] it saw (None at stream start: zeros);
    updated in place. Each block's past is its own input shifted by one frame, which is what frame-by-frame
    processing would feed it. A _TPool needs T (at that depth) to be a multiple of its stride; a _TGrow
    multiplies T.
    """
    b, t = x.shape[:2]
    h = x.reshape(b * t, *x.shape[2:])
    k = 0
    for layer in seq:
        if isinstance(layer, _MemBlock):
            frames = h.reshape(b, t, *h.shape[1:])
            first = memory[k] if memory[k] is not None else torch.zeros_like(frames[:, 0])
            past = torch.cat([first.unsqueeze(1), frames[:, :-1]], dim=1).reshape_as(h)
            memory[k] = frames[:, -1].clone()
            h = layer(h, past)
            k += 1
        else:
            h = layer(h)
            if isinstance(layer, _TGrow):
                t *= layer.stride
            elif isinstance(layer, _TPool):
                t //= layer.stride
    return h.reshape(b, t, *h.shape[1:])


class TAEHVNet(nn.Module):
    """The decoder network; `decoder` is one nn.Sequential whose indices are the checkpoint's key names."""

    def __init__(self, config: TAEHVConfig = TAEHVConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        layers: list[nn.Module] = [_SoftClamp(), _conv3x3(config.latent_channels, c[0]), nn.ReLU()]
        grows = (1,) + tuple(2 if t else 1 for t in config.time_upscale)
        for stage in range(3):
            n = c[stage]
            layers += [_MemBlock(n, n), _MemBlock(n, n), _MemBlock(n, n),
                       nn.Upsample(scale_factor=2 if config.space_upscale[stage] else 1),
                       _TGrow(n, grows[stage]), _conv3x3(n, c[stage + 1], bias=False)]
        layers += [nn.ReLU(), _conv3x3(c[3], config.image_channels)]
        self.decoder = nn.Sequential(*layers)

    def forward_stream(self, x: torch.Tensor, memory: list[torch.Tensor | None]) -> torch.Tensor:
        """x [B, T, C, h, w] -> [B, T*t_up, image_channels, H, W] (untrimmed, pre-clamp).

        memory holds, per memory block in order, the last frame [B, C, H, W] it saw (None at stream start, where
        the past is zeros); it is updated in place so the next chunk continues the stream.
        """
        return _run_stream(self.decoder, x, memory)

    @property
    def num_memory_blocks(self) -> int:
        return sum(isinstance(m, _MemBlock) for m in self.decoder)


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TAEHV weights not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"TAEHV weights {path!r}: expected a state dict, got {type(sd).__name__}")
    return sd


def _load_checked(net: nn.Module, sd: dict[str, torch.Tensor], path, config) -> None:
    """Load sd into net; any missing, unexpected or mis-shaped key is a ValueError naming it."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"TAEHV weights {os.fspath(path)!r} do not match {config}: "
                         f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if sd[k].shape != v.shape]
    if bad:
        raise ValueError(f"TAEHV weights {os.fspath(path)!r} have mis-shaped tensors for {config} "
                         f"(wrong channels?): {bad[:8]}")
    net.load_state_dict(sd)


class TAEHVDecoder(StreamingDecoder):
    """Streaming TAEHV-family decoder: per-memory-block last frames carried across chunks.

    net: a TAEHVNet (random or already loaded). Use `from_file` to load user-provided weights.
    Latents go in as the DiT produces them (normalised Wan latents; TAEHV is trained on those).
    """

    def __init__(self, net: TAEHVNet):
        super().__init__()
        if not isinstance(net, TAEHVNet):
            raise TypeError(f"TAEHVDecoder: expected a TAEHVNet, got {type(net).__name__}")
        self.net = net.eval()
        self._memory: list[torch.Tensor | None] = [None] * net.num_memory_blocks
        self._frames_out = 0  # untrimmed frames produced, to drop the stream's first t_up - 1 frames
        self.weights_path: str | None = None  # set by from_file: where encoder() finds the encoder's weights

    @classmethod
    def from_file(cls, path: str | os.PathLike, config: TAEHVConfig = TAEHVConfig(), *,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> "TAEHVDecoder":
        """Load weights from a .safetensors file or a torch.save'd state dict (read with weights_only=True).

        Keys are `decoder.*` (a full TAEHV checkpoint's `encoder.*` keys are ignored); any missing, unexpected
        or mis-shaped key is an error naming it.
        """
        net = TAEHVNet(config)
        sd = _read_state_dict(path)
        _load_checked(net, {k: v for k, v in sd.items() if not k.startswith("encoder.")}, path, config)
        dec = cls(net.to(device=device, dtype=dtype))
        dec.weights_path = os.fspath(path)
        return dec

    def encoder(self):
        """The encoder of the same weights file (`encoder.*` keys), on the decoder's device and dtype."""
        from .taehv_encoder import TAEHVEncoder

        if self.weights_path is None:
            raise NotImplementedError("TAEHVDecoder built from a network, not a weights file: load its encoder "
                                      "with rfrt.decoders.TAEHVEncoder.from_file(path)")
        p = next(self.net.parameters())
        return TAEHVEncoder.from_file(self.weights_path, self.net.config, device=p.device, dtype=p.dtype)

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the decoder's weights (`decoder.*` keys) as .safetensors, or with torch.save otherwise."""
        path = os.fspath(path)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file(sd, path)
        else:
            torch.save(sd, path)

    @property
    def temporal_upsample(self) -> int:
        return self.net.config.temporal_upsample

    @property
    def spatial_upsample(self) -> int:
        return self.net.config.spatial_upsample

    @property
    def latent_channels(self) -> int:
        return self.net.config.latent_channels

    def _reset_state(self) -> None:
        self._memory = [None] * self.net.num_memory_blocks
        self._frames_out = 0

    def _decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.net.parameters())
        out = self.net.forward_stream(latents.to(device=p.device, dtype=p.dtype), self._memory)
        drop = max(0, (self.temporal_upsample - self.first_latent_frames) - self._frames_out)
        self._frames_out += out.shape[1]
        return out[:, drop:].clamp(0.0, 1.0) * 2 - 1
