// Operations on shape: reshape (a view: no copy), and concat and slice along
// the features (the columns of the matrix reading: every dimension after the
// first).
#pragma once

#include <string>
#include <vector>

#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {

// The same elements under a new shape of the same size; shares x's storage.
template <class T>
Var<T> reshape(const Var<T>& x, const Shape& shape) {
  const char* name = "momnet::reshape";
  Tape<T>& tape = detail::common_tape(name, x);
  if (shape.size() != x.size()) detail::throw_shapes(name, x.shape(), shape, "sizes differ");
  const Eigen::Index n = shape.size();
  return tape.record(shape, const_cast<T*>(x.data()), {x}, [=](const T* g) {
    array_view(x.tape().gradient_for(x), n) += array_view(g, n);
  });
}

// Columns side by side: every part has the same rows; the result is
// [rows, sum of the parts' columns].
template <class T>
Var<T> concat(const std::vector<Var<T>>& parts) {
  const char* name = "momnet::concat";
  if (parts.empty()) throw std::invalid_argument(std::string(name) + ": nothing to concatenate");
  Tape<T>& tape = detail::common_tape(name, parts.front());
  const Eigen::Index rows = parts.front().shape().rows();
  Eigen::Index cols = 0;
  for (const Var<T>& part : parts) {
    detail::common_tape(name, parts.front(), part);
    if (part.shape().rows() != rows) {
      detail::throw_shapes(name, parts.front().shape(), part.shape(), "row counts differ");
    }
    cols += part.shape().cols();
  }
  const Shape out_shape{rows, cols};
  T* out = tape.allocate(out_shape.size());
  auto Y = matrix_view(out, out_shape);
  // Keep the parts on the tape: the backward step holds a pointer to them.
  Var<T>* kept = tape.template allocate_as<Var<T>>(static_cast<Eigen::Index>(parts.size()));
  Eigen::Index begin = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    kept[i] = parts[i];
    const Eigen::Index c = parts[i].shape().cols();
    Y.middleCols(begin, c) = matrix_view(parts[i].data(), parts[i].shape());
    begin += c;
  }
  const std::size_t count = parts.size();
  auto backward = [=](const T* g) {
    const auto G = matrix_view(g, out_shape);
    Eigen::Index offset = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Var<T>& part = kept[i];
      const Eigen::Index c = part.shape().cols();
      if (part.requires_grad()) {
        matrix_view(part.tape().gradient_for(part), part.shape()) += G.middleCols(offset, c);
      }
      offset += c;
    }
  };
  return tape.record(out_shape, out, parts.data(), parts.size(), backward);
}

template <class T>
Var<T> concat(const Var<T>& a, const Var<T>& b) {
  return concat(std::vector<Var<T>>{a, b});
}

// Columns [begin, begin + count) of x, as [rows, count].
template <class T>
Var<T> slice(const Var<T>& x, Eigen::Index begin, Eigen::Index count) {
  const char* name = "momnet::slice";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  if (begin < 0 || count < 0 || begin + count > shape.cols()) {
    throw std::invalid_argument(std::string(name) + ": columns [" + std::to_string(begin) + ", " +
                                std::to_string(begin + count) + ") are outside " + shape.to_string() +
                                " (" + std::to_string(shape.cols()) + " columns)");
  }
  const Shape out_shape{shape.rows(), count};
  T* out = tape.allocate(out_shape.size());
  const T* px = x.data();
  matrix_view(out, out_shape) = matrix_view(px, shape).middleCols(begin, count);
  return tape.record(out_shape, out, {x}, [=](const T* g) {
    matrix_view(x.tape().gradient_for(x), shape).middleCols(begin, count) += matrix_view(g, out_shape);
  });
}

}  // namespace momnet
