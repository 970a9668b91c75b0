// CPU implementations of the cache kernels: the same math as csrc/cuda/cache_ops.cu, single-threaded loops
// that the compiler vectorises. Launchers (csrc/launch.cpp) have validated every size before we get here.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "elem.h"
#include "rfrt/launch.h"
#include "rfrt/rope.h"

namespace rfrt::cpu {
namespace {

// Per-call table of each pair's frequency and axis (0 time, 1 row, 2 column): pow() once per pair, not per
// element.
struct PairTable {
  std::vector<double> freq;
  std::vector<int32_t> axis;
  PairTable(int64_t head_dim, double theta) : freq(head_dim / 2), axis(head_dim / 2) {
    for (int32_t j = 0; j < head_dim / 2; ++j)
      freq[j] = rope_frequency(j, static_cast<int32_t>(head_dim), theta, &axis[j]);
  }
};

// cos/sin of every pair for one token; shared by all batches and heads of that token.
void token_rotation(const PairTable& pt, int64_t time_pos, int64_t in_frame, int64_t grid_w, float* cs,
                    float* sn) {
  const double pos[3] = {static_cast<double>(time_pos), static_cast<double>(in_frame / grid_w),
                         static_cast<double>(in_frame % grid_w)};
  for (size_t j = 0; j < pt.freq.size(); ++j) {
    const double a = pos[pt.axis[j]] * pt.freq[j];
    cs[j] = static_cast<float>(std::cos(a));
    sn[j] = static_cast<float>(std::sin(a));
  }
}

template <typename T>
void rotate_row(const T* x, T* y, const float* cs, const float* sn, int64_t half, float sign) {
  for (int64_t j = 0; j < half; ++j) {
    float y0, y1;
    rotate_pair(load(x + 2 * j), load(x + 2 * j + 1), cs[j], sign * sn[j], &y0, &y1);
    store(y + 2 * j, y0);
    store(y + 2 * j + 1, y1);
  }
}

template <typename T>
void rope_apply_t(const RopeApplyParams& p) {
  const int64_t half = p.head_dim / 2, row = p.heads * p.head_dim;
  std::vector<float> cs(half), sn(half);
  const PairTable pt(p.head_dim, p.rope_theta);
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  for (int64_t t = 0; t < p.tokens; ++t) {
    token_rotation(pt, p.cursor[0] + t / p.tokens_per_frame, t % p.tokens_per_frame, p.grid_w, cs.data(),
                   sn.data());
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t h = 0; h < p.heads; ++h) {
        const int64_t off = (b * p.tokens + t) * row + h * p.head_dim;
        rotate_row(x + off, out + off, cs.data(), sn.data(), half, 1.0f);
      }
  }
}

template <typename T, typename A>
void cache_write_t(const CacheWriteParams& p) {
  const CacheGeometry& g = p.g;
  const int64_t half = g.head_dim / 2, row = g.heads * g.head_dim;
  const int64_t slot = p.cursor[0], time_pos = p.cursor[1];
  const bool seeds_sink = slot < g.sink_tokens;
  const int64_t layer_stride = g.batch * g.window_tokens * row;
  T* kc = static_cast<T*>(p.kv) + p.layer * layer_stride;
  T* vc = static_cast<T*>(p.kv) + (g.layers + p.layer) * layer_stride;
  const int64_t acc_layer_stride = g.batch * g.sink_tokens * row;
  A* ka = static_cast<A*>(p.sink_acc) + p.layer * acc_layer_stride;
  A* va = static_cast<A*>(p.sink_acc) + (g.layers + p.layer) * acc_layer_stride;
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  std::vector<float> cs(half), sn(half);
  const PairTable pt(g.head_dim, g.rope_theta);
  for (int64_t t = 0; t < p.chunk_tokens; ++t) {
    token_rotation(pt, time_pos + t / g.tokens_per_frame, t % g.tokens_per_frame, g.grid_w, cs.data(), sn.data());
    for (int64_t b = 0; b < g.batch; ++b) {
      const int64_t src = (b * p.chunk_tokens + t) * row;
      const int64_t dst = (b * g.window_tokens + slot + t) * row;
      for (int64_t h = 0; h < g.heads; ++h)
        rotate_row(k + src + h * g.head_dim, kc + dst + h * g.head_dim, cs.data(), sn.data(), half, 1.0f);
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

// acc <- alpha*acc + (1-alpha)*x. In reference-rounding mode (acc stored in a 16-bit type) each product and
// the sum are rounded to that type, exactly as `alpha * sink + (1 - alpha) * evicted` on bf16 tensors.
template <typename A>
inline float ema(float acc, float x, float alpha, float one_minus_alpha, bool round_like_reference) {
  if (!round_like_reference) return alpha * acc + one_minus_alpha * x;
  return round_to<A>(round_to<A>(alpha * acc) + round_to<A>(one_minus_alpha * x));
}

template <typename T, typename A>
void sink_fold_t(const SinkFoldParams& p) {
  const CacheGeometry& g = p.g;
  const int64_t half = g.head_dim / 2, row = g.heads * g.head_dim;
  const int64_t ev_slot = p.cursor[0], ev_pos = p.cursor[1], sink_pos = p.cursor[2];
  const float alpha = static_cast<float>(p.alpha), oma = static_cast<float>(1.0 - p.alpha);
  const bool ref_round = p.acc_dtype != DType::F32;
  const int64_t layer_stride = g.batch * g.window_tokens * row, acc_layer_stride = g.batch * g.sink_tokens * row;
  std::vector<float> ev_cs(half), ev_sn(half), cs(half), sn(half), ek(g.head_dim);
  const PairTable pt(g.head_dim, g.rope_theta);
  T* kv = static_cast<T*>(p.kv);
  A* acc = static_cast<A*>(p.sink_acc);
  for (int64_t t = 0; t < g.sink_tokens; ++t) {
    const int64_t in_frame = t % g.tokens_per_frame, frame = t / g.tokens_per_frame;
    token_rotation(pt, ev_pos + frame, in_frame, g.grid_w, ev_cs.data(), ev_sn.data());
    token_rotation(pt, sink_pos + frame, in_frame, g.grid_w, cs.data(), sn.data());
    for (int64_t l = 0; l < g.layers; ++l)
      for (int64_t b = 0; b < g.batch; ++b) {
        T* kc = kv + l * layer_stride + b * g.window_tokens * row;
        T* vc = kv + (g.layers + l) * layer_stride + b * g.window_tokens * row;
        A* ka = acc + l * acc_layer_stride + b * g.sink_tokens * row;
        A* va = acc + (g.layers + l) * acc_layer_stride + b * g.sink_tokens * row;
        for (int64_t h = 0; h < g.heads; ++h) {
          const int64_t e_off = (ev_slot + t) * row + h * g.head_dim, s_off = t * row + h * g.head_dim;
          for (int64_t j = 0; j < half; ++j) {  // un-rotate the evicted K from its stored position
            float y0, y1;
            rotate_pair(load(kc + e_off + 2 * j), load(kc + e_off + 2 * j + 1), ev_cs[j], -ev_sn[j], &y0, &y1);
            ek[2 * j] = y0;
            ek[2 * j + 1] = y1;
          }
          for (int64_t d = 0; d < g.head_dim; ++d) {
            store(ka + s_off + d, ema<A>(load(ka + s_off + d), ek[d], alpha, oma, ref_round));
            store(va + s_off + d, ema<A>(load(va + s_off + d), load(vc + e_off + d), alpha, oma, ref_round));
            store(vc + s_off + d, load(va + s_off + d));
          }
          for (int64_t j = 0; j < half; ++j) {  // the sink's K, rotated to sit just before the window
            float y0, y1;
            rotate_pair(load(ka + s_off + 2 * j), load(ka + s_off + 2 * j + 1), cs[j], sn[j], &y0, &y1);
            store(kc + s_off + 2 * j, y0);
            store(kc + s_off + 2 * j + 1, y1);
          }
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

}  // namespace

#define RFRT_CPU_DISPATCH(DT, FN, ...)                                         \
  switch (DT) {                                                              \
    case DType::F32: return FN<float>(__VA_ARGS__);                          \
    case DType::BF16: return FN<bf16>(__VA_ARGS__);                          \
    case DType::F16: return FN<f16>(__VA_ARGS__);                            \
  }                                                                          \
  throw std::invalid_argument("rfrt: unsupported dtype")

#define RFRT_CPU_DISPATCH_ACC(T, AT, FN, ...)                                  \
  switch (AT) {                                                              \
    case DType::F32: return FN<T, float>(__VA_ARGS__);                       \
    case DType::BF16: return FN<T, bf16>(__VA_ARGS__);                       \
    case DType::F16: return FN<T, f16>(__VA_ARGS__);                         \
  }                                                                          \
  throw std::invalid_argument("rfrt: unsupported accumulator dtype")

namespace {
template <typename T> void cache_write_acc(const CacheWriteParams& p) { RFRT_CPU_DISPATCH_ACC(T, p.acc_dtype, cache_write_t, p); }
template <typename T> void sink_fold_acc(const SinkFoldParams& p) { RFRT_CPU_DISPATCH_ACC(T, p.acc_dtype, sink_fold_t, p); }
}  // namespace

void cache_write(const CacheWriteParams& p) { RFRT_CPU_DISPATCH(p.cache_dtype, cache_write_acc, p); }
void sink_fold(const SinkFoldParams& p) { RFRT_CPU_DISPATCH(p.cache_dtype, sink_fold_acc, p); }
void rope_apply(const RopeApplyParams& p) { RFRT_CPU_DISPATCH(p.dtype, rope_apply_t, p); }
void ring_attention(const RingAttentionParams& p) { RFRT_CPU_DISPATCH(p.dtype, ring_attention_t, p); }

}  // namespace rfrt::cpu
