// Logical frame -> physical slot of the [sink | ring] cache (SPEC §2.3), mirrored by
// python/rfrt/cache/policy.py (CachePolicy.slot_frame); tests/test_cache_policy.py pins the two together.
#pragma once
#include "common.h"

namespace rfrt {

// Sink slots are fixed; window slots form a ring behind them, so eviction is index arithmetic, never a memmove.
RFRT_HD int64_t slot_frame(int64_t frame, int64_t sink_frames, int64_t window_frames) {
  const int64_t ring = window_frames - sink_frames;
  return frame < sink_frames ? frame : sink_frames + (frame - sink_frames) % ring;
}

}  // namespace rfrt
