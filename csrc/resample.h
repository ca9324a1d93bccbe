// Fused resize + crop + flip of one planar (C, H, W) uint8 image into (C, h, w) uint8.
//
// Filter: Pillow's BICUBIC (Keys cubic, a = -0.5) with half-pixel centres,
// widened by the scale factor when shrinking (antialiasing), taps clipped at
// the border and renormalised -- the coefficients of Pillow's resample.c,
// computed in double. Unlike Pillow we apply them in float32 with a single
// rounding at the end (Pillow rounds to uint8 between its two passes), so the
// output is within 1 grey level of the float64 NumPy reference
// `pix2pix_fast.data.transforms.resize`.
//
// Design: only the crop window is ever computed, and no intermediate
// load_size^2 image exists. Each output row of each channel is produced in
// one go: the few source rows it needs are blended vertically into a one-row
// float buffer (only the source columns the crop reads; contiguous, 8-wide
// SIMD; each source row is widened to float once, into a small ring of the
// last `taps` rows), and that row is resampled horizontally straight into the output
// plane, 8 output pixels at a time:
//   - enlarging or mild shrinking (the 8 pixels' first taps lie within 8
//     source columns): per tap, one 8-float load, one lane permutation
//     (vpermps) and one multiply-add -- a gather done by a shuffle;
//   - stronger shrinking: a small dense (J x 8) weight matrix per block, J
//     broadcast multiply-adds.
// The flip is just a reversed column order in those per-sample tables (a few
// KiB, rebuilt per sample since they depend on the crop). Axis tables are
// built once per (input size, output size) and shared by all threads. The
// images are stored planar (the loader's cache does that once) so every pass
// reads contiguous memory. The kernels are compiled twice, for AVX2+FMA and
// for the baseline instruction set, and picked at run time.
#pragma once

#include <cstdint>
#include <vector>

namespace p2p {

struct Axis {
  int in = 0, out = 0;
  int taps = 0;            // weights per output index (padded with zeros)
  bool identity = false;   // in == out: weight 1 on the pixel itself
  std::vector<int32_t> start;  // [out] first source index, start + taps <= in
  std::vector<float> weight;   // [out * taps]
};

// Pillow's bicubic coefficients for resampling `in` samples to `out`.
Axis make_axis(int in, int out);

// Per-thread scratch space (reused across samples; grows as needed).
struct Scratch {
  std::vector<float> row;     // one vertically blended row (+ padding)
  std::vector<int32_t> lo;    // per 8-pixel block: first source column it reads (relative)
  std::vector<int32_t> idx;   // per block and lane: source column - lo (permute path)
  std::vector<float> wts;     // per block: taps x 8 (permute) or J x 8 (matrix) weights
  std::vector<float> ring;    // the last few source rows, widened to float
  std::vector<int32_t> ring_tag;
  std::vector<const float*> taps_rows;
};

struct Window {
  int y, x;    // top-left corner of the crop in the resized image
  int h, w;    // crop size = output size
  bool flip;   // mirror the output horizontally
};

// src: (C, ay.in, ax.in) uint8, C-contiguous. dst: (C, win.h, win.w) uint8.
// Requires win.y + win.h <= ay.out and win.x + win.w <= ax.out.
void render(const uint8_t* src, int channels, const Axis& ay, const Axis& ax, const Window& win,
            uint8_t* dst, Scratch& scratch);

// "avx2" or "baseline": the kernels render() runs now.
const char* kernel_isa();
// Allow (default) or forbid the AVX2 kernels, e.g. to test the baseline ones.
void set_avx2_enabled(bool enabled);

}  // namespace p2p
