// Softmax and log-softmax along an axis (the last by default: each row a
// sample, each column a class), computed after subtracting the maximum along
// the axis so they never overflow. PyTorch's semantics: the axis counts from
// the end when negative; a scalar (rank 0) has no axis; an empty axis throws
// unless the value is empty anyway (softmax of [0, 10] is an empty [0, 10]).
#pragma once

#include <string>

#include "momnet/kernels/softmax.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"

namespace momnet {
namespace detail {

// softmax (log_softmax when `log`) of x along `axis`, recorded as `operation`.
template <class T>
Var<T> softmax_along(const char* operation, const Var<T>& x, int axis, bool log) {
  Tape<T>& tape = common_tape(operation, x);
  const Shape shape = x.shape();
  const AxisSplit s = shape.split(axis, operation);
  if (s.axis == 0 && s.outer != 0 && s.inner != 0) {
    throw_shape(operation, shape, "axis " + std::to_string(axis) + " is empty: nothing to normalise over");
  }
  T* out = tape.allocate(shape.size());
  {
    // Other axes than the last need inner values of scratch: pool memory for
    // this pass only, not arena memory kept with the node.
    const auto scratch = tape.scratch(s.inner > 1 ? s.inner : 0);
    if (log) {
      kernels::log_softmax(x.data(), out, s, scratch.data());
    } else {
      kernels::softmax(x.data(), out, s, scratch.data());
    }
  }
  return tape.record_op({x}, shape, out, [=](Gradients<T>& g) {
    T* gx = g.input(0);
    if (gx == nullptr) return;
    const auto scratch = g.tape().scratch(s.inner > 1 ? s.inner : 0);
    if (log) {
      kernels::log_softmax_backward(g.output(0), static_cast<const T*>(out), gx, s, scratch.data());
    } else {
      kernels::softmax_backward(g.output(0), static_cast<const T*>(out), gx, s, scratch.data());
    }
  });
}

}  // namespace detail

// exp(x) / sum(exp(x)) along `axis`.
template <class T>
Var<T> softmax(const Var<T>& x, int axis = -1) {
  return detail::softmax_along("momnet::softmax", x, axis, false);
}

// x - log(sum(exp(x))) along `axis`.
template <class T>
Var<T> log_softmax(const Var<T>& x, int axis = -1) {
  return detail::softmax_along("momnet::log_softmax", x, axis, true);
}

}  // namespace momnet
