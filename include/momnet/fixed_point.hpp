// The exact arithmetic behind the memory-free backward pass (docs/design.md §2):
// signed 64-bit fixed point for activations and velocities, gamma as a
// rational p / 2^k, and division by the constant p without a hardware divide.
//
// Fixed point: a real x is stored as X = round(x * 2^F), F = fraction bits.
// Integer addition and subtraction are exactly reversible, unlike floating
// point where (a + b) - b != a. Every stored value is kept inside
// |X| < 2^62, so a sum of two never overflows; the representable range of
// a real is therefore |x| < 2^(62 - F), and its resolution 2^-F.
//
//   scalar   default F   range        resolution
//   float    32          +-1.07e9     2.3e-10   (far finer than float's own)
//   double   44          +-2.6e5      5.7e-14   (about 500 ulp of 1.0)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace momnet {

// Arithmetic right shift is floor division by 2^k on every compiler momnet
// supports (C++20 guarantees it; C++17 leaves it to the implementation).
static_assert((std::int64_t{-3} >> 1) == -2, "momnet needs arithmetic right shift");

template <class T>
constexpr int default_fraction_bits() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  return std::is_same_v<T, float> ? 32 : 44;
}

// Finiteness read from the bit pattern (an all-ones exponent is Inf or NaN).
// std::isfinite and comparisons with NaN do not survive -ffast-math or
// -ffinite-math-only, under which the compiler may assume no value is NaN or
// Inf and fold the checks away; integer tests on the bits always run.
inline std::uint64_t float_bits(double value) noexcept {
  std::uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
inline std::uint32_t float_bits(float value) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
inline bool is_finite_bits(double value) noexcept {
  return (float_bits(value) & 0x7ff0000000000000u) != 0x7ff0000000000000u;
}
inline bool is_finite_bits(float value) noexcept {
  return (float_bits(value) & 0x7f800000u) != 0x7f800000u;
}
inline bool is_nan_bits(double value) noexcept { return (float_bits(value) & 0x7fffffffffffffffu) > 0x7ff0000000000000u; }
inline bool is_nan_bits(float value) noexcept { return (float_bits(value) & 0x7fffffffu) > 0x7f800000u; }

// |y| < 2^62, from the exponent bits: false for NaN and Inf too, whatever the
// floating-point flags (|y| < 2^62 exactly when the biased exponent is below
// 1023 + 62).
inline bool below_fixed_point_limit(double y) noexcept { return ((float_bits(y) >> 52) & 0x7ffu) < 1023u + 62u; }

// The shortest decimal that reads back as `value`: 1 - 1e-9 prints as
// 0.999999999, not 1.000000, and 0.9 as 0.9.
inline std::string precise_string(double value) {
  char text[32];
  for (int digits = 6; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  return text;
}

// |X| must stay below this so that X + Y never overflows.
inline constexpr std::int64_t fixed_point_limit = std::int64_t{1} << 62;

// True when v lies in (-2^62, 2^62); computed without signed overflow.
inline bool fixed_in_range(std::uint64_t v) noexcept {
  return v + static_cast<std::uint64_t>(fixed_point_limit - 1) <
         static_cast<std::uint64_t>(2 * (fixed_point_limit - 1) + 1);
}

class FixedPointFormat {
 public:
  explicit FixedPointFormat(int fraction_bits) : fraction_bits_(fraction_bits) {
    if (fraction_bits < 1 || fraction_bits > 60) {
      throw std::invalid_argument("momnet::FixedPointFormat: fraction_bits must lie in [1, 60], got " +
                                  std::to_string(fraction_bits));
    }
  }
  int fraction_bits() const noexcept { return fraction_bits_; }
  double scale() const noexcept { return std::ldexp(1.0, fraction_bits_); }
  double resolution() const noexcept { return std::ldexp(1.0, -fraction_bits_); }
  // The largest magnitude a real may take: 2^(62 - F).
  double range() const noexcept { return std::ldexp(1.0, 62 - fraction_bits_); }

 private:
  int fraction_bits_;
};

// gamma rounded to p / 2^k, round to nearest. The same rounded value serves
// as gamma and (2^k - p) / 2^k as 1 - gamma, forward and backward, so the two
// always sum to exactly one. k <= 26 keeps p 2^k below 2^53, where the bit
// store's inverse divides in double precision exactly.
class RationalGamma {
 public:
  RationalGamma(double gamma, int bits) : bits_(bits) {
    if (bits < 1 || bits > 26) {
      throw std::invalid_argument("momnet::RationalGamma: gamma_bits must lie in [1, 26], got " +
                                  std::to_string(bits));
    }
    if (is_nan_bits(gamma) || !(gamma >= 0.0 && gamma <= 1.0)) {
      throw std::invalid_argument("momnet::RationalGamma: gamma must lie in [0, 1], got " + precise_string(gamma));
    }
    numerator_ = static_cast<std::uint64_t>(std::nearbyint(std::ldexp(gamma, bits)));
  }
  std::uint64_t numerator() const noexcept { return numerator_; }      // p
  int bits() const noexcept { return bits_; }                           // k
  std::uint64_t denominator() const noexcept { return std::uint64_t{1} << bits_; }
  double value() const noexcept { return std::ldexp(static_cast<double>(numerator_), -bits_); }
  double complement() const noexcept {
    return std::ldexp(static_cast<double>(denominator() - numerator_), -bits_);
  }

 private:
  int bits_;
  std::uint64_t numerator_;
};

// Unsigned 64-bit division by a run-time constant d in [1, 2^32], for any
// 64-bit numerator: a floating-point estimate from the rounded reciprocal,
// refined once in floating point and fixed up by one step in integers. The
// result is the exact floor(n / d) whatever the rounding (the estimate is
// within 3073 of it, so the remainder stays below 2^44 and converts to double
// exactly). Unlike a hardware divide or a 64x64->128 multiply, every step has
// an AVX-512 instruction, so the bit store's loops vectorise.
class ConstantDivider {
 public:
  explicit ConstantDivider(std::uint64_t divisor)
      : divisor_(divisor), inverse_(divisor == 0 ? 0.0 : 1.0 / static_cast<double>(divisor)) {
    if (divisor == 0 || divisor > (std::uint64_t{1} << 32)) {
      throw std::invalid_argument("momnet::ConstantDivider: the divisor must lie in [1, 2^32], got " +
                                  std::to_string(divisor));
    }
  }

  std::uint64_t divisor() const noexcept { return divisor_; }

  // floor(x) for |x| < 2^62, written as truncation and a correction because
  // GCC turns (int64) floor(x) into a call it cannot vectorise. (A clamp here
  // would stop GCC vectorising the bit store's loops: ten times slower.)
  static std::int64_t floor_to_int(double x) noexcept {
    const std::int64_t truncated = static_cast<std::int64_t>(x);
    return truncated - std::int64_t{static_cast<double>(truncated) > x};
  }

  // floor(n / d) for n < 2^53: n converts to double exactly, the estimate is
  // within one of the quotient, and one integer step fixes it.
  std::uint64_t small_quotient(std::uint64_t n) const noexcept {
    const std::uint64_t q = static_cast<std::uint64_t>(static_cast<double>(n) * inverse_);
    const std::int64_t remainder = static_cast<std::int64_t>(n - q * divisor_);
    return q + static_cast<std::uint64_t>(std::int64_t{remainder >= static_cast<std::int64_t>(divisor_)} -
                                          std::int64_t{remainder < 0});
  }

  // floor(n / d), for every 64-bit n. The estimate is capped at the largest
  // double below 2^64 so that it always converts; then the remainder of the
  // estimate is below 2^44 in magnitude and floor_to_int stays in its domain.
  std::uint64_t quotient(std::uint64_t n) const noexcept {
    const double estimate = std::min(static_cast<double>(n) * inverse_, 0x1.fffffffffffffp63);
    std::uint64_t q = static_cast<std::uint64_t>(estimate);
    const std::int64_t rough = static_cast<std::int64_t>(n - q * divisor_);
    q += static_cast<std::uint64_t>(floor_to_int(static_cast<double>(rough) * inverse_));
    const std::int64_t remainder = static_cast<std::int64_t>(n - q * divisor_);
    q += static_cast<std::uint64_t>(std::int64_t{remainder >= static_cast<std::int64_t>(divisor_)} -
                                    std::int64_t{remainder < 0});
    return q;
  }

 private:
  std::uint64_t divisor_;
  double inverse_;
};

}  // namespace momnet
