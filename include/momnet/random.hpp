// A small seeded random generator (SplitMix64) whose streams are the same on
// every platform and standard library, unlike std::uniform_real_distribution:
// a seed reproduces a model's initial weights bit for bit everywhere.
#pragma once

#include <cmath>
#include <cstdint>

namespace momnet {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) noexcept : state_(seed) {}

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

}  // namespace momnet
