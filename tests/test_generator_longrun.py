"""1,000 chunks of a tiny model: resident memory stays flat (bounded state, nothing accumulates per chunk)."""
from __future__ import annotations

import os
import time

from rfrt.runtime.generator import StreamGenerator
from test_generator_tiny import one_thread, tiny_model  # noqa: F401 - fixture

WARMUP, CHUNKS = 50, 1000


def resident_bytes() -> int:
    """Resident set size from /proc/self/statm (field 2, in pages)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_thousand_chunks_in_bounded_memory(one_thread):
    gen = StreamGenerator(tiny_model(), device="cpu")
    gen.reset("a cat walks on the beach", seed=0)
    for _ in range(WARMUP):
        gen.step()
    before, start = resident_bytes(), time.perf_counter()
    for i in range(WARMUP, CHUNKS):
        chunk = gen.step()
        if i == CHUNKS // 2:
            mid = resident_bytes()
    grown = resident_bytes() - before
    print(f"{CHUNKS} chunks: RSS grew {grown / 2**20:.2f} MiB after warm-up (mid-run {(mid - before) / 2**20:.2f}),"
          f" {(time.perf_counter() - start) / (CHUNKS - WARMUP) * 1e3:.1f} ms/chunk")
    assert chunk.index == CHUNKS - 1 and gen.chunk_index == CHUNKS
    assert chunk.latents.isfinite().all()
    assert grown <= 16 * 2**20
