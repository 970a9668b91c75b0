// Wan2.1 3-axis RoPE math (SPEC §1): head_dim/2 complex pairs split (time, h, w) = [c-2(c/3), c/3, c/3],
// each axis with its own ladder w_j = theta^(-2j/d_axis); pairs are adjacent elements (x[2j], x[2j+1]).
// Mirrors python/rfrt/rope.py, which is the reference these kernels are tested against.
//
// Tables. Angles are fp64 (position * frequency) and their cos/sin are rounded to fp32, exactly as before;
// what changed is *where* they are computed. The h/w part of a token's rotation depends only on its place in
// the frame, so a cache builds it once (`rope_space_table`, [tokens_per_frame, h+w pairs] of (cos, sin)).
// The time part depends on the frame's position, which a CUDA graph only knows on the device, so a tiny
// kernel fills the few time rows of a chunk from the device cursors (`rope_time_row`, one row per frame).
// The CPU and CUDA paths call the same functions below, so both read bit-identical tables.
#pragma once
#include <math.h>
#include "common.h"

namespace rfrt {

struct RopeAxes {
  int32_t time, h, w;  // complex pairs per axis
};

RFRT_HD RopeAxes rope_axes(int32_t head_dim) {
  const int32_t c = head_dim / 2;
  return RopeAxes{c - 2 * (c / 3), c / 3, c / 3};
}

// Frequency of pair `j` (0 <= j < head_dim/2) in float64, and which axis it belongs to (0 time, 1 h, 2 w).
RFRT_HD double rope_frequency(int32_t j, int32_t head_dim, double theta, int32_t* axis) {
  const RopeAxes a = rope_axes(head_dim);
  int32_t local = j, pairs = a.time;
  *axis = 0;
  if (j >= a.time + a.h) {
    local = j - a.time - a.h; pairs = a.w; *axis = 2;
  } else if (j >= a.time) {
    local = j - a.time; pairs = a.h; *axis = 1;
  }
  return pow(theta, -(2.0 * local) / (2.0 * pairs));
}

// Angle (float64) of pair j for a token at (time position, grid row, grid column).
RFRT_HD double rope_angle(int32_t j, int64_t time_pos, int64_t row, int64_t col, int32_t head_dim, double theta) {
  int32_t axis = 0;
  const double w = rope_frequency(j, head_dim, theta, &axis);
  const double pos = axis == 0 ? static_cast<double>(time_pos) : (axis == 1 ? double(row) : double(col));
  return pos * w;
}

// The one rounding step: cos/sin of an fp64 angle, rounded to fp32.
RFRT_HD void rope_cos_sin(double angle, float* c, float* s) {
  *c = static_cast<float>(cos(angle));
  *s = static_cast<float>(sin(angle));
}

// (cos, sin) of the h/w pairs of the token at `in_frame` (row-major in the frame): out[2*(j - time_pairs)],
// out[2*(j - time_pairs) + 1] for every h/w pair j.
RFRT_HD void rope_space_row(int32_t in_frame, int32_t grid_w, int32_t head_dim, double theta, float* out) {
  const RopeAxes a = rope_axes(head_dim);
  for (int32_t j = a.time; j < a.time + a.h + a.w; ++j) {
    float* cs = out + 2 * (j - a.time);
    rope_cos_sin(rope_angle(j, 0, in_frame / grid_w, in_frame % grid_w, head_dim, theta), cs, cs + 1);
  }
}

// (cos, sin) of time pair j (0 <= j < time pairs) at time position `pos`.
RFRT_HD void rope_time_pair(int32_t j, int64_t pos, int32_t head_dim, double theta, float* cs) {
  rope_cos_sin(rope_angle(j, pos, 0, 0, head_dim, theta), cs, cs + 1);
}

// The space table of a frame: [tokens_per_frame, h+w pairs, 2] (host code; a cache builds it once).
inline void rope_space_table(int32_t tokens_per_frame, int32_t grid_w, int32_t head_dim, double theta, float* out) {
  const RopeAxes a = rope_axes(head_dim);
  for (int32_t t = 0; t < tokens_per_frame; ++t) rope_space_row(t, grid_w, head_dim, theta, out + 2 * t * (a.h + a.w));
}

// Rotate one adjacent pair by (cos, sin); pass -sin to rotate back.
RFRT_HD void rotate_pair(float x0, float x1, float c, float s, float* y0, float* y1) {
  *y0 = x0 * c - x1 * s;
  *y1 = x0 * s + x1 * c;
}

// (cos, sin) of pair j of a token, read from the tables: time pairs from its frame's time row
// ([time_pairs, 2]), h/w pairs from its space row ([h+w pairs, 2]).
RFRT_HD void rope_lookup(const float* time_row, const float* space_row, int32_t j, int32_t time_pairs, float* c,
                         float* s) {
  const float* cs = j < time_pairs ? time_row + 2 * j : space_row + 2 * (j - time_pairs);
  *c = cs[0];
  *s = cs[1];
}

}  // namespace rfrt
