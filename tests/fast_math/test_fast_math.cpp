// The exact arithmetic's NaN and Inf checks, compiled with -ffast-math
// (tests/CMakeLists.txt sets it on this file alone). Under -ffast-math the
// compiler may assume no value is NaN or Inf: std::isfinite folds to true and
// comparisons may be rewritten, so a check written with them lets a NaN
// through as a zero increment. momnet reads finiteness from the bit pattern
// instead; these tests feed NaN and Inf and expect the documented exceptions.
#include <catch2/catch.hpp>

#include <momnet/exact_momentum.hpp>
#include <momnet/fixed_point.hpp>
#include <momnet/memory.hpp>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if !defined(__FAST_MATH__) && (defined(__GNUC__) || defined(__clang__))
#error "tests/fast_math/test_fast_math.cpp must be compiled with -ffast-math"
#endif

using namespace momnet;

namespace {

// NaN and Inf made from their bits, where the compiler cannot fold them away.
template <class T>
T from_bits(std::uint64_t double_bits) {
  double value;
  std::memcpy(&value, &double_bits, sizeof value);
  return static_cast<T>(value);
}
template <class T>
T quiet_nan() {
  return from_bits<T>(0x7ff8000000000000u);
}
template <class T>
T infinity() {
  return from_bits<T>(0x7ff0000000000000u);
}

}  // namespace

TEMPLATE_TEST_CASE("Under -ffast-math, NaN and Inf entering the exact state throw std::domain_error",
                   "[exact][fast_math]", float, double) {
  using T = TestType;
  MemoryCounter counter;
  ExactMomentum<T> state(4, FixedPointFormat(default_fraction_bits<T>()), RationalGamma(0.9, 16), counter);
  const T ok[4] = {T(0.5), T(-0.25), T(1), T(0)};
  for (const T bad : {quiet_nan<T>(), infinity<T>(), -infinity<T>()}) {
    T x[4] = {T(0.5), T(-0.25), bad, T(0)};
    CHECK_THROWS_AS(state.load(x, nullptr), std::domain_error);
    CHECK_THROWS_WITH(state.load(x, nullptr), Catch::Contains("the input x holds") && Catch::Contains("at element 2"));
    CHECK_THROWS_AS(state.load(ok, x), std::domain_error);

    // A block returning NaN or Inf in the forward pass: not a zero increment.
    state.load(ok, nullptr);
    T f[4] = {T(0.1), T(0.2), T(0.3), bad};
    CHECK_THROWS_AS(state.step(f, 5), std::domain_error);
    state.load(ok, nullptr);
    CHECK_THROWS_WITH(state.step(f, 5), Catch::Contains("layer 5: the block returned") &&
                                            Catch::Contains("at element 3"));
  }
  // The same values finite go through and come back exactly.
  state.load(ok, nullptr);
  const T f[4] = {T(0.1), T(0.2), T(0.3), T(0.4)};
  state.step(f, 0);
  ExactMomentum<T> back = state.rewinding_copy();
  back.unstep_position(0);
  back.unstep_velocity(f, 0);
  CHECK_NOTHROW(back.verify_rebuilt(ok, nullptr));
}

TEMPLATE_TEST_CASE("Under -ffast-math, a NaN appearing only in the rebuild is named", "[exact][fast_math]", float,
                   double) {
  using T = TestType;
  MemoryCounter counter;
  ExactMomentum<T> state(2, FixedPointFormat(default_fraction_bits<T>()), RationalGamma(0.5, 16), counter);
  const T x[2] = {T(0.5), T(-0.5)};
  const T f[2] = {T(0.25), T(0.75)};
  state.load(x, nullptr);
  state.step(f, 0);
  ExactMomentum<T> back = state.rewinding_copy();
  back.unstep_position(0);
  const T rebuilt[2] = {quiet_nan<T>(), T(0.75)};
  CHECK_THROWS_AS(back.unstep_velocity(rebuilt, 0), ReconstructionError);
  ExactMomentum<T> again = state.rewinding_copy();
  again.unstep_position(0);
  CHECK_THROWS_WITH(again.unstep_velocity(rebuilt, 0), Catch::Contains("returned nan at element 0"));
}

TEST_CASE("Under -ffast-math, the bit-pattern checks still see NaN and Inf", "[exact][fast_math]") {
  CHECK_FALSE(is_finite_bits(quiet_nan<double>()));
  CHECK_FALSE(is_finite_bits(quiet_nan<float>()));
  CHECK_FALSE(is_finite_bits(infinity<double>()));
  CHECK(is_nan_bits(quiet_nan<double>()));
  CHECK_FALSE(below_fixed_point_limit(quiet_nan<double>()));
  CHECK_FALSE(below_fixed_point_limit(-infinity<double>()));
  CHECK(below_fixed_point_limit(1e18));
  CHECK_THROWS_AS(RationalGamma(quiet_nan<double>(), 16), std::invalid_argument);
}
