// Operations on shape, with PyTorch's semantics: reshape (a view: no copy),
// concat and slice along an axis (the last by default), permute (any order of
// the axes) and transpose (two axes swapped). Axes count from the end when
// negative; a scalar (rank 0) has no axes.
#pragma once

#include <algorithm>
#include <array>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "momnet/kernels/shape.hpp"
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
  return tape.record_op({x}, shape, const_cast<T*>(x.data()), [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) array_view(gx, n) += array_view(g.output(0), n);
  });
}

// The parts side by side along `axis`: every part has the same rank and the
// same dimensions except along `axis`, where the result has the sum of
// theirs. A part may appear several times.
template <class T>
Var<T> concat(const std::vector<Var<T>>& parts, int axis = -1) {
  const char* name = "momnet::concat";
  if (parts.empty()) throw std::invalid_argument(std::string(name) + ": nothing to concatenate");
  Tape<T>& tape = detail::common_tape(name, parts.front());
  const Shape first = parts.front().shape();
  const AxisSplit s = first.split(axis, name);
  const int a = first.axis_index(axis, name);
  const std::size_t count = parts.size();
  std::vector<Eigen::Index> part_lengths(count);
  Eigen::Index total = 0;
  for (std::size_t k = 0; k < count; ++k) {
    detail::common_tape(name, parts.front(), parts[k]);
    const Shape shape = parts[k].shape();
    if (shape.rank() != first.rank()) detail::throw_shapes(name, first, shape, "ranks differ");
    for (int d = 0; d < first.rank(); ++d) {
      if (d != a && shape.dim(d) != first.dim(d)) {
        detail::throw_shapes(name, first, shape, "dimensions other than axis " + std::to_string(axis) + " differ");
      }
    }
    part_lengths[k] = shape.dim(a);
    if (part_lengths[k] > Shape::max_size - total) {
      throw std::length_error(std::string(name) + ": the result along axis " + std::to_string(axis) +
                              " would have more than " + std::to_string(Shape::max_size) + " elements");
    }
    total += part_lengths[k];
  }
  // Each part's length along the axis, kept on the tape for the reverse rule.
  Eigen::Index* lengths = tape.template allocate_as<Eigen::Index>(static_cast<Eigen::Index>(count));
  std::copy(part_lengths.begin(), part_lengths.end(), lengths);
  const Shape out_shape = first.with_dim(a, total);
  T* out = tape.allocate(out_shape.size());
  Eigen::Index offset = 0;
  for (std::size_t k = 0; k < count; ++k) {
    kernels::copy_along_axis(parts[k].data(), lengths[k], 0, out, total, offset, lengths[k], s.outer, s.inner);
    offset += lengths[k];
  }
  const Eigen::Index outer = s.outer, inner = s.inner;
  return tape.record_op(parts, out_shape, out, [=](Gradients<T>& g) {
    Eigen::Index begin = 0;
    for (std::size_t k = 0; k < count; ++k) {
      if (T* gp = g.input(k)) {
        kernels::add_along_axis(g.output(0), total, begin, gp, lengths[k], 0, lengths[k], outer, inner);
      }
      begin += lengths[k];
    }
  });
}

template <class T>
Var<T> concat(const Var<T>& a, const Var<T>& b, int axis = -1) {
  return concat(std::vector<Var<T>>{a, b}, axis);
}

// concat({a, b, c}, axis): a braced list deduces no std::vector.
template <class T>
Var<T> concat(std::initializer_list<Var<T>> parts, int axis = -1) {
  return concat(std::vector<Var<T>>(parts), axis);
}

// Positions [begin, begin + count) of x along `axis` (the last by default);
// the result has length `count` along it.
template <class T>
Var<T> slice(const Var<T>& x, Eigen::Index begin, Eigen::Index count, int axis = -1) {
  const char* name = "momnet::slice";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  const AxisSplit s = shape.split(axis, name);
  const Eigen::Index length = s.axis;
  // begin > length - count: begin + count could overflow.
  if (begin < 0 || count < 0 || begin > length - count) {
    constexpr Eigen::Index lowest = std::numeric_limits<Eigen::Index>::lowest();
    constexpr Eigen::Index highest = std::numeric_limits<Eigen::Index>::max();
    const bool wraps = count >= 0 ? begin > highest - count : begin < lowest - count;
    const std::string end = wraps ? std::to_string(begin) + " + " + std::to_string(count)
                                  : std::to_string(begin + count);
    throw std::invalid_argument(std::string(name) + ": [" + std::to_string(begin) + ", " + end + ") along axis " +
                                std::to_string(axis) + " is outside " + shape.to_string() + " (length " +
                                std::to_string(length) + ")");
  }
  const Shape out_shape = shape.with_dim(axis, count);
  T* out = tape.allocate(out_shape.size());
  kernels::copy_along_axis(x.data(), length, begin, out, count, 0, count, s.outer, s.inner);
  return tape.record_op({x}, out_shape, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::add_along_axis(g.output(0), count, 0, gx, length, begin, count, s.outer, s.inner);
  });
}

namespace detail {

// x with its axes in the order `perm` (validated, in [0, rank)).
template <class T>
Var<T> permuted(Tape<T>& tape, const Var<T>& x, const std::array<int, Shape::max_rank>& perm) {
  const Shape shape = x.shape();
  std::vector<Eigen::Index> dims(static_cast<std::size_t>(shape.rank()));
  for (int k = 0; k < shape.rank(); ++k) dims[static_cast<std::size_t>(k)] = shape.dim(perm[static_cast<std::size_t>(k)]);
  const Shape out_shape(dims);
  const kernels::PermutedWalk walk = kernels::permuted_walk(shape, perm.data());
  T* out = tape.allocate(out_shape.size());
  kernels::permute(x.data(), out, walk);
  return tape.record_op({x}, out_shape, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::permute_backward(g.output(0), gx, walk);
  });
}

}  // namespace detail

// x with its axes reordered: axis k of the result is axis dims[k] of x
// (negative entries count from the end). dims must name every axis once.
template <class T>
Var<T> permute(const Var<T>& x, const std::vector<int>& dims) {
  const char* name = "momnet::permute";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  if (static_cast<int>(dims.size()) != shape.rank()) {
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(dims.size()) + " axes for shape " +
                                shape.to_string() + " of rank " + std::to_string(shape.rank()));
  }
  std::array<int, Shape::max_rank> perm{};
  std::array<bool, Shape::max_rank> seen{};
  for (std::size_t k = 0; k < dims.size(); ++k) {
    const int a = shape.axis_index(dims[k], name);
    if (seen[static_cast<std::size_t>(a)]) {
      std::string list;
      for (std::size_t j = 0; j < dims.size(); ++j) list += (j ? ", " : "") + std::to_string(dims[j]);
      throw std::invalid_argument(std::string(name) + ": the permutation [" + list + "] names axis " +
                                  std::to_string(a) + " twice (shape " + shape.to_string() + ")");
    }
    seen[static_cast<std::size_t>(a)] = true;
    perm[k] = a;
  }
  return detail::permuted(tape, x, perm);
}

// x with axes a and b swapped.
template <class T>
Var<T> transpose(const Var<T>& x, int a, int b) {
  const char* name = "momnet::transpose";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  const int ia = shape.axis_index(a, name);
  const int ib = shape.axis_index(b, name);
  std::array<int, Shape::max_rank> perm{};
  for (int k = 0; k < shape.rank(); ++k) perm[static_cast<std::size_t>(k)] = k;
  std::swap(perm[static_cast<std::size_t>(ia)], perm[static_cast<std::size_t>(ib)]);
  return detail::permuted(tape, x, perm);
}

}  // namespace momnet
