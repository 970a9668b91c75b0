"""torch custom ops over the compiled core (rfrt._C), with fake (meta) implementations.

Each op checks its tensors (dtype, device, contiguity, shape) and raises an error that names the problem,
fills a params struct with raw pointers (no copies) and calls the launcher, which checks sizes again and
dispatches to the CPU or CUDA kernel. Registered through torch.library so torch.compile, torch.export and
CUDA-graph capture can trace them; the fake implementations run the same checks on meta tensors.

Layouts: kv [2, layers, batch, window_tokens, heads, head_dim] (K rotated | V), sink_acc [2, layers, batch,
sink_tokens, heads, head_dim] (unrotated EMA accumulator), k / v / q [batch, tokens, heads, head_dim],
cursors int64 on the cache's device (see csrc/include/rfrt/params.h).
"""
from __future__ import annotations

import torch
from torch import Tensor

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _core():
    from rfrt import _C  # loaded on first use, never at import time

    return _C


def _check(name: str, t: Tensor, ndim: int, *, dtype: torch.dtype | None = None,
           device: torch.device | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if dtype is None and t.dtype not in _DTYPE_CODES:
        raise TypeError(f"{name} has unsupported dtype {t.dtype} (float32, bfloat16 or float16)")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the cache is on {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()} for shape {tuple(t.shape)})")


def _check_cursor(cursor: Tensor, n: int, device: torch.device) -> None:
    _check("cursor", cursor, 1, dtype=torch.int64, device=device)
    if cursor.numel() != n:
        raise ValueError(f"cursor must hold {n} int64 values, got {cursor.numel()}")


def _check_cache(kv: Tensor, sink_acc: Tensor) -> None:
    _check("kv", kv, 6)
    _check("sink_acc", sink_acc, 6, device=kv.device)
    if kv.shape[0] != 2 or sink_acc.shape[0] != 2:
        raise ValueError("kv and sink_acc must stack K and V in their first dimension (size 2)")
    if (kv.shape[1], kv.shape[2], kv.shape[4], kv.shape[5]) != (sink_acc.shape[1], sink_acc.shape[2],
                                                                sink_acc.shape[4], sink_acc.shape[5]):
        raise ValueError(f"sink_acc {tuple(sink_acc.shape)} does not match kv {tuple(kv.shape)}")
    if sink_acc.dtype not in (torch.float32, kv.dtype):
        raise TypeError(f"sink_acc must be float32 or the cache dtype {kv.dtype}, got {sink_acc.dtype}")


def _check_tokens(name: str, t: Tensor, kv: Tensor) -> None:
    _check(name, t, 4, dtype=kv.dtype, device=kv.device)
    if t.shape[0] != kv.shape[2] or t.shape[2] != kv.shape[4] or t.shape[3] != kv.shape[5]:
        raise ValueError(f"{name} {tuple(t.shape)} must be [batch={kv.shape[2]}, tokens, heads={kv.shape[4]}, "
                         f"head_dim={kv.shape[5]}]")


def _check_frames(tokens: int, tokens_per_frame: int, grid_w: int) -> None:
    if tokens_per_frame <= 0 or grid_w <= 0 or tokens_per_frame % grid_w != 0:
        raise ValueError(f"tokens_per_frame ({tokens_per_frame}) must be a positive multiple of grid_w ({grid_w})")
    if tokens % tokens_per_frame != 0:
        raise ValueError(f"{tokens} tokens are not a whole number of frames of {tokens_per_frame} tokens")


def _device_fields(p, t: Tensor) -> None:
    """Device, device index and stream of a launch. The CUDA launcher switches to `device_index` itself
    (a device guard), so tensors on a GPU other than the current one launch on their own GPU and stream."""
    _C = _core()
    if t.device.type == "cuda":
        p.device = _C.Device.CUDA
        p.device_index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        p.stream = torch.cuda.current_stream(t.device).cuda_stream
    elif t.device.type == "cpu":
        p.device = _C.Device.CPU
    else:
        raise ValueError(f"rfrt kernels run on cpu or cuda tensors, got {t.device}")


def _geometry(kv: Tensor, sink_acc: Tensor | None, tokens_per_frame: int, grid_w: int, rope_theta: float):
    g = _core().CacheGeometry()
    g.layers, g.batch, g.window_tokens, g.heads, g.head_dim = kv.shape[1:]
    g.sink_tokens = sink_acc.shape[3] if sink_acc is not None else tokens_per_frame
    g.tokens_per_frame, g.grid_w, g.rope_theta = tokens_per_frame, grid_w, rope_theta
    return g


def _dtype(t: Tensor):
    return _core().DType(_DTYPE_CODES[t.dtype])


def _pair_aligned(name: str, t: Tensor) -> None:
    # The CUDA kernels move one (x[2j], x[2j+1]) pair per 2-element access.
    if t.data_ptr() % (2 * t.element_size()):
        raise ValueError(f"{name} must start at an even element (storage offset {t.storage_offset()})")


# ---------------------------------------------------------------------------------------------------------
# RoPE tables (csrc/include/rfrt/rope.h): space [tokens_per_frame, h+w pairs, 2] once per cache, time
# [write_frames + 2 * sink_frames, time_pairs, 2] filled per chunk from the device cursors.
def rope_space_table(head_dim: int, tokens_per_frame: int, grid_w: int, rope_theta: float,
                     device: torch.device | str = "cpu") -> Tensor:
    """(cos, sin) of every h/w pair of every token of a frame, fp32 [tokens_per_frame, h+w pairs, 2] (host-built
    from fp64 angles by the same code the CPU kernels use, then copied to `device`)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6, got {head_dim}")
    _check_frames(tokens_per_frame, tokens_per_frame, grid_w)
    c = head_dim // 2
    out = torch.empty(tokens_per_frame, 2 * (c // 3), 2, dtype=torch.float32)
    _core().rope_space_table(tokens_per_frame, grid_w, head_dim, float(rope_theta), out.data_ptr())
    return out.to(device)


def _time_pairs(head_dim: int) -> int:
    c = head_dim // 2
    return c - 2 * (c // 3)


def _check_tables(rope_space: Tensor, rope_time: Tensor, head_dim: int, tokens_per_frame: int,
                  device: torch.device, min_rows: int) -> None:
    _check("rope_space", rope_space, 3, dtype=torch.float32, device=device)
    _check("rope_time", rope_time, 3, dtype=torch.float32, device=device)
    c = head_dim // 2
    if tuple(rope_space.shape) != (tokens_per_frame, 2 * (c // 3), 2):
        raise ValueError(f"rope_space {tuple(rope_space.shape)} must be [{tokens_per_frame}, {2 * (c // 3)}, 2]")
    if rope_time.shape[1:] != (_time_pairs(head_dim), 2) or rope_time.shape[0] < min_rows:
        raise ValueError(f"rope_time {tuple(rope_time.shape)} must be [>= {min_rows}, {_time_pairs(head_dim)}, 2]")


def _check_error(error: Tensor | None, device: torch.device) -> None:
    if error is not None:
        _check("error", error, 1, dtype=torch.int32, device=device)
        if error.numel() != 1:
            raise ValueError(f"error must hold one int32, got {error.numel()}")


def _check_time_rows(rope_time, write_cursor, fold_cursor, sink_frames, head_dim):
    _check_cursor(write_cursor, 2, rope_time.device)
    _check_cursor(fold_cursor, 3, rope_time.device)
    _check("rope_time", rope_time, 3, dtype=torch.float32, device=write_cursor.device)
    if sink_frames <= 0 or rope_time.shape[0] <= 2 * sink_frames:
        raise ValueError(f"rope_time has {rope_time.shape[0]} rows: it needs write frames + 2 * {sink_frames}")
    if rope_time.shape[1:] != (_time_pairs(head_dim), 2):
        raise ValueError(f"rope_time {tuple(rope_time.shape)} must be [rows, {_time_pairs(head_dim)}, 2]")


def time_rows_params(rope_time: Tensor, write_cursor: Tensor, fold_cursor: Tensor, sink_frames: int,
                     head_dim: int, rope_theta: float):
    """A filled _C.RopeTimeParams (the stream is set at launch)."""
    _C = _core()
    p = _C.RopeTimeParams()
    p.rope_time, p.write_cursor, p.fold_cursor = rope_time.data_ptr(), write_cursor.data_ptr(), fold_cursor.data_ptr()
    p.write_frames, p.sink_frames = rope_time.shape[0] - 2 * sink_frames, sink_frames
    p.head_dim, p.rope_theta = head_dim, float(rope_theta)
    _device_fields(p, rope_time)
    return p


@torch.library.custom_op("rfrt::rope_time_rows", mutates_args=("rope_time",))
def rope_time_rows(rope_time: Tensor, write_cursor: Tensor, fold_cursor: Tensor, sink_frames: int, head_dim: int,
                   rope_theta: float) -> None:
    """Fill the chunk's time rows of rope_time [W + 2S, time_pairs, 2]: rows f < W at write_cursor[1] + f, then
    S rows at fold_cursor[1] + f (evicted chunk), then S at fold_cursor[2] + f (new sink position)."""
    _check_time_rows(rope_time, write_cursor, fold_cursor, sink_frames, head_dim)
    _core().rope_time_rows(time_rows_params(rope_time, write_cursor, fold_cursor, sink_frames, head_dim, rope_theta))


@rope_time_rows.register_fake
def _(rope_time, write_cursor, fold_cursor, sink_frames, head_dim, rope_theta):
    _check_time_rows(rope_time, write_cursor, fold_cursor, sink_frames, head_dim)


# ---------------------------------------------------------------------------------------------------------
def _check_write(kv, sink_acc, q, k, v, cursor, rope_space, rope_time, layer, tokens_per_frame, error):
    _check_cache(kv, sink_acc)
    _check_tokens("q", q, kv)
    _check_tokens("k", k, kv)
    _check_tokens("v", v, kv)
    if k.shape != v.shape or q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    _check_cursor(cursor, 2, kv.device)
    if not 0 <= layer < kv.shape[1]:
        raise ValueError(f"layer {layer} is outside the cache's {kv.shape[1]} layers")
    _check_frames(k.shape[1], tokens_per_frame, tokens_per_frame)
    _check_tables(rope_space, rope_time, kv.shape[5], tokens_per_frame, kv.device, k.shape[1] // tokens_per_frame)
    _check_error(error, kv.device)


def write_params(kv: Tensor, sink_acc: Tensor, cursor: Tensor, rope_space: Tensor, rope_time: Tensor, layer: int,
                 chunk_tokens: int, tokens_per_frame: int, error: Tensor | None):
    """A _C.CacheWriteParams with everything but q/q_out/k/v (and the stream) filled: a cache builds one per
    layer once and sets only those per call (RingCache); the op fills one per call."""
    _C = _core()
    p = _C.CacheWriteParams()
    # grid_w and rope_theta are unused here: the tables carry the grid and the angles.
    p.g = _geometry(kv, sink_acc, tokens_per_frame, tokens_per_frame, 1.0)
    p.kv, p.sink_acc, p.cursor = kv.data_ptr(), sink_acc.data_ptr(), cursor.data_ptr()
    p.rope_space, p.rope_time = rope_space.data_ptr(), rope_time.data_ptr()
    p.error = 0 if error is None else error.data_ptr()
    p.layer, p.chunk_tokens = layer, chunk_tokens
    p.cache_dtype, p.acc_dtype = _dtype(kv), _dtype(sink_acc)
    _device_fields(p, kv)
    return p


def launch_write(p, q: Tensor, q_out: Tensor, k: Tensor, v: Tensor) -> None:
    """Set the per-call pointers (and the current stream) of a prebuilt CacheWriteParams and launch it."""
    if q.is_cuda:
        for name, t in (("q", q), ("q_out", q_out), ("k", k), ("v", v)):
            _pair_aligned(name, t)
        p.stream = torch.cuda.current_stream(q.device).cuda_stream
    p.q, p.q_out, p.k, p.v = q.data_ptr(), q_out.data_ptr(), k.data_ptr(), v.data_ptr()
    _core().cache_write(p)


@torch.library.custom_op("rfrt::cache_write", mutates_args=("kv", "sink_acc", "error"))
def cache_write(kv: Tensor, sink_acc: Tensor, q: Tensor, k: Tensor, v: Tensor, cursor: Tensor, rope_space: Tensor,
                rope_time: Tensor, layer: int, tokens_per_frame: int, error: Tensor | None = None) -> Tensor:
    """Write one chunk's K (rotated at cursor[1]) and V into layer `layer`'s slots from token cursor[0], and
    return its queries q [B, L, H, D] rotated at the same positions (one fused launch).

    rope_space / rope_time: the tables (rope_space_table, rope_time_rows), time rows [0, L / tokens_per_frame)
    at the chunk's frames. error: optional int32 [1]; when given, an out-of-range cursor sets a bit in it and
    nothing is written (on every device), otherwise a CPU call raises.
    """
    _check_write(kv, sink_acc, q, k, v, cursor, rope_space, rope_time, layer, tokens_per_frame, error)
    q_out = torch.empty_like(q)
    p = write_params(kv, sink_acc, cursor, rope_space, rope_time, layer, k.shape[1], tokens_per_frame, error)
    launch_write(p, q, q_out, k, v)
    return q_out


@cache_write.register_fake
def _(kv, sink_acc, q, k, v, cursor, rope_space, rope_time, layer, tokens_per_frame, error=None):
    _check_write(kv, sink_acc, q, k, v, cursor, rope_space, rope_time, layer, tokens_per_frame, error)
    return torch.empty_like(q)


# ---------------------------------------------------------------------------------------------------------
def _check_fold(kv, sink_acc, cursor, rope_space, rope_time, alpha, tokens_per_frame, error):
    _check_cache(kv, sink_acc)
    _check_cursor(cursor, 3, kv.device)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"sink_ema_alpha must lie in [0, 1], got {alpha}")
    _check_frames(sink_acc.shape[3], tokens_per_frame, tokens_per_frame)
    sink_frames = sink_acc.shape[3] // tokens_per_frame
    _check_tables(rope_space, rope_time, kv.shape[5], tokens_per_frame, kv.device, 2 * sink_frames + 1)
    _check_error(error, kv.device)


def fold_params(kv: Tensor, sink_acc: Tensor, cursor: Tensor, rope_space: Tensor, rope_time: Tensor, alpha: float,
                tokens_per_frame: int, error: Tensor | None):
    """A filled _C.SinkFoldParams (the stream is set at launch)."""
    _C = _core()
    p = _C.SinkFoldParams()
    p.g = _geometry(kv, sink_acc, tokens_per_frame, tokens_per_frame, 1.0)  # grid / theta: in the tables
    p.kv, p.sink_acc, p.cursor = kv.data_ptr(), sink_acc.data_ptr(), cursor.data_ptr()
    p.rope_space, p.rope_time = rope_space.data_ptr(), rope_time.data_ptr()
    p.write_frames = rope_time.shape[0] - 2 * (sink_acc.shape[3] // tokens_per_frame)
    p.error = 0 if error is None else error.data_ptr()
    p.alpha = alpha
    p.cache_dtype, p.acc_dtype = _dtype(kv), _dtype(sink_acc)
    _device_fields(p, kv)
    return p


def launch(fn, p, t: Tensor) -> None:
    """Launch a prebuilt params struct on t's device's current stream."""
    if t.is_cuda:
        p.stream = torch.cuda.current_stream(t.device).cuda_stream
    fn(p)


@torch.library.custom_op("rfrt::sink_fold", mutates_args=("kv", "sink_acc", "error"))
def sink_fold(kv: Tensor, sink_acc: Tensor, cursor: Tensor, rope_space: Tensor, rope_time: Tensor, alpha: float,
              tokens_per_frame: int, error: Tensor | None = None) -> None:
    """EMA-Sink fold over all layers: acc <- a*acc + (1-a)*evicted; sink slots <- acc rotated to cursor[2].

    rope_time's last 2 * sink_frames rows must hold the evicted and the new sink positions (rope_time_rows).
    """
    _check_fold(kv, sink_acc, cursor, rope_space, rope_time, alpha, tokens_per_frame, error)
    p = fold_params(kv, sink_acc, cursor, rope_space, rope_time, alpha, tokens_per_frame, error)
    launch(_core().sink_fold, p, kv)


@sink_fold.register_fake
def _(kv, sink_acc, cursor, rope_space, rope_time, alpha, tokens_per_frame, error=None):
    _check_fold(kv, sink_acc, cursor, rope_space, rope_time, alpha, tokens_per_frame, error)


# ---------------------------------------------------------------------------------------------------------
def _check_rope(x, cursor, tokens_per_frame, grid_w):
    _check("x", x, 4)
    if x.dtype not in _DTYPE_CODES:
        raise TypeError(f"x has unsupported dtype {x.dtype} (float32, bfloat16 or float16)")
    if x.shape[-1] % 2 != 0 or x.shape[-1] < 6:
        raise ValueError(f"head_dim must be even and >= 6, got {x.shape[-1]}")
    _check_cursor(cursor, 1, x.device)
    _check_frames(x.shape[1], tokens_per_frame, grid_w)


def _rope(x: Tensor, out: Tensor, cursor: Tensor, tokens_per_frame: int, grid_w: int, rope_theta: float) -> None:
    _C = _core()
    p = _C.RopeApplyParams()
    p.x, p.out, p.cursor = x.data_ptr(), out.data_ptr(), cursor.data_ptr()
    p.batch, p.tokens, p.heads, p.head_dim = x.shape
    p.tokens_per_frame, p.grid_w, p.rope_theta = tokens_per_frame, grid_w, rope_theta
    p.dtype = _dtype(x)
    _device_fields(p, x)
    _C.rope_apply(p)


@torch.library.custom_op("rfrt::rope_apply", mutates_args=())
def rope_apply(x: Tensor, cursor: Tensor, tokens_per_frame: int, grid_w: int, rope_theta: float) -> Tensor:
    """Wan RoPE of x [B, L, H, D] (tokens ordered frame, row, column) with time positions cursor[0] + frame."""
    _check_rope(x, cursor, tokens_per_frame, grid_w)
    out = torch.empty_like(x)
    _rope(x, out, cursor, tokens_per_frame, grid_w, rope_theta)
    return out


@rope_apply.register_fake
def _(x, cursor, tokens_per_frame, grid_w, rope_theta):
    _check_rope(x, cursor, tokens_per_frame, grid_w)
    return torch.empty_like(x)


@torch.library.custom_op("rfrt::rope_apply_", mutates_args=("x",))
def rope_apply_(x: Tensor, cursor: Tensor, tokens_per_frame: int, grid_w: int, rope_theta: float) -> None:
    """In-place rope_apply: the hot path rotates the (temporary) queries where they lie."""
    _check_rope(x, cursor, tokens_per_frame, grid_w)
    _rope(x, x, cursor, tokens_per_frame, grid_w, rope_theta)


@rope_apply_.register_fake
def _(x, cursor, tokens_per_frame, grid_w, rope_theta):
    _check_rope(x, cursor, tokens_per_frame, grid_w)


# ---------------------------------------------------------------------------------------------------------
def _check_attention(kv, q, layer, keys):
    _check("kv", kv, 6)
    if kv.shape[0] != 2:
        raise ValueError("kv must stack K and V in its first dimension (size 2)")
    _check_tokens("q", q, kv)
    if not 0 <= layer < kv.shape[1]:
        raise ValueError(f"layer {layer} is outside the cache's {kv.shape[1]} layers")
    if not 0 < keys <= kv.shape[3]:
        raise ValueError(f"keys ({keys}) must lie in (0, {kv.shape[3]}], the ring's token count")


@torch.library.custom_op("rfrt::ring_attention", mutates_args=())
def ring_attention(kv: Tensor, q: Tensor, layer: int, keys: int, scale: float) -> Tensor:
    """softmax(q K^T * scale) V over the first `keys` tokens of layer `layer`'s ring. q: [B, Lq, H, D]."""
    _check_attention(kv, q, layer, keys)
    _C = _core()
    out = torch.empty_like(q)
    p = _C.RingAttentionParams()
    g = _C.CacheGeometry()
    g.layers, g.batch, g.window_tokens, g.heads, g.head_dim = kv.shape[1:]
    p.g = g
    p.kv, p.q, p.out = kv.data_ptr(), q.data_ptr(), out.data_ptr()
    p.layer, p.q_tokens, p.keys, p.scale = layer, q.shape[1], keys, scale
    p.dtype = _dtype(kv)
    _device_fields(p, kv)
    _C.ring_attention(p)
    return out


@ring_attention.register_fake
def _(kv, q, layer, keys, scale):
    _check_attention(kv, q, layer, keys)
    return torch.empty_like(q)
