// Seeded initialisers for parameters. fan_in and fan_out are those of a dense
// weight [out, in]: fan_in = in, fan_out = out.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include "momnet/parameter.hpp"
#include "momnet/random.hpp"

namespace momnet::init {

template <class T>
void uniform(Parameter<T>& p, double low, double high, Rng& rng) {
  for (Eigen::Index i = 0; i < p.size(); ++i) p.value_data()[i] = static_cast<T>(rng.uniform(low, high));
}

template <class T>
void normal(Parameter<T>& p, double mean, double stddev, Rng& rng) {
  for (Eigen::Index i = 0; i < p.size(); ++i) p.value_data()[i] = static_cast<T>(rng.normal(mean, stddev));
}

inline void check_fan(const char* name, Eigen::Index fan) {
  if (fan <= 0) throw std::invalid_argument(std::string(name) + ": fan must be positive, got " + std::to_string(fan));
}

// He et al. 2015: U(-b, b) with b = gain * sqrt(3 / fan_in); gain sqrt(2) suits ReLU.
template <class T>
void kaiming_uniform(Parameter<T>& p, Eigen::Index fan_in, Rng& rng, double gain = std::sqrt(2.0)) {
  check_fan("momnet::init::kaiming_uniform", fan_in);
  const double bound = gain * std::sqrt(3.0 / static_cast<double>(fan_in));
  uniform(p, -bound, bound, rng);
}

// He et al. 2015: N(0, gain^2 / fan_in).
template <class T>
void kaiming_normal(Parameter<T>& p, Eigen::Index fan_in, Rng& rng, double gain = std::sqrt(2.0)) {
  check_fan("momnet::init::kaiming_normal", fan_in);
  normal(p, 0.0, gain / std::sqrt(static_cast<double>(fan_in)), rng);
}

// Glorot and Bengio 2010: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)).
template <class T>
void xavier_uniform(Parameter<T>& p, Eigen::Index fan_in, Eigen::Index fan_out, Rng& rng,
                    double gain = 1.0) {
  check_fan("momnet::init::xavier_uniform", fan_in + fan_out);
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  uniform(p, -bound, bound, rng);
}

// Glorot and Bengio 2010: N(0, gain^2 * 2 / (fan_in + fan_out)).
template <class T>
void xavier_normal(Parameter<T>& p, Eigen::Index fan_in, Eigen::Index fan_out, Rng& rng,
                   double gain = 1.0) {
  check_fan("momnet::init::xavier_normal", fan_in + fan_out);
  normal(p, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), rng);
}

// PyTorch's default for nn.Linear: weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
template <class T>
void pytorch_linear(Parameter<T>& p, Eigen::Index fan_in, Rng& rng) {
  check_fan("momnet::init::pytorch_linear", fan_in);
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  uniform(p, -bound, bound, rng);
}

// PyTorch's fans of a weight (torch.nn.init's _calculate_fan_in_and_fan_out):
// [out, in, k...] has fan_in = in * prod(k) and fan_out = out * prod(k); a
// grouped convolution's weight [out, in / groups, kh, kw] counts in / groups.
inline Eigen::Index fan_in_of(const Shape& weight) {
  if (weight.rank() < 2) {
    throw std::invalid_argument("momnet::init::fan_in_of: a weight needs at least 2 dimensions, got " +
                                weight.to_string());
  }
  Eigen::Index fan = weight.dim(1);
  for (int i = 2; i < weight.rank(); ++i) fan *= weight.dim(i);
  return fan;
}
inline Eigen::Index fan_out_of(const Shape& weight) {
  if (weight.rank() < 2) {
    throw std::invalid_argument("momnet::init::fan_out_of: a weight needs at least 2 dimensions, got " +
                                weight.to_string());
  }
  Eigen::Index fan = weight.dim(0);
  for (int i = 2; i < weight.rank(); ++i) fan *= weight.dim(i);
  return fan;
}

// torchvision's ResNet initialisation of its convolutions,
// kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out),
// fan_out from the weight's own shape.
template <class T>
void kaiming_normal_fan_out(Parameter<T>& weight, Rng& rng) {
  const Eigen::Index fan = fan_out_of(weight.shape());
  check_fan("momnet::init::kaiming_normal_fan_out", fan);
  normal(weight, 0.0, std::sqrt(2.0 / static_cast<double>(fan)), rng);
}

// PyTorch's default for nn.Conv2d (and nn.Linear): the weight by
// kaiming_uniform_(a = sqrt(5)), whose bound gain * sqrt(3 / fan_in) with
// gain = sqrt(2 / (1 + 5)) is 1/sqrt(fan_in), and the bias U(+-1/sqrt(fan_in)),
// fan_in from the weight's shape. `bias` may be null.
template <class T>
void pytorch_default(Parameter<T>& weight, Parameter<T>* bias, Rng& rng) {
  const Eigen::Index fan = fan_in_of(weight.shape());
  check_fan("momnet::init::pytorch_default", fan);
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan));
  uniform(weight, -bound, bound, rng);
  if (bias != nullptr) uniform(*bias, -bound, bound, rng);
}

}  // namespace momnet::init
