// Reductions to a scalar: sum and mean of every element.
#pragma once

#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {
namespace detail {

// factor * (sum of all elements of x), a scalar.
template <class T>
Var<T> scaled_sum(const char* operation, const Var<T>& x, bool mean) {
  Tape<T>& tape = common_tape(operation, x);
  const Eigen::Index n = x.size();
  if (mean && n == 0) throw_shape(operation, x.shape(), "the mean of no elements is undefined");
  const T factor = mean ? T(1) / T(n) : T(1);
  T* out = tape.allocate(1);
  out[0] = x.array().sum() * factor;
  return tape.record(Shape{}, out, {x}, [=](const T* g) {
    array_view(x.tape().gradient_for(x), n) += g[0] * factor;
  });
}

}  // namespace detail

template <class T>
Var<T> sum(const Var<T>& x) {
  return detail::scaled_sum("momnet::sum", x, false);
}

template <class T>
Var<T> mean(const Var<T>& x) {
  return detail::scaled_sum("momnet::mean", x, true);
}

}  // namespace momnet
