// Row kernels of resample.cpp (no include guard on purpose). Included twice by resample.cpp: once for the
// baseline instruction set (P2P_AVX2 = 0: GCC vector extensions, lowered to
// SSE2 / NEON) and once inside `#pragma GCC target("avx2,fma")` (P2P_AVX2 = 1:
// the same code plus a few AVX2 intrinsics where the generic form compiles
// badly). Expects v8f / v8i / v8b, kLanes, P2P_INLINE and Plan in scope.

P2P_INLINE v8f load8f(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

P2P_INLINE void store8f(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

P2P_INLINE v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// a * b + c
P2P_INLINE v8f madd(v8f a, v8f b, v8f c) {
#if P2P_AVX2
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

// 8 bytes -> 8 floats.
P2P_INLINE v8f load8u(const uint8_t* p) {
#if P2P_AVX2
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  v8b b;
  std::memcpy(&b, p, sizeof b);
  return v8f{float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4]), float(b[5]), float(b[6]), float(b[7])};
#endif
}

// The blended rows carry +0.5 (see blend) and every output's horizontal
// weights sum to 1, so the rounding clip(floor(v + 0.5), 0, 255) of the
// reference is a truncating conversion plus saturating packs here.

// First n lanes of v as bytes.
P2P_INLINE void store8u(v8f v, uint8_t* out, int n) {
  uint8_t bytes[kLanes];
#if P2P_AVX2
  const __m256i i = _mm256_cvttps_epi32(v);  // (-1, 0) -> 0; below and NaN -> negative -> 0
  const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  const __m128i b8 = _mm_packus_epi16(w16, w16);
  if (n == kLanes) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), b8);
    return;
  }
  _mm_storel_epi64(reinterpret_cast<__m128i*>(bytes), b8);
#else
  v = v > 255.f ? 255.f : v;  // also keeps the conversion in range
  v8i i = __builtin_convertvector(v, v8i);
  i = i < 0 ? 0 : i;
  typedef uint8_t v32b __attribute__((vector_size(32)));
  const v32b all = reinterpret_cast<v32b>(i);
  const v8b b = __builtin_shufflevector(all, all, 0, 4, 8, 12, 16, 20, 24, 28);
  std::memcpy(bytes, &b, kLanes);
#endif
  std::memcpy(out, bytes, static_cast<size_t>(n));
}

// Four full blocks (32 pixels) as bytes.
P2P_INLINE void store32u(v8f v0, v8f v1, v8f v2, v8f v3, uint8_t* out) {
#if P2P_AVX2
  const __m256i p01 = _mm256_packs_epi32(_mm256_cvttps_epi32(v0), _mm256_cvttps_epi32(v1));
  const __m256i p23 = _mm256_packs_epi32(_mm256_cvttps_epi32(v2), _mm256_cvttps_epi32(v3));
  // Per 128-bit half: 4 pixels of each block; put each block's 8 back together.
  const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes);
#else
  store8u(v0, out, kLanes);
  store8u(v1, out + kLanes, kLanes);
  store8u(v2, out + 2 * kLanes, kLanes);
  store8u(v3, out + 3 * kLanes, kLanes);
#endif
}

// uint8 -> float of one source row (n values).
P2P_INLINE void widen(const uint8_t* src, int n, float* dst) {
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) store8f(dst + i, load8u(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// Vertical pass: row[i] = 0.5 + sum_k w[k] * rows[k][i], i < n.
P2P_INLINE void blend(const float* const* rows, const float* w, int taps, int n, float* row) {
  int i = 0;
  const v8f half = splat(0.5f);
  if (taps == 4) {
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    const v8f w0 = splat(w[0]), w1 = splat(w[1]), w2 = splat(w[2]), w3 = splat(w[3]);
    for (; i + kLanes <= n; i += kLanes)
      store8f(row + i,
              madd(load8f(r3 + i), w3, madd(load8f(r2 + i), w2, madd(load8f(r1 + i), w1, madd(load8f(r0 + i), w0, half)))));
  } else {
    for (; i + kLanes <= n; i += kLanes) {
      v8f acc = half;
      for (int k = 0; k < taps; ++k) acc = madd(load8f(rows[k] + i), splat(w[k]), acc);
      store8f(row + i, acc);
    }
  }
  for (; i < n; ++i) {
    float acc = 0.5f;
    for (int k = 0; k < taps; ++k) acc += w[k] * rows[k][i];
    row[i] = acc;
  }
}

// Horizontal pass, permute path: lane l of block b reads row[lo[b] + idx[b][l] + k].
template <int KT>  // taps when known at compile time (4: enlarging), else 0
P2P_INLINE v8f permute_block(const float* t, const int32_t* idxp, const float* wb, int K_rt) {
  const int K = KT > 0 ? KT : K_rt;
  v8i idx;
  std::memcpy(&idx, idxp, sizeof idx);
  v8f acc = __builtin_shuffle(load8f(t), idx) * load8f(wb);
  for (int k = 1; k < K; ++k) acc = madd(__builtin_shuffle(load8f(t + k), idx), load8f(wb + k * kLanes), acc);
  return acc;
}

template <int KT>
P2P_INLINE void hpass_permute(const float* row, const Plan& p, uint8_t* out) {
  const int K = KT > 0 ? KT : p.K;
  const int nblk = p.nblk, w = p.w, full = w / kLanes;
  const int32_t* __restrict lo = p.lo;
  const int32_t* __restrict idx = p.idx;
  const float* __restrict wts = p.wts;
  const size_t wstride = static_cast<size_t>(K) * kLanes;
  int b = 0;
  for (; b + 4 <= full; b += 4) {
    const v8f v0 = permute_block<KT>(row + lo[b], idx + b * kLanes, wts + b * wstride, K);
    const v8f v1 = permute_block<KT>(row + lo[b + 1], idx + (b + 1) * kLanes, wts + (b + 1) * wstride, K);
    const v8f v2 = permute_block<KT>(row + lo[b + 2], idx + (b + 2) * kLanes, wts + (b + 2) * wstride, K);
    const v8f v3 = permute_block<KT>(row + lo[b + 3], idx + (b + 3) * kLanes, wts + (b + 3) * wstride, K);
    store32u(v0, v1, v2, v3, out + b * kLanes);
  }
  for (; b < nblk; ++b)
    store8u(permute_block<KT>(row + lo[b], idx + b * kLanes, wts + b * wstride, K), out + b * kLanes,
            std::min(kLanes, w - b * kLanes));
}

// Horizontal pass, matrix path: lane l of block b = sum_j wts[b][j][l] * row[lo[b] + j].
P2P_INLINE void hpass_matrix(const float* row, const Plan& p, uint8_t* out) {
  const int J = p.K, nblk = p.nblk, w = p.w;
  const int32_t* __restrict lo = p.lo;
  const float* __restrict wts = p.wts;
  for (int b = 0; b < nblk; ++b) {
    const float* t = row + lo[b];
    const float* m = wts + static_cast<size_t>(b) * J * kLanes;
    v8f even = v8f{}, odd = v8f{};  // two dependency chains
    int j = 0;
    for (; j + 1 < J; j += 2) {
      even = madd(load8f(m + j * kLanes), splat(t[j]), even);
      odd = madd(load8f(m + (j + 1) * kLanes), splat(t[j + 1]), odd);
    }
    if (j < J) even = madd(load8f(m + j * kLanes), splat(t[j]), even);
    store8u(even + odd, out + b * kLanes, std::min(kLanes, w - b * kLanes));
  }
}

void render_rows(const Plan& p) {
  const Axis& ay = *p.ay;
  const int ty = ay.taps, C = p.C, n = p.span;
  const size_t in_plane = static_cast<size_t>(p.in_h) * p.in_w;
  const size_t out_plane = static_cast<size_t>(p.h) * p.w;
  const size_t ring_row = p.ring_stride, ring_plane = static_cast<size_t>(p.ring_rows) * ring_row;
  for (int y = 0; y < p.h; ++y) {
    const int Y = p.y0 + y;
    const int sy = ay.start[Y];
    const float* wy = &ay.weight[static_cast<size_t>(Y) * ty];
    // Source rows sy .. sy + ty - 1, widened to float once each (start[] never decreases).
    for (int k = 0; k < ty; ++k) {
      const int r = sy + k, slot = r & (p.ring_rows - 1);
      if (p.ring_tag[slot] != r) {
        for (int c = 0; c < C; ++c)
          widen(p.src + c * in_plane + static_cast<size_t>(r) * p.in_w + p.c0, n,
                p.ring + c * ring_plane + slot * ring_row);
        p.ring_tag[slot] = r;
      }
    }
    const float** taps_rows = p.taps_rows;
    for (int k = 0; k < ty; ++k) taps_rows[k] = p.ring + ((sy + k) & (p.ring_rows - 1)) * ring_row;
    for (int c = 0; c < C; ++c) {
      if (c > 0)
        for (int k = 0; k < ty; ++k) taps_rows[k] += ring_plane;
      blend(taps_rows, wy, ty, n, p.row);
      uint8_t* out = p.dst + c * out_plane + static_cast<size_t>(y) * p.w;
      if (p.permute && p.K == 4)
        hpass_permute<4>(p.row, p, out);
      else if (p.permute)
        hpass_permute<0>(p.row, p, out);
      else
        hpass_matrix(p.row, p, out);
    }
  }
}

// No resampling on either axis: an exact crop (+ flip).
void copy_window(const uint8_t* src, int in_h, int in_w, int C, const Window& win, uint8_t* dst) {
  for (int c = 0; c < C; ++c) {
    const uint8_t* s = src + static_cast<size_t>(c) * in_h * in_w;
    uint8_t* d = dst + static_cast<size_t>(c) * win.h * win.w;
    for (int y = 0; y < win.h; ++y) {
      const uint8_t* __restrict sr = s + static_cast<size_t>(win.y + y) * in_w + win.x;
      uint8_t* __restrict dr = d + static_cast<size_t>(y) * win.w;
      if (win.flip) {
        for (int x = 0; x < win.w; ++x) dr[x] = sr[win.w - 1 - x];
      } else {
        std::memcpy(dr, sr, static_cast<size_t>(win.w));
      }
    }
  }
}
