// Fused resize + crop + flip kernel; see resample.h for the filter and design.
#include "resample.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The baseline copies of the 8-wide vector helpers pass 32-byte vectors
// without AVX; they are all force-inlined, so no call ABI is involved.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace p2p {
namespace {

std::atomic<bool> avx2_enabled{true};

// Pillow's bicubic_filter (a = -0.5), support 2.
double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// ---------------------------------------------------------------------------
// Kernels: resample_kernels.h, compiled once for the baseline instruction set
// and once for AVX2+FMA (x86-64), the latter picked at run time when the CPU
// has it. Everything inside is force-inlined into render_rows / copy_window.
// ---------------------------------------------------------------------------
#define P2P_INLINE inline __attribute__((always_inline))

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));

constexpr int kLanes = 8;

// What one image of one sample needs, row after row.
struct Plan {
  const uint8_t* src;  // (C, in_h, in_w)
  int in_h, in_w, C;
  const Axis* ay;
  int y0, h;           // output rows: resized rows y0 .. y0 + h - 1
  int c0, span;        // source columns read: c0 .. c0 + span - 1
  int w, nblk;         // output width, 8-pixel blocks
  bool permute;        // horizontal path (see resample.h)
  int K;               // permute: taps; matrix: source columns per block
  const int32_t* lo;   // [nblk] first column of `row` a block reads
  const int32_t* idx;  // [nblk * 8] permute path: column - lo per lane
  const float* wts;    // [nblk][K][8]
  float* row;          // span + padding floats: the blended row
  float* ring;         // (C, ring_rows, ring_stride): recent source rows as float
  int32_t* ring_tag;   // [ring_rows] source row held by each slot, -1 = none
  int ring_rows;       // power of two >= vertical taps
  size_t ring_stride;  // floats per ring row
  const float** taps_rows;  // [vertical taps] scratch
  uint8_t* dst;        // (C, h, w)
};

namespace base {
#define P2P_AVX2 0
#include "resample_kernels.h"
#undef P2P_AVX2
}  // namespace base

#if defined(__x86_64__) && defined(__GNUC__)
#define P2P_HAVE_AVX2_PATH 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define P2P_AVX2 1
#include "resample_kernels.h"
#undef P2P_AVX2
}  // namespace avx2
#pragma GCC pop_options

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

bool use_avx2() {
#ifdef P2P_HAVE_AVX2_PATH
  return cpu_has_avx2() && avx2_enabled.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

}  // namespace

const char* kernel_isa() { return use_avx2() ? "avx2" : "baseline"; }

void set_avx2_enabled(bool enabled) { avx2_enabled.store(enabled, std::memory_order_relaxed); }

Axis make_axis(int in, int out) {
  if (in <= 0 || out <= 0)
    throw std::invalid_argument("resize from " + std::to_string(in) + " to " + std::to_string(out));
  Axis a;
  a.in = in;
  a.out = out;
  a.identity = in == out;
  // Pillow's precompute_coeffs, in double.
  const double scale = static_cast<double>(in) / out;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  const double ss = 1.0 / filterscale;
  std::vector<int> first(out), count(out);
  std::vector<double> ws;  // trimmed weights of all outputs, concatenated
  std::vector<size_t> at(out);
  std::vector<double> w;
  int taps = 1;
  for (int xx = 0; xx < out; ++xx) {
    const double center = (xx + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in) xmax = in;
    w.assign(static_cast<size_t>(std::max(xmax - xmin, 1)), 0.0);
    double total = 0.0;
    for (int x = xmin; x < xmax; ++x) {
      w[x - xmin] = bicubic((x - center + 0.5) * ss);
      total += w[x - xmin];
    }
    if (total != 0.0)
      for (double& v : w) v /= total;
    // Trim exact zeros at both ends (e.g. the identity's [0, 1, 0, 0]).
    int lo = 0, hi = static_cast<int>(w.size());
    while (lo < hi && w[lo] == 0.0) ++lo;
    while (hi > lo && w[hi - 1] == 0.0) --hi;
    if (lo == hi) hi = lo + 1;  // all zero: cannot happen for bicubic; keep one zero tap
    first[xx] = xmin + lo;
    count[xx] = hi - lo;
    at[xx] = ws.size();
    ws.insert(ws.end(), w.begin() + lo, w.begin() + hi);
    taps = std::max(taps, hi - lo);
  }
  a.taps = taps;  // <= in, since every window lies inside [0, in)
  a.start.resize(out);
  a.weight.assign(static_cast<size_t>(out) * taps, 0.f);
  for (int xx = 0; xx < out; ++xx) {
    int s = first[xx], shift = 0;
    if (s + taps > in) {  // pad on the left instead, so the window stays inside
      shift = s + taps - in;
      s -= shift;
    }
    a.start[xx] = s;
    for (int k = 0; k < count[xx]; ++k)
      a.weight[static_cast<size_t>(xx) * taps + shift + k] = static_cast<float>(ws[at[xx] + k]);
  }
  return a;
}

void render(const uint8_t* src, int C, const Axis& ay, const Axis& ax, const Window& win, uint8_t* dst,
            Scratch& sc) {
  if (win.y < 0 || win.x < 0 || win.h <= 0 || win.w <= 0 || win.y + win.h > ay.out || win.x + win.w > ax.out)
    throw std::logic_error("crop window outside the resized image");
  if (ay.identity && ax.identity) {
#ifdef P2P_HAVE_AVX2_PATH
    if (use_avx2()) return avx2::copy_window(src, ay.in, ax.in, C, win, dst);
#endif
    return base::copy_window(src, ay.in, ax.in, C, win, dst);
  }

  // Per-sample horizontal tables. Output pixel x (block x / 8, lane x % 8)
  // comes from resized column X = column(x) = source taps start[X] .. + taps.
  const int tx = ax.taps;
  const int nblk = (win.w + kLanes - 1) / kLanes;
  auto column = [&](int x) { return win.x + (win.flip ? win.w - 1 - x : x); };
  sc.lo.assign(nblk, ax.in);
  bool permute = true;
  int J = 1, c0 = ax.in, c1 = 0;
  for (int b = 0; b < nblk; ++b) {
    int s_max = 0;
    for (int x = b * kLanes; x < std::min(win.w, (b + 1) * kLanes); ++x) {
      const int s = ax.start[column(x)];
      sc.lo[b] = std::min(sc.lo[b], s);
      s_max = std::max(s_max, s);
    }
    permute = permute && s_max - sc.lo[b] < kLanes;
    J = std::max(J, s_max + tx - sc.lo[b]);
    c0 = std::min(c0, sc.lo[b]);
    c1 = std::max(c1, s_max + tx);
  }
  const int K = permute ? tx : J;
  sc.wts.assign(static_cast<size_t>(nblk) * K * kLanes, 0.f);
  sc.idx.assign(static_cast<size_t>(nblk) * kLanes, 0);
  for (int x = 0; x < win.w; ++x) {
    const int b = x / kLanes, lane = x % kLanes, X = column(x);
    const int rel = ax.start[X] - sc.lo[b];
    const float* w = &ax.weight[static_cast<size_t>(X) * tx];
    float* dst_w = &sc.wts[static_cast<size_t>(b) * K * kLanes + lane];
    if (permute) {
      sc.idx[static_cast<size_t>(b) * kLanes + lane] = rel;
      for (int k = 0; k < tx; ++k) dst_w[k * kLanes] = w[k];
    } else {
      for (int k = 0; k < tx; ++k) dst_w[(rel + k) * kLanes] += w[k];
    }
  }
  int span = c1 - c0;
  // Whole 8-float vectors in the vertical pass: widen the span to a multiple
  // of 8 when the image is wide enough (moving c0 left at the right border).
  const int span8 = (span + kLanes - 1) / kLanes * kLanes;
  if (span8 <= ax.in) {
    c0 = std::min(c0, ax.in - span8);
    span = span8;
  }
  for (int b = 0; b < nblk; ++b) sc.lo[b] -= c0;
  // Padding: a block reads up to K + 8 floats from its start, past the span.
  sc.row.assign(static_cast<size_t>(span) + K + kLanes, 0.f);
  int ring_rows = 1;
  while (ring_rows < ay.taps) ring_rows *= 2;
  const size_t ring_stride = static_cast<size_t>(span8);
  sc.ring.resize(static_cast<size_t>(C) * ring_rows * ring_stride);
  sc.ring_tag.assign(ring_rows, -1);
  sc.taps_rows.resize(ay.taps);

  Plan p{};
  p.src = src;
  p.in_h = ay.in;
  p.in_w = ax.in;
  p.C = C;
  p.ay = &ay;
  p.y0 = win.y;
  p.h = win.h;
  p.c0 = c0;
  p.span = span;
  p.w = win.w;
  p.nblk = nblk;
  p.permute = permute;
  p.K = K;
  p.lo = sc.lo.data();
  p.idx = sc.idx.data();
  p.wts = sc.wts.data();
  p.row = sc.row.data();
  p.ring = sc.ring.data();
  p.ring_tag = sc.ring_tag.data();
  p.ring_rows = ring_rows;
  p.ring_stride = ring_stride;
  p.taps_rows = sc.taps_rows.data();
  p.dst = dst;
#ifdef P2P_HAVE_AVX2_PATH
  if (use_avx2()) return avx2::render_rows(p);
#endif
  base::render_rows(p);
}

}  // namespace p2p
