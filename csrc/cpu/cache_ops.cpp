// CPU implementations of the cache kernels: the same math as csrc/cuda/cache_ops.cu (shared through
// rfrt/rope.h, rfrt/ema.h, rfrt/dispatch.h), single-threaded loops that the compiler vectorises. Launchers (csrc/launch.cpp) have validated every size before we get here.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "elem.h"
#include "rfrt/dispatch.h"
#include "rfrt/ema.h"
#include "rfrt/launch.h"
#include "rfrt/rope.h"

namespace rfrt::cpu {
namespace {

template <typename A>
struct Round {
  static float apply(float x) { return round_to<A>(x); }
};

template <typename X, typename Y>
void rotate_row(const X* x, Y* y, const float* time_row, const float* space_row, int32_t half, int32_t time_pairs,
                float sign) {
  for (int32_t j = 0; j < half; ++j) {
    float c, s, y0, y1;
    rope_lookup(time_row, space_row, j, time_pairs, &c, &s);
    rotate_pair(load(x + 2 * j), load(x + 2 * j + 1), c, sign * s, &y0, &y1);
    store(y + 2 * j, y0);
    store(y + 2 * j + 1, y1);
  }
}

// Tables for one self-contained rope_apply call (the cache keeps its own; the same functions fill both).
struct LocalTables {
  std::vector<float> space, time;
  LocalTables(int64_t tokens_per_frame, int64_t grid_w, int64_t head_dim, double theta, int64_t pos0,
              int64_t frames) {
    const RopeAxes a = rope_axes(int32_t(head_dim));
    space.resize(2 * tokens_per_frame * (a.h + a.w));
    rope_space_table(int32_t(tokens_per_frame), int32_t(grid_w), int32_t(head_dim), theta, space.data());
    time.resize(2 * frames * a.time);
    for (int64_t f = 0; f < frames; ++f)
      for (int32_t j = 0; j < a.time; ++j)
        rope_time_pair(j, pos0 + f, int32_t(head_dim), theta, time.data() + 2 * (f * a.time + j));
  }
};

template <typename T>
void rope_apply_t(const RopeApplyParams& p) {
  const int64_t row = p.heads * p.head_dim, frames = p.tokens / p.tokens_per_frame;
  const RopeAxes a = rope_axes(int32_t(p.head_dim));
  const LocalTables tab(p.tokens_per_frame, p.grid_w, p.head_dim, p.rope_theta, p.cursor[0], frames);
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  for (int64_t t = 0; t < p.tokens; ++t) {
    const float* tr = tab.time.data() + 2 * (t / p.tokens_per_frame) * a.time;
    const float* sr = tab.space.data() + 2 * (t % p.tokens_per_frame) * (a.h + a.w);
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t h = 0; h < p.heads; ++h) {
        const int64_t off = (b * p.tokens + t) * row + h * p.head_dim;
        rotate_row(x + off, out + off, tr, sr, int32_t(p.head_dim / 2), a.time, 1.0f);
      }
  }
}

void rope_time_rows_impl(const RopeTimeParams& p) {
  const int32_t tp = rope_axes(int32_t(p.head_dim)).time;
  const int64_t rows = p.write_frames + 2 * p.sink_frames;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t pos = r < p.write_frames ? p.write_cursor[1] + r
                        : r < p.write_frames + p.sink_frames ? p.fold_cursor[1] + (r - p.write_frames)
                                                             : p.fold_cursor[2] + (r - p.write_frames - p.sink_frames);
    for (int32_t j = 0; j < tp; ++j) rope_time_pair(j, pos, int32_t(p.head_dim), p.rope_theta, p.rope_time + 2 * (r * tp + j));
  }
}

// The guard both backends apply: a write never lands outside the ring, off a frame boundary or across the
// sink/ring border (the launcher throws instead when the caller gave no error flag).
inline bool write_cursor_ok(const CacheGeometry& g, int64_t slot, int64_t chunk_tokens) {
  return slot >= 0 && slot % g.tokens_per_frame == 0 && slot + chunk_tokens <= g.window_tokens &&
         (slot >= g.sink_tokens || slot + chunk_tokens <= g.sink_tokens);
}

template <typename T, typename A>
void cache_write_t(const CacheWriteParams& p) {
  const CacheGeometry& g = p.g;
  const int32_t half = int32_t(g.head_dim / 2);
  const RopeAxes a = rope_axes(int32_t(g.head_dim));
  const int64_t row = g.heads * g.head_dim;
  const int64_t slot = p.cursor[0];
  const bool write_ok = write_cursor_ok(g, slot, p.chunk_tokens);
  if (!write_ok && p.error) *p.error |= RFRT_ERR_WRITE_CURSOR;
  const bool seeds_sink = slot < g.sink_tokens;
  const int64_t layer_stride = g.batch * g.window_tokens * row;
  T* kc = static_cast<T*>(p.kv) + p.layer * layer_stride;
  T* vc = static_cast<T*>(p.kv) + (g.layers + p.layer) * layer_stride;
  const int64_t acc_layer_stride = g.batch * g.sink_tokens * row;
  A* ka = static_cast<A*>(p.sink_acc) + p.layer * acc_layer_stride;
  A* va = static_cast<A*>(p.sink_acc) + (g.layers + p.layer) * acc_layer_stride;
  const T* q = static_cast<const T*>(p.q);
  T* qo = static_cast<T*>(p.q_out);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  for (int64_t t = 0; t < p.chunk_tokens; ++t) {
    const float* tr = p.rope_time + 2 * (t / g.tokens_per_frame) * a.time;
    const float* sr = p.rope_space + 2 * (t % g.tokens_per_frame) * (a.h + a.w);
    for (int64_t b = 0; b < g.batch; ++b) {
      const int64_t src = (b * p.chunk_tokens + t) * row;
      for (int64_t h = 0; h < g.heads; ++h)
        rotate_row(q + src + h * g.head_dim, qo + src + h * g.head_dim, tr, sr, half, a.time, 1.0f);
      if (!write_ok) continue;
      const int64_t dst = (b * g.window_tokens + slot + t) * row;
      for (int64_t h = 0; h < g.heads; ++h)
        rotate_row(k + src + h * g.head_dim, kc + dst + h * g.head_dim, tr, sr, half, a.time, 1.0f);
      for (int64_t e = 0; e < row; ++e) vc[dst + e] = v[src + e];
      if (seeds_sink) {
        const int64_t acc = (b * g.sink_tokens + slot + t) * row;
        for (int64_t e = 0; e < row; ++e) {
          store(ka + acc + e, load(k + src + e));
          store(va + acc + e, load(v + src + e));
        }
      }
    }
  }
}

template <typename T, typename A>
void sink_fold_t(const SinkFoldParams& p) {
  const CacheGeometry& g = p.g;
  const int32_t half = int32_t(g.head_dim / 2);
  const RopeAxes a = rope_axes(int32_t(g.head_dim));
  const int64_t row = g.heads * g.head_dim;
  const int64_t ev_slot = p.cursor[0], sink_frames = g.sink_tokens / g.tokens_per_frame;
  if (ev_slot < g.sink_tokens || ev_slot + g.sink_tokens > g.window_tokens) {
    if (p.error) *p.error |= RFRT_ERR_FOLD_CURSOR;
    return;
  }
  const float alpha = static_cast<float>(p.alpha), oma = static_cast<float>(1.0 - p.alpha);
  const bool ref_round = p.acc_dtype != DType::F32;
  const int64_t layer_stride = g.batch * g.window_tokens * row, acc_layer_stride = g.batch * g.sink_tokens * row;
  std::vector<float> ek(g.head_dim);
  T* kv = static_cast<T*>(p.kv);
  A* acc = static_cast<A*>(p.sink_acc);
  for (int64_t t = 0; t < g.sink_tokens; ++t) {
    const int64_t frame = t / g.tokens_per_frame;
    const float* ev_tr = p.rope_time + 2 * (p.write_frames + frame) * a.time;
    const float* sk_tr = p.rope_time + 2 * (p.write_frames + sink_frames + frame) * a.time;
    const float* sr = p.rope_space + 2 * (t % g.tokens_per_frame) * (a.h + a.w);
    for (int64_t l = 0; l < g.layers; ++l)
      for (int64_t b = 0; b < g.batch; ++b) {
        T* kc = kv + l * layer_stride + b * g.window_tokens * row;
        T* vc = kv + (g.layers + l) * layer_stride + b * g.window_tokens * row;
        A* ka = acc + l * acc_layer_stride + b * g.sink_tokens * row;
        A* va = acc + (g.layers + l) * acc_layer_stride + b * g.sink_tokens * row;
        for (int64_t h = 0; h < g.heads; ++h) {
          const int64_t e_off = (ev_slot + t) * row + h * g.head_dim, s_off = t * row + h * g.head_dim;
          for (int32_t j = 0; j < half; ++j) {  // un-rotate the evicted K from its stored position
            float c, s, y0, y1;
            rope_lookup(ev_tr, sr, j, a.time, &c, &s);
            rotate_pair(load(kc + e_off + 2 * j), load(kc + e_off + 2 * j + 1), c, -s, &y0, &y1);
            ek[2 * j] = y0;
            ek[2 * j + 1] = y1;
          }
          for (int64_t d = 0; d < g.head_dim; ++d) {
            store(ka + s_off + d, ema<Round<A>>(load(ka + s_off + d), ek[d], alpha, oma, ref_round));
            store(va + s_off + d, ema<Round<A>>(load(va + s_off + d), load(vc + e_off + d), alpha, oma, ref_round));
            store(vc + s_off + d, load(va + s_off + d));
          }
          // the sink's K, rotated to sit just before the window
          rotate_row(ka + s_off, kc + s_off, sk_tr, sr, half, a.time, 1.0f);
        }
      }
  }
}

template <typename T>
void ring_attention_t(const RingAttentionParams& p) {
  const CacheGeometry& g = p.g;
  const int64_t row = g.heads * g.head_dim, layer_stride = g.batch * g.window_tokens * row;
  const T* kc = static_cast<const T*>(p.kv) + p.layer * layer_stride;
  const T* vc = static_cast<const T*>(p.kv) + (g.layers + p.layer) * layer_stride;
  const T* q = static_cast<const T*>(p.q);
  T* out = static_cast<T*>(p.out);
  std::vector<float> qf(g.head_dim), acc(g.head_dim);
  for (int64_t b = 0; b < g.batch; ++b)
    for (int64_t i = 0; i < p.q_tokens; ++i)
      for (int64_t h = 0; h < g.heads; ++h) {
        const int64_t q_off = (b * p.q_tokens + i) * row + h * g.head_dim;
        for (int64_t d = 0; d < g.head_dim; ++d) { qf[d] = load(q + q_off + d) * p.scale; acc[d] = 0.f; }
        float m = -std::numeric_limits<float>::infinity(), denom = 0.f;
        for (int64_t j = 0; j < p.keys; ++j) {  // online softmax: one pass over the keys
          const int64_t k_off = (b * g.window_tokens + j) * row + h * g.head_dim;
          float s = 0.f;
          for (int64_t d = 0; d < g.head_dim; ++d) s += qf[d] * load(kc + k_off + d);
          const float m_new = std::max(m, s), corr = std::exp(m - m_new), w = std::exp(s - m_new);
          denom = denom * corr + w;
          for (int64_t d = 0; d < g.head_dim; ++d) acc[d] = acc[d] * corr + w * load(vc + k_off + d);
          m = m_new;
        }
        for (int64_t d = 0; d < g.head_dim; ++d) store(out + q_off + d, acc[d] / denom);
      }
}

template <typename Fn>
void with_type(DType t, const char* what, Fn&& fn) { dispatch<float, bf16, f16>(t, what, fn); }

}  // namespace

void cache_write(const CacheWriteParams& p) {
  with_type(p.cache_dtype, "cache", [&](auto tt) {
    with_type(p.acc_dtype, "sink accumulator", [&](auto at) {
      cache_write_t<typename decltype(tt)::type, typename decltype(at)::type>(p);
    });
  });
}
void sink_fold(const SinkFoldParams& p) {
  with_type(p.cache_dtype, "cache", [&](auto tt) {
    with_type(p.acc_dtype, "sink accumulator", [&](auto at) {
      sink_fold_t<typename decltype(tt)::type, typename decltype(at)::type>(p);
    });
  });
}
void rope_apply(const RopeApplyParams& p) {
  with_type(p.dtype, "rope input", [&](auto tt) { rope_apply_t<typename decltype(tt)::type>(p); });
}
void rope_time_rows(const RopeTimeParams& p) { rope_time_rows_impl(p); }
void ring_attention(const RingAttentionParams& p) {
  with_type(p.dtype, "attention", [&](auto tt) { ring_attention_t<typename decltype(tt)::type>(p); });
}

}  // namespace rfrt::cpu
