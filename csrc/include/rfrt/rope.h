// Wan2.1 3-axis RoPE math (SPEC §1): head_dim/2 complex pairs split (time, h, w) = [c-2(c/3), c/3, c/3],
// each axis with its own ladder w_j = theta^(-2j/d_axis); pairs are adjacent elements (x[2j], x[2j+1]).
// Mirrors python/rfrt/rope.py, which is the reference these kernels are tested against.
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

// Rotate one adjacent pair by (cos, sin); pass -sin to rotate back.
RFRT_HD void rotate_pair(float x0, float x1, float c, float s, float* y0, float* y1) {
  *y0 = x0 * c - x1 * s;
  *y1 = x0 * s + x1 * c;
}

}  // namespace rfrt
