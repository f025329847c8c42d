// AVX-512BW vector ops of the int8 screening micro-kernel (see matching_qtile.h), shared by the
// AVX-512BW and AVX-512 VNNI units, which differ only in how they multiply bytes.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace lift {
struct Avx512QOps {
  using I = __m512i;
  using F = __m512;
  static constexpr int W = 16;
  static I izero() { return _mm512_setzero_si512(); }
  static I iload(const void* p) { return _mm512_loadu_si512(p); }
  static I bcast4(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm512_set1_epi32(x);
  }
  static I dot4(I acc, I a, I b) {
    const I pairs = _mm512_maddubs_epi16(a, b);  // u8 x s8, adjacent pairs summed to int16
    return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
  }
  static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static F fload(const float* p) { return _mm512_loadu_ps(p); }
  static F fset1(float x) { return _mm512_set1_ps(x); }
  static F fmul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static void fstore(float* p, F v) { _mm512_storeu_ps(p, v); }
  static bool any_gt(F a, F t) { return _mm512_cmp_ps_mask(a, t, _CMP_GT_OQ) != 0; }
};
}  // namespace lift
