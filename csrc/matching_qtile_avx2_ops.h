// AVX2 vector ops of the int8 screening micro-kernel (see matching_qtile.h), shared by the AVX2 and
// AVX-VNNI units, which differ only in how they multiply bytes.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace lift {
struct Avx2QOps {
  using I = __m256i;
  using F = __m256;
  static constexpr int W = 8;
  static I izero() { return _mm256_setzero_si256(); }
  static I iload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static I bcast4(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm256_set1_epi32(x);
  }
  static I dot4(I acc, I a, I b) {
    const I pairs = _mm256_maddubs_epi16(a, b);  // u8 x s8, adjacent pairs summed to int16
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static F fload(const float* p) { return _mm256_loadu_ps(p); }
  static F fset1(float x) { return _mm256_set1_ps(x); }
  static F fmul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static void fstore(float* p, F v) { _mm256_storeu_ps(p, v); }
  static bool any_gt(F a, F t) { return _mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GT_OQ)) != 0; }
};
}  // namespace lift
