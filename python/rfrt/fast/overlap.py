"""OverlappedDecoder: decode chunk k while chunk k+1 denoises, behind the StreamingDecoder protocol.

`submit(latents)` queues one chunk and returns at once with a `PendingFrames`; `result()` waits for it. The
wrapped decoder sees chunks strictly in submission order, from one place only:
- CUDA: one side stream. submit() makes the side stream wait for an event recorded on the caller's stream
  (the latents are ready there), launches the decode, the uint8 conversion and a non-blocking copy into pinned
  host memory on the side stream, and records a "done" event. result() waits for that event only: the host
  never waits for the caller's stream, so the denoising graph launched after submit() keeps running.
  Stream-crossing tensors are `record_stream`ed so the caching allocator does not recycle them early.
- CPU: one worker thread (a single-worker executor runs jobs FIFO), with the caller's intra-op thread count,
  so the decoder computes exactly what it computes when called directly.
`decode(latents)` = submit(latents).result(): the plain synchronous protocol, same frames.
"""
from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass

import torch
from torch import Tensor

from rfrt.decoders.base import StreamingDecoder, to_uint8_frames, uint8_frames_on_device

__all__ = ["OverlappedDecoder", "PendingFrames", "uint8_frames_on_device"]


@dataclass(eq=False)
class PendingFrames:
    """One submitted chunk. result() -> (video [B, T, 3, H, W] on the decoder's device, frames uint8
    [B, T, H, W, 3] on the CPU)."""

    _future: concurrent.futures.Future | None = None
    _done: object = None  # torch.cuda.Event on the CUDA path
    _video: Tensor | None = None
    _frames: Tensor | None = None
    taken: bool = False  # result() was called (its error, if any, reached the caller)

    def result(self) -> tuple[Tensor, Tensor]:
        self.taken = True
        if self._future is not None:
            return self._future.result()
        self._done.synchronize()
        # The caller's stream may use the video next: order it after the decode and tell the allocator.
        stream = torch.cuda.current_stream(self._video.device)
        stream.wait_event(self._done)
        self._video.record_stream(stream)
        return self._video, self._frames


class OverlappedDecoder(StreamingDecoder):
    """Wraps a StreamingDecoder so that decoding runs beside the caller (side CUDA stream or worker thread).

    inner: the decoder doing the work; device: where its inputs arrive (CUDA uses a side stream, anything else
    a worker thread). reset() and flush() first wait for every submitted chunk.
    """

    def __init__(self, inner: StreamingDecoder, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if not isinstance(inner, StreamingDecoder):
            raise TypeError(f"OverlappedDecoder wraps a StreamingDecoder, got {type(inner).__name__}")
        if isinstance(inner, OverlappedDecoder):
            raise TypeError("OverlappedDecoder: the decoder is already overlapped")
        self.inner = inner
        self.device = torch.device(device)
        self._pending: list[PendingFrames] = []
        self._submitted_frames = 0
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
            self._pool = None
        else:
            self._stream = None
            threads = torch.get_num_threads()
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="rfrt-decode", initializer=torch.set_num_threads,
                initargs=(threads,))

    # ---- facts: the wrapped decoder's ----
    @property
    def temporal_upsample(self) -> int:
        return self.inner.temporal_upsample

    @property
    def spatial_upsample(self) -> int:
        return self.inner.spatial_upsample

    @property
    def latent_channels(self) -> int:
        return self.inner.latent_channels

    @property
    def first_latent_frames(self) -> int:
        return self.inner.first_latent_frames

    @property
    def latent_frames_seen(self) -> int:
        """Latent frames submitted since the last reset (decoded or still queued)."""
        return self._submitted_frames

    def encoder(self):
        """The wrapped decoder's encode path."""
        return self.inner.encoder()

    # ---- the protocol ----
    def submit(self, latents: Tensor) -> PendingFrames:
        """Queue the next chunk latents [B, F, C, h, w] (stream order) for decoding; returns immediately."""
        if not isinstance(latents, Tensor) or latents.ndim != 5:
            raise ValueError(f"OverlappedDecoder.submit: latents must be a [B, F, C, h, w] tensor, got "
                             f"{tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__}")
        self._pending = [p for p in self._pending if not _finished(p)]
        if self._stream is None:
            pending = PendingFrames(_future=self._pool.submit(self._decode_job, latents))
        else:
            pending = self._submit_cuda(latents)
        self._pending.append(pending)
        self._submitted_frames += latents.shape[1]
        return pending

    def _decode_job(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        video = self.inner.decode(latents)
        return video, to_uint8_frames(video)

    def _submit_cuda(self, latents: Tensor) -> PendingFrames:
        producer = torch.cuda.current_stream(latents.device)
        ready = torch.cuda.Event()
        ready.record(producer)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            latents.record_stream(self._stream)
            video = self.inner.decode(latents)
            frames = uint8_frames_on_device(video)
            host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        return PendingFrames(_done=done, _video=video, _frames=host)

    def decode(self, latents: Tensor) -> Tensor:
        """Synchronous protocol: submit and wait. Returns [B, T, 3, H, W] like the wrapped decoder."""
        return self.submit(latents).result()[0]

    def wait(self) -> None:
        """Block until every submitted chunk is decoded (the error of a failed decode nobody took is raised)."""
        pending, self._pending = self._pending, []
        for p in pending:
            if p._future is not None:
                concurrent.futures.wait([p._future])
            else:
                p._done.synchronize()
        for p in pending:
            if not p.taken:
                p.result()

    def reset(self) -> None:
        self.wait()
        self._submitted_frames = 0
        self.inner.reset()

    def flush(self) -> Tensor:
        self.wait()
        return self.inner.flush()

    def close(self) -> None:
        """Stop the worker thread (CPU); the decoder is unusable afterwards."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # StreamingDecoder's abstract hooks: unused, every call goes to the wrapped decoder.
    def _reset_state(self) -> None:
        pass

    def _decode_chunk(self, latents: Tensor) -> Tensor:
        return self.decode(latents)


def _finished(p: PendingFrames) -> bool:
    if p._future is not None:
        return p._future.done() and (p.taken or p._future.exception() is None)
    return p._done.query()
