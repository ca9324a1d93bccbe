// Per-sample augmentation parameters of the pix2pix input pipeline.
//
// Mirror of pix2pix_fast/data/transforms.py (`sample_params`, `output_geometry`);
// the tests hold the two to exact equality. Everything here is a pure function
// of (seed, epoch, sample index, input size, options): a sample's crop and flip
// never depend on which thread renders it or on the batch it lands in.
//
// Random draws: a counter-based hash (splitmix64's finaliser), no shared
// sequential generator:
//   key  = mix(mix(mix(seed ^ SAMPLE_DOMAIN) ^ epoch) ^ index)
//   r_i  = mix(key + i)           i = 0: crop x, 1: crop y, 2: flip
//   x    = (r_0 * (x_max + 1)) >> 64          (Lemire's multiply-shift)
//   flip = flip_enabled && (r_2 >> 63)
// where mix(z) = splitmix64 finaliser of z + 0x9E3779B97F4A7C15 (all mod 2^64).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace p2p {

constexpr uint64_t kSampleDomain = 0x5A3C9E1D2B4F6071ULL;

inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform integer in [0, n) from 64 random bits (n >= 1).
inline int64_t draw_below(uint64_t r, uint64_t n) {
  return static_cast<int64_t>((static_cast<unsigned __int128>(r) * n) >> 64);
}

enum class Preprocess { kResizeAndCrop = 0, kCrop, kScaleWidth, kScaleWidthAndCrop, kNone };

inline Preprocess parse_preprocess(const std::string& s) {
  if (s == "resize_and_crop") return Preprocess::kResizeAndCrop;
  if (s == "crop") return Preprocess::kCrop;
  if (s == "scale_width") return Preprocess::kScaleWidth;
  if (s == "scale_width_and_crop") return Preprocess::kScaleWidthAndCrop;
  if (s == "none") return Preprocess::kNone;
  throw std::invalid_argument("unknown preprocess mode '" + s +
                              "' (resize_and_crop | crop | scale_width | scale_width_and_crop | none)");
}

// Where an input image of in_h x in_w goes: resized to resize_h x resize_w,
// then a crop_h x crop_w window whose top-left corner is drawn from
// [0, max_y] x [0, max_x].
struct Geometry {
  int resize_h, resize_w;
  int max_y, max_x;
  int crop_h, crop_w;
};

// Python's round(v / 4) * 4 (round half to even), the reference's __make_power_2(base=4).
inline int round_to_4(int v) {
  int q = v / 4, r = v % 4;
  if (r > 2 || (r == 2 && (q % 2) == 1)) ++q;
  return q * 4;
}

// Sizes are (height, width): the load size (the resize target) and the crop size; a square
// one has both equal.
inline std::string size_text(int h, int w) {
  return h == w ? std::to_string(h) : std::to_string(h) + "x" + std::to_string(w) + " (HxW)";
}

inline Geometry geometry(int in_h, int in_w, int load_h, int load_w, int crop_h, int crop_w, Preprocess mode) {
  if (in_h <= 0 || in_w <= 0) throw std::invalid_argument("empty image");
  auto check_crop_fits_load = [&](bool height_too) {
    if (crop_w > load_w || (height_too && crop_h > load_h))
      throw std::invalid_argument("crop_size " + size_text(crop_h, crop_w) + " > load_size " +
                                  size_text(load_h, load_w));
  };
  Geometry g{};
  switch (mode) {
    case Preprocess::kResizeAndCrop:
      check_crop_fits_load(true);
      g = {load_h, load_w, load_h - crop_h, load_w - crop_w, crop_h, crop_w};
      break;
    case Preprocess::kCrop:
      if (in_h < crop_h || in_w < crop_w)
        throw std::invalid_argument("image " + std::to_string(in_h) + "x" + std::to_string(in_w) +
                                    " (HxW) is smaller than crop_size " + size_text(crop_h, crop_w));
      g = {in_h, in_w, in_h - crop_h, in_w - crop_w, crop_h, crop_w};
      break;
    case Preprocess::kScaleWidth:
    case Preprocess::kScaleWidthAndCrop: {
      // Reference: h = int(max(load * oh / ow, crop)); the crop's y range uses
      // load * oh // ow without the max (same result: range 0 when smaller).
      int64_t h_scaled = static_cast<int64_t>(load_w) * in_h / in_w;
      int h = static_cast<int>(h_scaled > crop_h ? h_scaled : crop_h);
      if (mode == Preprocess::kScaleWidth) {
        g = {h, load_w, 0, 0, h, load_w};
      } else {
        check_crop_fits_load(false);
        int my = static_cast<int>(h_scaled - crop_h);
        g = {h, load_w, my > 0 ? my : 0, load_w - crop_w, crop_h, crop_w};
      }
      break;
    }
    case Preprocess::kNone: {
      int h = round_to_4(in_h), w = round_to_4(in_w);
      if (h == 0 || w == 0)
        throw std::invalid_argument("image " + std::to_string(in_h) + "x" + std::to_string(in_w) +
                                    " (HxW) rounds to an empty size for preprocess=none");
      g = {h, w, 0, 0, h, w};
      break;
    }
  }
  return g;
}

struct Params {
  int resize_h, resize_w;
  int crop_y, crop_x;
  int crop_h, crop_w;
  bool flip;
};

inline Params sample_params(uint64_t seed, uint64_t epoch, uint64_t index, int in_h, int in_w,
                            int load_h, int load_w, int crop_h, int crop_w, Preprocess mode, bool flip) {
  Geometry g = geometry(in_h, in_w, load_h, load_w, crop_h, crop_w, mode);
  uint64_t key = mix64(mix64(mix64(seed ^ kSampleDomain) ^ epoch) ^ index);
  Params p{};
  p.resize_h = g.resize_h;
  p.resize_w = g.resize_w;
  p.crop_x = static_cast<int>(draw_below(mix64(key + 0), static_cast<uint64_t>(g.max_x) + 1));
  p.crop_y = static_cast<int>(draw_below(mix64(key + 1), static_cast<uint64_t>(g.max_y) + 1));
  p.crop_h = g.crop_h;
  p.crop_w = g.crop_w;
  p.flip = flip && (mix64(key + 2) >> 63) != 0;
  return p;
}

}  // namespace p2p
