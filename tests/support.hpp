// Support shared by the foundation tests: an exception matcher that checks
// the exact type and every part of the message, and seeded random tensors.
#pragma once

#include <catch2/catch.hpp>

#include <momnet/random.hpp>
#include <momnet/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <typeinfo>
#include <vector>

namespace momnet_test {

// Matches an exception of exactly type E whose message contains every part.
template <class E>
class ExceptionIs : public Catch::MatcherBase<E> {
 public:
  explicit ExceptionIs(std::vector<std::string> parts) : parts_(std::move(parts)) {}
  bool match(const E& e) const override {
    if (typeid(e) != typeid(E)) return false;
    const std::string what = e.what();
    return std::all_of(parts_.begin(), parts_.end(),
                       [&](const std::string& p) { return what.find(p) != std::string::npos; });
  }
  std::string describe() const override {
    std::string s = std::string("is exactly ") + typeid(E).name() + " with a message containing";
    for (const auto& p : parts_) s += " \"" + p + "\"";
    return s;
  }

 private:
  std::vector<std::string> parts_;
};

// Uniform values in [low, high), the same for a seed on every platform.
inline momnet::Tensor<double> uniform(const momnet::Shape& shape, std::uint64_t seed, double low = -1.0,
                                      double high = 1.0) {
  momnet::Tensor<double> t(shape);
  momnet::Rng rng(seed);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = rng.uniform(low, high);
  return t;
}

}  // namespace momnet_test

#define REQUIRE_THROWS_EXACT(expression, type, ...) \
  REQUIRE_THROWS_MATCHES(expression, type, momnet_test::ExceptionIs<type>({__VA_ARGS__}))
