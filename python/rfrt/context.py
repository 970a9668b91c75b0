"""Given frames for priming a stream: read an image or a video, bring it to the stream's format, encode it.

A stream can start from frames the user gives (video continuation, image-to-video): `StreamGenerator.reset(
prompt, seed, context=...)` encodes them with the model's own encoder and writes them into the cache as if the
model had generated them (rfrt.runtime.prime). This module is the part before the cache:

* Reading: images and videos alike through PyAV (PNG, JPEG, MP4, ...; one library, the one the MP4 writer
  uses). `read_frames` keeps the last `last` frames of a video (a continuation continues from its end).
* Format (`to_rgb`): grey is replicated to R = G = B; an alpha channel is composited over black
  (rgb * alpha / 255, rounded), so transparent pixels become black, not whatever colour they hold; 1, 2, 3 or 4
  channels are accepted, anything else is an error.
* Size (`fit_frames`): frames at the stream's size pass unchanged; other sizes (odd ones included) are centre-
  cropped to the stream's aspect ratio (the least cropping) and resized with bilinear interpolation with
  antialiasing (torch.nn.functional.interpolate, align_corners=False). Resizing rather than refusing, because an
  image from anywhere rarely has the model's exact size; cropping rather than stretching, because a distorted
  object is a wrong object.
* Length: a context is at most MAX_CONTEXT_LATENT_FRAMES latent frames. Every whole chunk of it gets a context
  pass (one DiT forward) and the evicted ones are folded into the EMA sink as streaming would, so its cost grows
  with its length while its effect on the stream is the window and the sink only; past the limit, priming is an
  error that says to pass fewer frames (`--init-frames N` keeps the last N).
"""
from __future__ import annotations

import collections
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ContextError", "MAX_CONTEXT_LATENT_FRAMES", "read_frames", "probe", "to_rgb", "fit_frames",
           "check_latents", "context_note"]

MAX_CONTEXT_LATENT_FRAMES = 256  # 85 chunks of 3: 64 s of Wan video (1 + 4 * 255 frames), 16 s of the default


class ContextError(ValueError):
    """Frames or latents that cannot prime a stream (missing file, not an image, no frames, wrong channels,
    too long, non-finite latents); the message names the problem."""


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading context images and videos needs PyAV (pip install 'rfrt[video]')") from e
    return av


def _frame_array(frame) -> np.ndarray:
    """A decoded PyAV frame -> uint8 [H, W, C], C = 1 (grey), 3 (RGB) or 4 (RGBA: any format with alpha)."""
    comps = frame.format.components
    if any(c.is_alpha for c in comps):
        return frame.to_ndarray(format="rgba")
    if not frame.format.has_palette and all(c.is_luma for c in comps):
        return frame.to_ndarray(format="gray")[..., None]
    return frame.to_ndarray(format="rgb24")


def _open(path: str):
    """The opened container of an image or video file (ContextError for a missing / unreadable one)."""
    if not os.path.exists(path):
        raise ContextError(f"context file {path!r} does not exist")
    if os.path.isdir(path):
        raise ContextError(f"context path {path!r} is a directory, not an image or video file")
    av = _import_av()
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as err:
        raise ContextError(f"cannot read {path!r} as an image or a video: {err}") from None
    if not container.streams.video:
        container.close()
        raise ContextError(f"{path!r} has no video stream (no image or video in it)")
    return container


def probe(path: str | os.PathLike) -> tuple[int, int]:
    """Check that a file holds a decodable image or video without reading it all -> (H, W) of its first frame.
    The same ContextErrors as read_frames."""
    path = os.fspath(path)
    av = _import_av()
    with _open(path) as container:
        try:
            for frame in container.decode(video=0):
                return frame.height, frame.width
        except av.error.FFmpegError as err:
            raise ContextError(f"cannot read {path!r} as an image or a video (decoding frame 0 failed): "
                               f"{err}") from None
    raise ContextError(f"{path!r} holds no frames")


def read_frames(path: str | os.PathLike, *, last: int | None = None, max_frames: int | None = None,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image or video file -> uint8 [T, H, W, C] (C = 1, 3 or 4; see `to_rgb`).

    last:       keep only the last `last` frames (the whole file is decoded; memory holds `last` frames).
    max_frames: with last=None, a file with more frames is a ContextError naming both counts.
    size:       (height, width): bring each frame to RGB at that size as it is decoded (`to_rgb`, `fit_frames`,
                rounded back to uint8), so memory holds frames of the stream's size, not the file's.
    A missing file, a file no decoder reads, one without video and one with no frames are ContextErrors.
    """
    path = os.fspath(path)
    for name, value in (("last", last), ("max_frames", max_frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ContextError(f"{name} must be a positive number of frames, got {value!r}")
    av = _import_av()
    with _open(path) as container:
        frames: collections.deque = collections.deque(maxlen=last)
        count, first = 0, None
        try:
            for frame in container.decode(video=0):
                array = _frame_array(frame)
                if first is None:
                    first = array.shape
                elif array.shape != first:
                    raise ContextError(f"{path!r}: frame {count} is {array.shape[1]}x{array.shape[0]}, earlier "
                                       f"frames {first[1]}x{first[0]}; a context has one frame size")
                count += 1
                if last is None and max_frames is not None and count > max_frames:
                    raise ContextError(f"{path!r} has more than {max_frames} frames, the longest context "
                                       f"accepted; pass fewer (rfrt generate --init-frames N keeps the last N)")
                if size is not None:
                    fitted = fit_frames(to_rgb(array), *size)
                    array = ((fitted[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
                frames.append(array)
        except av.error.FFmpegError as err:
            raise ContextError(f"cannot read {path!r} as an image or a video (decoding frame {count} failed): "
                               f"{err}") from None
    if not frames:
        raise ContextError(f"{path!r} holds no frames")
    return np.stack(list(frames))


def to_rgb(frames) -> np.ndarray:
    """Frames in any of the accepted layouts -> uint8 [T, H, W, 3] (RGB).

    frames: uint8 numpy array or tensor, [H, W] (one grey image), [H, W, C] (one image) or [T, H, W, C], with
    C = 1 (grey: replicated), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); alpha is composited over black.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise ContextError(f"context frames must be a uint8 array or tensor, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ContextError(f"context frames must be uint8 [T, H, W, C], got dtype {frames.dtype} (floating-point "
                           "contexts are latents [F, C, h, w])")
    if frames.ndim == 2:
        frames = frames[None, ..., None]
    elif frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4:
        raise ContextError(f"context frames must be [H, W], [H, W, C] or [T, H, W, C], got shape {frames.shape}")
    t, h, w, c = frames.shape
    if t == 0:
        raise ContextError("the context has zero frames")
    if h == 0 or w == 0:
        raise ContextError(f"context frames are {w}x{h} pixels: empty")
    if c not in (1, 2, 3, 4):
        raise ContextError(f"context frames have {c} channels (last dim of [T, H, W, C]); expected 1 (grey), "
                           "2 (grey + alpha), 3 (RGB) or 4 (RGBA)")
    colour = frames[..., :1].repeat(3, axis=-1) if c in (1, 2) else frames[..., :3]
    if c in (2, 4):  # composite over black, in integers: round(v * a / 255)
        alpha = frames[..., -1:].astype(np.uint32)
        colour = ((colour.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(colour)


def fit_frames(frames: np.ndarray, height: int, width: int, device=None) -> torch.Tensor:
    """uint8 RGB [T, H, W, 3] -> float32 [T, 3, height, width] in [-1, 1] on `device`.

    At the stream's size the values are exact (u / 127.5 - 1, which `to_uint8_frames` inverts); other sizes are
    centre-cropped to height:width and resized, bilinear with antialiasing (module docstring).
    """
    t, h, w, _ = frames.shape
    x = torch.from_numpy(np.ascontiguousarray(frames))
    x = (x if device is None else x.to(device)).permute(0, 3, 1, 2).float()
    if (h, w) != (height, width):
        # The largest centred window of the target aspect: crop the dimension that is too long.
        if w * height > h * width:
            cw = max(1, round(h * width / height))
            left = (w - cw) // 2
            x = x[:, :, :, left:left + cw]
        else:
            ch = max(1, round(w * height / width))
            top = (h - ch) // 2
            x = x[:, :, top:top + ch]
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0)


def check_latents(latents, *, channels: int, latent_hw: tuple[int, int], max_frames: int) -> torch.Tensor:
    """Validate context latents [F, C, h, w] (floating point, in the DiT's latent space) and return them.

    Errors name the problem: not a 4-d float tensor, zero frames, more than max_frames, C != channels,
    (h, w) != latent_hw (latents cannot be resized: give frames instead), NaN or infinite values.
    """
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise ContextError(f"context latents must be a floating-point tensor [F, C, h, w], got "
                           f"{type(latents).__name__ if not isinstance(latents, torch.Tensor) else latents.dtype}")
    if latents.ndim != 4:
        raise ContextError(f"context latents must be [F, C, h, w], got shape {tuple(latents.shape)}")
    f, c, h, w = latents.shape
    if f == 0:
        raise ContextError("the context has zero latent frames")
    if f > max_frames:
        raise ContextError(f"the context has {f} latent frames, more than the {max_frames} accepted (only the "
                           "window and the EMA sink carry it forward; pass the last frames only)")
    if c != channels:
        raise ContextError(f"context latents have {c} channels (dim 1 of [F, C, h, w]), the model takes {channels}")
    if (h, w) != tuple(latent_hw):
        raise ContextError(f"context latents are {h}x{w} (h x w), the stream's latents {latent_hw[0]}x"
                           f"{latent_hw[1]}; latents are not resized: give frames, or generate at that size")
    bad = (~torch.isfinite(latents)).sum().item()
    if bad:
        raise ContextError(f"context latents hold {bad} NaN or infinite values of {latents.numel()}")
    return latents


def context_note(source_hw: tuple[int, int] | None, height: int, width: int) -> str:
    """One line saying how a context's size was handled (for the CLI's log)."""
    if source_hw is None or tuple(source_hw) == (height, width):
        return ""
    h, w = source_hw
    crop = "" if math.isclose(w * height, h * width) else "centre-cropped to the aspect ratio and "
    return f"context frames {w}x{h} {crop}resized to {width}x{height} (bilinear, antialiased)"
