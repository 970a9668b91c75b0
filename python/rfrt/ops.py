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
    _C = _core()
    if t.device.type == "cuda":
        p.device = _C.Device.CUDA
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


# ---------------------------------------------------------------------------------------------------------
def _check_write(kv, sink_acc, k, v, cursor, layer, tokens_per_frame, grid_w):
    _check_cache(kv, sink_acc)
    _check_tokens("k", k, kv)
    _check_tokens("v", v, kv)
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    _check_cursor(cursor, 2, kv.device)
    if not 0 <= layer < kv.shape[1]:
        raise ValueError(f"layer {layer} is outside the cache's {kv.shape[1]} layers")
    _check_frames(k.shape[1], tokens_per_frame, grid_w)


@torch.library.custom_op("rfrt::cache_write", mutates_args=("kv", "sink_acc"))
def cache_write(kv: Tensor, sink_acc: Tensor, k: Tensor, v: Tensor, cursor: Tensor, layer: int,
                tokens_per_frame: int, grid_w: int, rope_theta: float) -> None:
    """Write one chunk's K (rotated at cursor[1]) and V into layer `layer`'s slots from token cursor[0]."""
    _check_write(kv, sink_acc, k, v, cursor, layer, tokens_per_frame, grid_w)
    _C = _core()
    p = _C.CacheWriteParams()
    p.g = _geometry(kv, sink_acc, tokens_per_frame, grid_w, rope_theta)
    p.kv, p.sink_acc, p.k, p.v, p.cursor = kv.data_ptr(), sink_acc.data_ptr(), k.data_ptr(), v.data_ptr(), \
        cursor.data_ptr()
    p.layer, p.chunk_tokens = layer, k.shape[1]
    p.cache_dtype, p.acc_dtype = _dtype(kv), _dtype(sink_acc)
    _device_fields(p, kv)
    _C.cache_write(p)


@cache_write.register_fake
def _(kv, sink_acc, k, v, cursor, layer, tokens_per_frame, grid_w, rope_theta):
    _check_write(kv, sink_acc, k, v, cursor, layer, tokens_per_frame, grid_w)


# ---------------------------------------------------------------------------------------------------------
def _check_fold(kv, sink_acc, cursor, alpha, tokens_per_frame, grid_w):
    _check_cache(kv, sink_acc)
    _check_cursor(cursor, 3, kv.device)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"sink_ema_alpha must lie in [0, 1], got {alpha}")
    _check_frames(sink_acc.shape[3], tokens_per_frame, grid_w)


@torch.library.custom_op("rfrt::sink_fold", mutates_args=("kv", "sink_acc"))
def sink_fold(kv: Tensor, sink_acc: Tensor, cursor: Tensor, alpha: float, tokens_per_frame: int, grid_w: int,
              rope_theta: float) -> None:
    """EMA-Sink fold over all layers: acc <- a*acc + (1-a)*evicted; sink slots <- acc rotated to cursor[2]."""
    _check_fold(kv, sink_acc, cursor, alpha, tokens_per_frame, grid_w)
    _C = _core()
    p = _C.SinkFoldParams()
    p.g = _geometry(kv, sink_acc, tokens_per_frame, grid_w, rope_theta)
    p.kv, p.sink_acc, p.cursor = kv.data_ptr(), sink_acc.data_ptr(), cursor.data_ptr()
    p.alpha = alpha
    p.cache_dtype, p.acc_dtype = _dtype(kv), _dtype(sink_acc)
    _device_fields(p, kv)
    _C.sink_fold(p)


@sink_fold.register_fake
def _(kv, sink_acc, cursor, alpha, tokens_per_frame, grid_w, rope_theta):
    _check_fold(kv, sink_acc, cursor, alpha, tokens_per_frame, grid_w)


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
