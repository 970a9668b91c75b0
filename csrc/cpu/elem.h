// Host-side element load/store for the CPU kernels: every type is computed in float.
#pragma once
#include <cstdint>
#include <cstring>

namespace rfrt::cpu {

struct bf16 { uint16_t bits; };
struct f16 { _Float16 value; };

inline float load(const float* p) { return *p; }
inline void store(float* p, float x) { *p = x; }

inline float load(const bf16* p) {
  uint32_t u = static_cast<uint32_t>(p->bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(bf16* p, float x) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p->bits = 0x7fc0; return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  p->bits = static_cast<uint16_t>(u >> 16);
}

inline float load(const f16* p) { return static_cast<float>(p->value); }
inline void store(f16* p, float x) { p->value = static_cast<_Float16>(x); }

// Round a float to the storage type T and back (emulates a tensor op whose result is stored in T).
template <typename T>
inline float round_to(float x) {
  T t;
  store(&t, x);
  return load(&t);
}

}  // namespace rfrt::cpu
