// Reductions, with PyTorch's semantics: sum and mean of every element (a
// scalar), and sum, mean, max, argmax and logsumexp along one axis.
//
// Along an axis: the axis counts from the end when negative (-1 is the last);
// the result drops it, or keeps it with length 1 when `keepdim` is true. A
// scalar (rank 0) has no axes. The sum over an empty axis is 0; mean, max,
// argmax and logsumexp over an empty axis throw, unless there is nothing to
// reduce at all (another dimension is 0: [0, 5] along axis 1 gives [0]).
#pragma once

#include <cstdint>
#include <string>

#include "momnet/kernels/reduction.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"
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
  return tape.record_op({x}, Shape{}, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) array_view(gx, n) += g.output(0)[0] * factor;
  });
}

// `shape` without `axis`, or with it set to 1 when `keepdim`.
inline Shape reduced_shape(const Shape& shape, int axis, bool keepdim) {
  return keepdim ? shape.with_dim(axis, 1) : shape.without_dim(axis);
}

// `shape` read along `axis` for `operation`; throws if the axis is outside
// the shape, or (when `needs_element`) if it is empty while there are
// slices to reduce.
inline AxisSplit reduction_split(const char* operation, const Shape& shape, int axis, bool needs_element) {
  const AxisSplit s = shape.split(axis, operation);
  if (needs_element && s.axis == 0 && s.outer != 0 && s.inner != 0) {
    throw_shape(operation, shape, "axis " + std::to_string(axis) + " is empty: nothing to reduce over");
  }
  return s;
}

// The sum (or mean) of x along `axis`.
template <class T>
Var<T> axis_sum(const char* operation, const Var<T>& x, int axis, bool keepdim, bool mean) {
  Tape<T>& tape = common_tape(operation, x);
  const Shape shape = x.shape();
  const AxisSplit s = reduction_split(operation, shape, axis, mean);
  const Shape out_shape = reduced_shape(shape, axis, keepdim);
  T* out = tape.allocate(out_shape.size());
  kernels::sum(x.data(), out, s);
  const T factor = mean && s.axis != 0 ? T(1) / T(s.axis) : T(1);
  if (mean) {
    const T count = T(s.axis);
    for (Eigen::Index k = 0; k < out_shape.size(); ++k) out[k] /= count;
  }
  return tape.record_op({x}, out_shape, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::sum_backward(g.output(0), gx, s, factor);
  });
}

// The indices of the maxima of `data` (of `shape`) along `axis`.
template <class T>
Tensor<std::int64_t> argmax_of(const char* operation, const T* data, const Shape& shape, int axis, bool keepdim) {
  const AxisSplit s = reduction_split(operation, shape, axis, true);
  Tensor<std::int64_t> result(reduced_shape(shape, axis, keepdim));
  kernels::max<T>(data, nullptr, result.data(), s);
  return result;
}

}  // namespace detail

// The sum of every element, a scalar (0 for an empty value).
template <class T>
Var<T> sum(const Var<T>& x) {
  return detail::scaled_sum("momnet::sum", x, false);
}

// The mean of every element, a scalar; throws for an empty value.
template <class T>
Var<T> mean(const Var<T>& x) {
  return detail::scaled_sum("momnet::mean", x, true);
}

// The sum along `axis` (0 over an empty axis).
template <class T>
Var<T> sum(const Var<T>& x, int axis, bool keepdim = false) {
  return detail::axis_sum("momnet::sum", x, axis, keepdim, false);
}

// The mean along `axis`.
template <class T>
Var<T> mean(const Var<T>& x, int axis, bool keepdim = false) {
  return detail::axis_sum("momnet::mean", x, axis, keepdim, true);
}

// The maximum along `axis`; its gradient goes to the first maximal element
// (a NaN counts as the maximum, as in PyTorch).
template <class T>
Var<T> max(const Var<T>& x, int axis, bool keepdim = false) {
  const char* name = "momnet::max";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  const AxisSplit s = detail::reduction_split(name, shape, axis, true);
  const Shape out_shape = detail::reduced_shape(shape, axis, keepdim);
  T* out = tape.allocate(out_shape.size());
  std::int64_t* index = tape.template allocate_as<std::int64_t>(out_shape.size());
  kernels::max(x.data(), out, index, s);
  return tape.record_op({x}, out_shape, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::max_backward(g.output(0), index, gx, s);
  });
}

// The index of the first maximum along `axis` (no gradient).
template <class T>
Tensor<std::int64_t> argmax(const Var<T>& x, int axis, bool keepdim = false) {
  const char* name = "momnet::argmax";
  detail::common_tape(name, x);
  return detail::argmax_of(name, x.data(), x.shape(), axis, keepdim);
}
template <class T>
Tensor<std::int64_t> argmax(const Tensor<T>& x, int axis, bool keepdim = false) {
  return detail::argmax_of("momnet::argmax", x.data(), x.shape(), axis, keepdim);
}

// log(sum(exp(x))) along `axis`, computed after subtracting the maximum so it
// never overflows; its gradient is the softmax along the axis.
template <class T>
Var<T> logsumexp(const Var<T>& x, int axis, bool keepdim = false) {
  const char* name = "momnet::logsumexp";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  const AxisSplit s = detail::reduction_split(name, shape, axis, true);
  const Shape out_shape = detail::reduced_shape(shape, axis, keepdim);
  T* out = tape.allocate(out_shape.size());
  const T* px = x.data();
  kernels::logsumexp(px, out, s);
  return tape.record_op({x}, out_shape, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::logsumexp_backward(g.output(0), px, static_cast<const T*>(out), gx, s);
  });
}

}  // namespace momnet
