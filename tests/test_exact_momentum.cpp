// The exact arithmetic on its own: the constant divider, gamma as a
// rational, fixed-point conversion, and the bit store's inverse and memory.
#include <catch2/catch.hpp>

#include <momnet/exact_momentum.hpp>
#include <momnet/fixed_point.hpp>
#include <momnet/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

using namespace momnet;

TEST_CASE("ConstantDivider agrees with hardware division", "[exact]") {
  Rng rng(11);
  std::vector<std::uint64_t> divisors = {1, 2, 3, 5, 7, 10, 641, 32768, 58982, 64881, 65535, 65536,
                                         (std::uint64_t{1} << 32) - 1, std::uint64_t{1} << 32};
  for (int i = 0; i < 50; ++i) divisors.push_back(1 + rng.next() % (std::uint64_t{1} << 32));
  const std::uint64_t max = ~std::uint64_t{0};
  for (std::uint64_t d : divisors) {
    const ConstantDivider divider(d);
    // The domain: every 64-bit numerator (d = 1 near 2^64 tests the capped estimate).
    std::vector<std::uint64_t> numerators = {0, 1, d - 1, d, d + 1, max, max - 1, max - d,
                                             std::uint64_t{1} << 62, (std::uint64_t{1} << 62) + d - 1};
    for (int j = 0; j < 3000; ++j) numerators.push_back(rng.next() >> (j % 64));
    // Multiples of d and their neighbours, where rounding is most delicate.
    for (int j = 0; j < 300; ++j) {
      const std::uint64_t q = rng.next() >> (1 + j % 63);
      if (q > max / d) continue;
      numerators.push_back(q * d);
      if (q * d > 0) numerators.push_back(q * d - 1);
      if (q * d < max) numerators.push_back(q * d + 1);
    }
    for (std::uint64_t n : numerators) {
      INFO("n = " << n << ", d = " << d);
      REQUIRE(divider.quotient(n) == n / d);
    }
  }
  REQUIRE_THROWS_WITH(ConstantDivider(0), Catch::Contains("the divisor must lie in [1, 2^32], got 0"));
  REQUIRE_THROWS_WITH(ConstantDivider((std::uint64_t{1} << 32) + 1), Catch::Contains("got 4294967297"));
}

TEST_CASE("ConstantDivider::small_quotient is exact below 2^53", "[exact]") {
  Rng rng(12);
  for (std::uint64_t d : {std::uint64_t{1}, std::uint64_t{3}, std::uint64_t{58982}, std::uint64_t{60397978},
                          (std::uint64_t{1} << 26) - 1, std::uint64_t{1} << 26}) {
    const ConstantDivider divider(d);
    for (int j = 0; j < 5000; ++j) {
      const std::uint64_t n = (rng.next() >> 11) >> (j % 53);  // below 2^53
      const std::uint64_t near_multiple = (n / d) * d + (j % 3) - 1;
      for (std::uint64_t m : {n, near_multiple}) {
        if (m >= (std::uint64_t{1} << 53)) continue;
        INFO("n = " << m << ", d = " << d);
        REQUIRE(divider.small_quotient(m) == m / d);
      }
    }
  }
}

TEST_CASE("RationalGamma rounds to the nearest p / 2^k and validates", "[exact]") {
  const RationalGamma g(0.9, 16);
  CHECK(g.numerator() == 58982);  // 0.9 * 65536 = 58982.4
  CHECK(g.denominator() == 65536);
  CHECK(g.value() + g.complement() == 1.0);
  CHECK(RationalGamma(0.5, 16).numerator() == 32768);
  CHECK(RationalGamma(1.0, 16).numerator() == 65536);
  CHECK(RationalGamma(0.0, 16).numerator() == 0);
  REQUIRE_THROWS_WITH(RationalGamma(1.5, 16), Catch::Contains("gamma must lie in [0, 1], got 1.5"));
  REQUIRE_THROWS_WITH(RationalGamma(-0.1, 16), Catch::Contains("gamma must lie in [0, 1]"));
  REQUIRE_THROWS_WITH(RationalGamma(std::nan(""), 16), Catch::Contains("gamma must lie in [0, 1]"));
  REQUIRE_THROWS_WITH(RationalGamma(0.9, 0), Catch::Contains("gamma_bits must lie in [1, 26], got 0"));
  REQUIRE_THROWS_WITH(RationalGamma(0.9, 27), Catch::Contains("gamma_bits must lie in [1, 26], got 27"));
  REQUIRE_THROWS_WITH(FixedPointFormat(61), Catch::Contains("fraction_bits must lie in [1, 60], got 61"));
}

TEST_CASE("FixedPointFormat states the range and resolution", "[exact]") {
  const FixedPointFormat f(default_fraction_bits<float>());
  CHECK(f.fraction_bits() == 32);
  CHECK(f.range() == std::ldexp(1.0, 30));
  CHECK(f.resolution() == std::ldexp(1.0, -32));
  CHECK(default_fraction_bits<double>() == 44);
}

// Steps a state through `depth` layers with pseudo-random increments f, then
// undoes them; every (X, V) on the way back must equal the forward's.
template <class T>
void round_trip(double gamma, std::size_t depth, Eigen::Index elements, int gamma_bits = 16) {
  MemoryCounter counter;
  const RationalGamma g(gamma, gamma_bits);
  ExactMomentum<T> state(elements, FixedPointFormat(default_fraction_bits<T>()), g, counter);
  Rng rng(5);
  std::vector<T> x0(static_cast<std::size_t>(elements)), f(x0.size());
  for (T& value : x0) value = static_cast<T>(rng.uniform(-2, 2));
  state.load(x0.data(), nullptr);
  std::vector<std::vector<std::int64_t>> xs, vs;
  std::vector<std::vector<T>> fs;
  // Every other layer also writes x out in the same pass: the values read_x() gives.
  std::vector<T> written(x0.size()), read(x0.size());
  for (std::size_t n = 0; n < depth; ++n) {
    xs.emplace_back(state.x(), state.x() + elements);
    vs.emplace_back(state.v(), state.v() + elements);
    for (T& value : f) value = static_cast<T>(rng.uniform(-1, 1));
    fs.push_back(f);
    if (n % 2 == 1) {
      state.step(f.data(), n, written.data());
      state.read_x(read.data());
      REQUIRE(written == read);
    } else {
      state.step(f.data(), n);
    }
  }
  ExactMomentum<T> back = state.rewinding_copy();
  for (std::size_t n = depth; n-- > 0;) {
    if (n % 2 == 1) {
      back.unstep_position(n, written.data());
      back.read_x(read.data());
      REQUIRE(written == read);
    } else {
      back.unstep_position(n);
    }
    back.unstep_velocity(fs[n].data(), n);
    REQUIRE(std::equal(xs[n].begin(), xs[n].end(), back.x()));
    REQUIRE(std::equal(vs[n].begin(), vs[n].end(), back.v()));
  }
  REQUIRE_NOTHROW(back.verify_rebuilt(x0.data(), nullptr));
  // The spills happened, and no more of them than the documented bound allows.
  const std::size_t bound_words = bit_store_words_per_element(depth, g);
  CHECK(1 + state.spill_count() <= bound_words);
  CHECK(state.store_bytes() <= bit_store_bytes_bound(static_cast<std::size_t>(elements), depth, g));
}

TEST_CASE("The bit store inverts every layer exactly, through its spills", "[exact]") {
  for (double gamma : {0.01, 0.5, 0.9, 0.99, 1.0}) {
    INFO("gamma " << gamma);
    round_trip<float>(gamma, 700, 33);
    round_trip<double>(gamma, 700, 33);
  }
  // The extremes of gamma's precision: 1 bit (gamma 0.5 or 1) and 26 bits.
  round_trip<double>(0.5, 300, 17, 1);
  round_trip<double>(0.9, 300, 17, 26);
  round_trip<float>(0.999, 300, 17, 26);
}

TEST_CASE("The bit-store bound is tight: within 10% of the spills a real run makes", "[exact]") {
  // gamma = 0.9, k = 16: g = 65536 / 58982, at least L = 294 layers between spills.
  const RationalGamma g(0.9, 16);
  CHECK(bit_store_layers_per_spill(g) == 294);
  CHECK(bit_store_words_per_element(1, g) == 1);
  CHECK(bit_store_words_per_element(294, g) == 1);
  CHECK(bit_store_words_per_element(295, g) == 2);
  CHECK(bit_store_layers_per_spill(RationalGamma(1.0, 16)) == 0);  // never spills
  // gamma = 1 - 3 / 2^26: log_g(1 + A) = 210642636.37, so L = 210642637; a bound
  // computed as log2(2^k) - log2(p) loses digits to cancellation and overshoots.
  CHECK(bit_store_layers_per_spill(RationalGamma(1.0 - std::ldexp(3.0, -26), 26)) <= 210642637);
  CHECK(bit_store_layers_per_spill(RationalGamma(1.0 - std::ldexp(3.0, -26), 26)) >= 210642600);
  MemoryCounter counter;
  const Eigen::Index elements = 4096;
  const std::size_t depth = 3000;
  ExactMomentum<float> state(elements, FixedPointFormat(32), g, counter);
  std::vector<float> x(static_cast<std::size_t>(elements), 0.5f), f(x.size());
  state.load(x.data(), nullptr);
  Rng rng(9);
  for (std::size_t n = 0; n < depth; ++n) {
    for (float& value : f) value = static_cast<float>(rng.uniform(-1, 1));
    state.step(f.data(), n);
  }
  const double bound = static_cast<double>(bit_store_words_per_element(depth, g));
  const double used = static_cast<double>(1 + state.spill_count());
  INFO("words per element: used " << used << ", bound " << bound);
  CHECK(used <= bound);
  CHECK(used >= 0.9 * bound);
}

TEST_CASE("A non-deterministic rebuild is detected, not returned", "[exact]") {
  MemoryCounter counter;
  ExactMomentum<double> state(4, FixedPointFormat(44), RationalGamma(0.9, 16), counter);
  const double x0[4] = {0.1, 0.2, 0.3, 0.4};
  double f[4] = {0.5, -0.5, 0.25, 1.0};
  state.load(x0, nullptr);
  state.step(f, 0);
  ExactMomentum<double> back = state.rewinding_copy();
  back.unstep_position(0);
  f[2] += 1e-9;  // the block "returned" something else on the way back
  back.unstep_velocity(f, 0);
  REQUIRE_THROWS_AS(back.verify_rebuilt(x0, nullptr), ReconstructionError);
  REQUIRE_THROWS_WITH(back.verify_rebuilt(x0, nullptr), Catch::Contains("did not rebuild"));
}

TEST_CASE("Inputs outside the fixed-point range or not finite are rejected", "[exact]") {
  MemoryCounter counter;
  ExactMomentum<float> state(2, FixedPointFormat(32), RationalGamma(0.9, 16), counter);
  const float huge[2] = {0.0f, 2e9f};
  REQUIRE_THROWS_AS(state.load(huge, nullptr), std::range_error);
  REQUIRE_THROWS_WITH(state.load(huge, nullptr),
                      Catch::Contains("the input x holds 2e+09 at element 1") && Catch::Contains("exact range"));
  const float nan[2] = {std::nanf(""), 0.0f};
  REQUIRE_THROWS_AS(state.load(nan, nullptr), std::domain_error);
  REQUIRE_THROWS_WITH(state.load(nan, nullptr), Catch::Contains("nan at element 0"));
  const float ok[2] = {1.0f, 2.0f};
  const float inf_v[2] = {0.0f, INFINITY};
  REQUIRE_THROWS_WITH(state.load(ok, inf_v), Catch::Contains("the initial velocity holds inf at element 1"));
  state.load(ok, nullptr);
  const float bad_f[2] = {0.0f, std::nanf("")};
  REQUIRE_THROWS_AS(state.step(bad_f, 7), std::domain_error);
  state.load(ok, nullptr);
  REQUIRE_THROWS_WITH(state.step(bad_f, 7), Catch::Contains("layer 7: the block returned nan at element 1"));
  state.load(ok, nullptr);
  const float big_f[2] = {1e12f, 0.0f};
  REQUIRE_THROWS_AS(state.step(big_f, 3), std::range_error);
  state.load(ok, nullptr);
  REQUIRE_THROWS_WITH(state.step(big_f, 3), Catch::Contains("layer 3: the block returned 1e+12 at element 0"));
}

TEST_CASE("Velocity growing out of range names the layer", "[exact]") {
  MemoryCounter counter;
  // F = 60 leaves a range of +-4: a few layers of f = 1 overflow the velocity or x.
  ExactMomentum<double> state(1, FixedPointFormat(60), RationalGamma(0.5, 16), counter);
  const double x0[1] = {0.0};
  const double f[1] = {3.9};
  state.load(x0, nullptr);
  std::size_t layer = 0;
  try {
    for (; layer < 10; ++layer) state.step(f, layer);
    FAIL("no range error");
  } catch (const std::range_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("layer " + std::to_string(layer) + ": the activation") &&
                             Catch::Contains("left the exact range +-4"));
  }
}

TEST_CASE("A state of 0 elements runs forward, backward and its checks", "[exact][hardening]") {
  // Its buffers are null: memcpy, memset and memcmp may not receive them
  // (UndefinedBehaviorSanitizer flags the call even for 0 bytes).
  MemoryCounter counter;
  ExactMomentum<float> state(0, FixedPointFormat(32), RationalGamma(0.5, 16), counter);
  const float* none = nullptr;
  state.load(none, nullptr);
  for (std::size_t n = 0; n < 200; ++n) state.step(none, n);  // past a spill decision
  ExactMomentum<float> back = state.rewinding_copy();
  for (std::size_t n = 200; n-- > 0;) {
    back.unstep_position(n);
    back.unstep_velocity(none, n);
  }
  REQUIRE_NOTHROW(back.verify_rebuilt(none, nullptr));
  CHECK(state.store_bytes() == 0);
  CHECK_THROWS_AS(ExactMomentum<float>(-1, FixedPointFormat(32), RationalGamma(0.5, 16), counter),
                  std::invalid_argument);
}

TEST_CASE("A NaN that appears only in the rebuild is reported as NaN", "[exact][hardening]") {
  MemoryCounter counter;
  ExactMomentum<double> state(3, FixedPointFormat(44), RationalGamma(0.9, 16), counter);
  const double x0[3] = {0.1, 0.2, 0.3};
  double f[3] = {0.5, -0.5, 0.25};
  state.load(x0, nullptr);
  state.step(f, 0);
  state.step(f, 1);
  for (double wrong : {std::nan(""), -static_cast<double>(INFINITY)}) {
    ExactMomentum<double> back = state.rewinding_copy();
    back.unstep_position(1);
    double rebuilt[3] = {f[0], wrong, f[2]};  // the block "returns" NaN on the way back only
    try {
      back.unstep_velocity(rebuilt, 1);
      FAIL("no error");
    } catch (const ReconstructionError& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find(std::isnan(wrong) ? "returned nan at element 1" : "returned -inf at element 1") !=
            std::string::npos);
      CHECK(what.find("layer 1") != std::string::npos);
      CHECK(what.find("left the exact range") == std::string::npos);
    }
  }
}

TEST_CASE("Finiteness is read from the bit pattern", "[exact][hardening]") {
  for (double value : {0.0, -0.0, 1.0, -3.5e300, 5e-324, std::numeric_limits<double>::max()}) {
    CHECK(is_finite_bits(value));
    CHECK_FALSE(is_nan_bits(value));
    CHECK(is_finite_bits(static_cast<float>(value)) == std::isfinite(static_cast<float>(value)));
  }
  for (double value : {static_cast<double>(INFINITY), -static_cast<double>(INFINITY)}) {
    CHECK_FALSE(is_finite_bits(value));
    CHECK_FALSE(is_nan_bits(value));
    CHECK_FALSE(is_finite_bits(static_cast<float>(value)));
  }
  CHECK(is_nan_bits(std::nan("")));
  CHECK(is_nan_bits(-std::nan("")));
  CHECK(is_nan_bits(std::nanf("")));
  CHECK_FALSE(is_finite_bits(std::nanf("")));
  // |y| < 2^62 exactly.
  CHECK(below_fixed_point_limit(std::nextafter(std::ldexp(1.0, 62), 0.0)));
  CHECK(below_fixed_point_limit(-std::nextafter(std::ldexp(1.0, 62), 0.0)));
  CHECK_FALSE(below_fixed_point_limit(std::ldexp(1.0, 62)));
  CHECK_FALSE(below_fixed_point_limit(-std::ldexp(1.0, 62)));
  CHECK_FALSE(below_fixed_point_limit(INFINITY));
  CHECK_FALSE(below_fixed_point_limit(std::nan("")));
  CHECK(below_fixed_point_limit(0.0));
  CHECK(below_fixed_point_limit(5e-324));
}

TEST_CASE("gamma errors print every digit", "[exact][hardening]") {
  REQUIRE_THROWS_WITH(RationalGamma(1.0 + 1e-9, 16), Catch::Contains("got 1.000000001"));
  REQUIRE_THROWS_WITH(RationalGamma(-1e-12, 16), Catch::Contains("got -1e-12"));
}
