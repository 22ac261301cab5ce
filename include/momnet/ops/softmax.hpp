// Row-wise softmax and log-softmax (each row a sample, each column a class),
// computed after subtracting the row maximum so they never overflow.
#pragma once

#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {
namespace detail {

// out = log_softmax(x) row by row.
template <class T>
void log_softmax_rows(const T* x, T* out, const Shape& shape) {
  const auto X = matrix_view(x, shape).array();
  auto Y = matrix_view(out, shape).array();
  Y = X.colwise() - X.rowwise().maxCoeff();
  Y.colwise() -= Y.exp().rowwise().sum().log();
}

}  // namespace detail

template <class T>
Var<T> softmax(const Var<T>& x) {
  const char* name = "momnet::softmax";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  if (shape.cols() == 0) detail::throw_shape(name, shape, "needs at least one column");
  T* out = tape.allocate(shape.size());
  detail::log_softmax_rows(x.data(), out, shape);
  array_view(out, shape.size()) = array_view(out, shape.size()).exp();
  return tape.record(shape, out, {x}, [=](const T* g) {
    const auto G = matrix_view(g, shape).array();
    const auto Y = matrix_view(out, shape).array();
    // dx = y * (g - sum_j g_j y_j), row by row
    matrix_view(x.tape().gradient_for(x), shape).array() +=
        Y * (G.colwise() - (G * Y).rowwise().sum());
  });
}

template <class T>
Var<T> log_softmax(const Var<T>& x) {
  const char* name = "momnet::log_softmax";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  if (shape.cols() == 0) detail::throw_shape(name, shape, "needs at least one column");
  T* out = tape.allocate(shape.size());
  detail::log_softmax_rows(x.data(), out, shape);
  return tape.record(shape, out, {x}, [=](const T* g) {
    const auto G = matrix_view(g, shape).array();
    const auto Y = matrix_view(out, shape).array();
    // dx = g - softmax(x) * sum_j g_j, row by row
    matrix_view(x.tape().gradient_for(x), shape).array() +=
        G - Y.exp().colwise() * G.rowwise().sum();
  });
}

}  // namespace momnet
