// Random numbers that are the same on every platform and standard library,
// unlike std::uniform_real_distribution:
//
//   Rng         a seeded sequential generator (SplitMix64): a seed reproduces
//               a model's initial weights bit for bit everywhere.
//   CounterRng  a counter-based generator: the bits of element i are a hash of
//               (seed, step, layer, stream, i), with no state between draws.
//               A block that draws its dropout mask from it draws the same
//               mask again when the exact backward replays it, whatever the
//               order of calls, and a weight-tied stack still gets a fresh
//               mask per layer and per training step.
#pragma once

#include <cmath>
#include <cstdint>

namespace momnet {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) noexcept : state_(seed) {}

  // The whole state, for a checkpoint: set_state(state()) continues the
  // sequence exactly where it was.
  std::uint64_t state() const noexcept { return state_; }
  void set_state(std::uint64_t state) noexcept { state_ = state; }

  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double low, double high) noexcept { return low + (high - low) * uniform(); }

  // Standard normal by Box-Muller (one draw per call; no cached state).
  double normal(double mean = 0.0, double stddev = 1.0) noexcept {
    const double u1 = 1.0 - uniform();  // in (0, 1]: log is finite
    const double u2 = uniform();
    const double two_pi = 6.283185307179586476925;
    return mean + stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2);
  }

 private:
  std::uint64_t state_;
};

namespace detail {
// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace detail

class CounterRng {
 public:
  // `stream` separates independent draws of one call (two dropout layers in a
  // block, say).
  constexpr CounterRng(std::uint64_t seed, std::uint64_t step, std::uint64_t layer, std::uint64_t stream = 0) noexcept
      : key_(detail::mix64(detail::mix64(detail::mix64(detail::mix64(seed + 0x9E3779B97F4A7C15ULL) ^ step) ^ layer) ^
                           stream)) {}

  // 64 random bits for element `i`.
  constexpr std::uint64_t bits(std::uint64_t i) const noexcept {
    return detail::mix64(key_ + (i + 1) * 0x9E3779B97F4A7C15ULL);
  }
  // Uniform in [0, 1) with 53 random bits.
  constexpr double uniform(std::uint64_t i) const noexcept { return static_cast<double>(bits(i) >> 11) * 0x1.0p-53; }
  // True with probability p (exactly representable to 2^-53).
  constexpr bool bernoulli(std::uint64_t i, double p) const noexcept { return uniform(i) < p; }

  std::uint64_t key() const noexcept { return key_; }

 private:
  std::uint64_t key_;
};

}  // namespace momnet
