// Dropout with PyTorch's semantics (inverted dropout): in training, each
// element is zeroed with probability p and the others are scaled by
// 1 / (1 - p), so the expected value is unchanged; in eval mode, or with
// p = 0, the input is returned as it is. p = 1 zeroes everything. As in
// PyTorch the mask multiplies, so a NaN or Inf input stays NaN where dropped.
// dropout2d zeroes whole channels of [N, C, H, W] (or [C, H, W]) values.
//
// The mask comes from a CounterRng (random.hpp): element (or channel) i is
// dropped when rng.uniform(i) < p. The same generator (a replay with the same
// context) draws the same mask bit for bit. The mask is never stored: the
// reverse rule draws it again from the generator's 64-bit key, so the
// operation keeps only its output, at the cost of one hash per element in
// the backward pass.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "momnet/ops/checks.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {
namespace kernels {

// The value every element of a group is multiplied by: 0 when dropped,
// otherwise `scale`. A product, not a branch: at p = 0.5 a branch is
// mispredicted every other element.
template <class T>
T dropout_factor(const CounterRng& rng, Eigen::Index group, double p, T scale) {
  return scale * static_cast<T>(!rng.bernoulli(static_cast<std::uint64_t>(group), p));
}

// y = x * mask over `groups` runs of `group_size` elements, one mask draw per
// run (1 for dropout, H * W for dropout2d).
template <class T>
void dropout(const T* x, T* y, Eigen::Index groups, Eigen::Index group_size, const CounterRng& rng, double p,
             T scale) {
  for (Eigen::Index k = 0; k < groups; ++k) {
    const T m = dropout_factor(rng, k, p, scale);
    const Eigen::Index base = k * group_size;
    for (Eigen::Index i = base; i < base + group_size; ++i) y[i] = x[i] * m;
  }
}

// gx += g * mask, the mask drawn again from `rng`.
template <class T>
void dropout_backward(const T* g, T* gx, Eigen::Index groups, Eigen::Index group_size, const CounterRng& rng,
                      double p, T scale) {
  for (Eigen::Index k = 0; k < groups; ++k) {
    const T m = dropout_factor(rng, k, p, scale);
    const Eigen::Index base = k * group_size;
    for (Eigen::Index i = base; i < base + group_size; ++i) gx[i] += g[i] * m;
  }
}

}  // namespace kernels

namespace detail {

inline void check_dropout_p(const char* operation, double p) {
  if (is_nan_bits(p) || !(p >= 0.0 && p <= 1.0)) {
    throw std::invalid_argument(std::string(operation) + ": p must lie in [0, 1], got " + precise_string(p));
  }
}

template <class T>
Var<T> masked(const char* operation, const Var<T>& x, double p, bool training, const CounterRng& rng,
              Eigen::Index groups, Eigen::Index group_size) {
  Tape<T>& tape = common_tape(operation, x);
  if (!training || p == 0.0) return x;
  const Shape shape = x.shape();
  const T scale = p == 1.0 ? T(0) : T(1) / static_cast<T>(1.0 - p);
  T* y = tape.allocate(shape.size());
  kernels::dropout(x.data(), y, groups, group_size, rng, p, scale);
  return tape.record_op({x}, shape, y, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::dropout_backward(g.output(0), gx, groups, group_size, rng, p, scale);
  });
}

}  // namespace detail

// x with each element zeroed with probability p and the rest scaled by
// 1 / (1 - p) when `training`; x itself otherwise. Any rank.
template <class T>
Var<T> dropout(const Var<T>& x, double p, bool training, const CounterRng& rng) {
  const char* name = "momnet::dropout";
  detail::check_dropout_p(name, p);
  detail::common_tape(name, x);
  return detail::masked(name, x, p, training, rng, x.size(), 1);
}

// x with each channel (a whole H x W plane) zeroed with probability p and the
// rest scaled by 1 / (1 - p) when `training`; x itself otherwise. Input
// [N, C, H, W] (channel n * C + c draws rng.uniform(n * C + c)) or [C, H, W]
// (as a batch of one).
template <class T>
Var<T> dropout2d(const Var<T>& x, double p, bool training, const CounterRng& rng) {
  const char* name = "momnet::dropout2d";
  detail::check_dropout_p(name, p);
  detail::common_tape(name, x);
  const Shape shape = x.shape();
  if (shape.rank() != 3 && shape.rank() != 4) {
    detail::throw_shape(name, shape, "expected an input of rank 4 [N, C, H, W] or 3 [C, H, W]");
  }
  // (An empty value may have an H * W that does not fit an index.)
  const Eigen::Index plane = shape.size() == 0 ? 0 : shape.dim(-2) * shape.dim(-1);
  const Eigen::Index channels = plane == 0 ? 0 : shape.size() / plane;
  return detail::masked(name, x, p, training, rng, channels, plane);
}

}  // namespace momnet
