"""OverlappedDecoder (rfrt.fast.overlap): decoding beside the denoiser gives the sequential frames, the wrapped
decoder sees chunks in order, and the generator with overlap_decode streams exactly what it streams without."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from rfrt.decoders import PixelDecoder, TAEHVConfig, TAEHVDecoder, TAEHVNet
from rfrt.decoders.base import to_uint8_frames
from rfrt.fast import RuntimeConfig
from rfrt.fast.overlap import OverlappedDecoder, uint8_frames_on_device
from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_model  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


class _Recording(PixelDecoder):
    """Pixel decoder that records the order it sees chunks in, and the thread; slow enough to overlap."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.seen: list[tuple[int, str]] = []
        self.delay = delay

    def _decode_chunk(self, latents):
        self.seen.append((self.latent_frames_seen, threading.current_thread().name))
        time.sleep(self.delay)
        return super()._decode_chunk(latents)


def _taehv() -> TAEHVDecoder:
    torch.manual_seed(0)
    return TAEHVDecoder(TAEHVNet(TAEHVConfig(latent_channels=4, channels=(16, 16, 8, 8))))


def test_overlapped_taehv_equals_sequential_and_keeps_order():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(1, 3, 4, 6, 5, generator=g) for _ in range(5)]
    seq = _taehv()
    expected = [seq.decode(c) for c in chunks]
    over = OverlappedDecoder(_taehv())
    pending = [over.submit(c) for c in chunks]  # all queued before any result is read
    got = [p.result() for p in pending]
    for (video, frames), exp in zip(got, expected):
        assert torch.equal(video, exp)
        assert torch.equal(frames, to_uint8_frames(exp))
    assert over.latent_frames_seen == 15 and over.inner.latent_frames_seen == 15
    over.reset()
    assert over.latent_frames_seen == 0 and torch.equal(over.decode(chunks[0]), expected[0])
    over.close()


def test_decoder_runs_beside_the_caller_in_order():
    rec = _Recording(delay=0.05)
    over = OverlappedDecoder(rec)
    start = time.perf_counter()
    pending = [over.submit(torch.zeros(1, 2, 3, 4, 4)) for _ in range(4)]
    queued = time.perf_counter() - start
    over.wait()
    assert queued < 0.05  # submit() did not wait for a decode
    assert [f for f, _ in rec.seen] == [0, 2, 4, 6]
    assert all(name.startswith("rfrt-decode") for _, name in rec.seen)
    assert all(p.result()[0].shape == (1, 2, 3, 4, 4) for p in pending)
    over.close()


def test_uint8_frames_closed_form():
    """[-1, 1] -> round((x + 1) * 127.5), clamped, channels last; the CPU copy holds the same bytes."""
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.002, 0.5, 1.0, 3.0]).view(1, 1, 1, 1, 8).expand(2, 3, 3, 5, 8)
    want = torch.tensor([0, 0, 64, 128, 128, 191, 255, 255], dtype=torch.uint8)  # 63.75 -> 64, 127.755 -> 128
    got = uint8_frames_on_device(x)
    assert got.shape == (2, 3, 5, 8, 3) and torch.equal(got[0, 0, 0, :, 0], want)
    assert torch.equal(to_uint8_frames(x), got)


def test_generator_overlap_equals_sequential():
    model = tiny_model(8)
    rec = _Recording()
    model_over = tiny_model(8)
    model_over = type(model_over)(dit=model_over.dit, text_encoder=model_over.text_encoder, decoder=rec,
                                  cache=model_over.cache, video=model_over.video)
    ref = StreamGenerator(model, device="cpu")
    fast = StreamGenerator(model_over, device="cpu", runtime=RuntimeConfig(overlap_decode=True, cuda_graphs=True))
    for gen in (ref, fast):
        gen.reset("a red ball", seed=2)
    for i in range(6):
        a, b = fast.step(), ref.step()
        assert a.index == b.index == i
        assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames) and torch.equal(a.video, b.video)
    # in order, each chunk once; chunk 6 is sampled ahead and already submitted (latents go to the decoder
    # before their context pass), not yet returned
    assert [f for f, _ in rec.seen] == [3 * i for i in range(7)]
    assert fast.chunk_index == 6 and fast.cache.chunk == 6
    fast.reset("a red ball", seed=2)  # drops the chunk generated ahead: the new stream starts at chunk 0
    ref.reset("a red ball", seed=2)
    # the first chunk of a stream comes back as soon as it is decoded: chunk 1 is not sampled yet
    assert torch.equal(fast.step().frames, ref.step().frames) and fast.cache.chunk == 0
    fast.decoder.close()


@pytest.mark.parametrize("recache", [True, False])
def test_prompt_switch_with_overlap_shows_one_chunk_later(recache):
    """With overlap_decode chunk k+1 is already sampled when step k returns: set_prompt before step k equals
    set_prompt before step k+1 of the sequential stream (documented in StreamGenerator)."""
    from test_fast_graphs import _stream

    _, seq = _stream(None, 8, {5: ("a blue cube", recache)})
    _, over = _stream(RuntimeConfig(overlap_decode=True), 8, {4: ("a blue cube", recache)})
    _, unchanged = _stream(None, 8)
    assert all(torch.equal(a, b) for a, b in zip(over, seq))
    assert not torch.equal(over[5], unchanged[5])


def test_overlap_rejects_bad_input():
    with pytest.raises(TypeError, match="StreamingDecoder"):
        OverlappedDecoder(object())
    over = OverlappedDecoder(PixelDecoder())
    with pytest.raises(ValueError, match=r"\[B, F, C, h, w\]"):
        over.submit(torch.zeros(3, 4))
    bad = over.submit(torch.zeros(1, 2, 5, 4, 4))  # 5 channels: the pixel decoder raises in the worker
    with pytest.raises(ValueError, match="channels"):
        bad.result()
    over.close()


@pytest.mark.gpu
def test_overlap_on_gpu_equals_sequential():
    g = torch.Generator(device="cuda").manual_seed(0)
    chunks = [torch.randn(1, 3, 4, 6, 5, generator=g, device="cuda") for _ in range(5)]
    seq = TAEHVDecoder(_taehv().net.cuda())
    expected = [seq.decode(c) for c in chunks]
    over = OverlappedDecoder(TAEHVDecoder(_taehv().net.cuda()), "cuda")
    got = [over.submit(c) for c in chunks]
    for p, exp in zip(got, expected):
        video, frames = p.result()
        assert torch.equal(video, exp) and torch.equal(frames, to_uint8_frames(exp))
